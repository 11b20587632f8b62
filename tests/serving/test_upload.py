"""serving.multipart.Upload: the predict endpoints' file fields keep the upload where starlette put it (no copy into a
temporary file per request), BentoML still treats them as file parts, and phone photos stay in memory."""
from __future__ import annotations

import asyncio
import io

import pytest
from _bentoml_sdk.io_models import IODescriptor
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from serving.multipart import Upload, keep_uploads_in_memory


class Form(IODescriptor):
    image: Upload
    images: list[Upload] = []


def test_an_upload_is_read_from_the_parsers_own_file_not_copied(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where a copy would be written
    spool = io.BytesIO(b"\xff\xd8 jpeg bytes")
    form = Form.model_validate({"image": UploadFile(spool, filename="photo.jpg"),
                                "images": [UploadFile(io.BytesIO(b"a")), UploadFile(io.BytesIO(b"b"))]})
    assert form.image.file is spool and form.image.name == "photo.jpg"
    spool.read()  # the position left at the end (by the parser, or an earlier read): still the whole upload
    assert form.image.read_bytes() == b"\xff\xd8 jpeg bytes"
    assert [u.read_bytes() for u in form.images] == [b"a", b"b"]
    assert list(tmp_path.iterdir()) == []


def test_bentoml_parses_and_documents_it_as_a_file_part():
    assert Form.multipart_fields == ["image", "images"]  # BentoML's multipart parser hands these UploadFiles
    schema = Form.model_json_schema()["properties"]["image"]
    assert schema["type"] == "file" and schema["format"] == "binary"
    with pytest.raises(ValidationError, match="expected a file upload"):
        Form.model_validate({"image": "https://example.com/a.jpg"})


async def parsed_upload(body: bytes, boundary: str) -> UploadFile:
    """starlette's own multipart parser over a body that arrives in 64 KB chunks, as uvicorn hands it over."""
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]

    async def receive():
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": b"",
             "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]}
    return (await Request(scope, receive).form())["image"]


@pytest.mark.parametrize("limit, on_disk", [(16 << 20, False), (1 << 20, True)])
def test_a_phone_photo_upload_stays_in_memory_up_to_the_limit(limit, on_disk, monkeypatch):
    monkeypatch.setattr(MultiPartParser, "spool_max_size", MultiPartParser.spool_max_size)  # restored afterwards
    keep_uploads_in_memory(limit)
    photo = bytes(range(256)) * (12 << 12)  # 3 MB, the size of a 12 MP phone JPEG
    body = (b"--b0undary\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--b0undary--\r\n")
    upload = asyncio.run(parsed_upload(body, "b0undary"))
    assert upload.file._rolled is on_disk  # SpooledTemporaryFile's own flag: rolled over to disk
    assert Upload._validate(upload).read_bytes() == photo
