"""serving.bentoml_adapter, the one module that changes BentoML's internals: it refuses another BentoML, each
function it replaces is still the one it was written for, and each change does what it says.

- Upload: the predict endpoints' file fields keep the upload where starlette put it (no copy into a temporary file
  per request), BentoML still treats them as file parts, and phone photos stay in memory.
- Media types: the same answer as BentoML's, worked out once per type.
The multipart hardening is held by the fuzz tests (tests/serving/test_reliability.py, test_hostile.py) and the
middleware stack by test_service.py (tracing) and test_open_inference.py (route labels), on the real server.
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import io
import sys

import bentoml
import numpy as np
import pytest
from _bentoml_sdk.io_models import IODescriptor, IOMixin, IORootModel
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from serving import bentoml_adapter
from serving.bentoml_adapter import Upload, keep_uploads_in_memory
from serving.service import ImageClassifier

# sha256 of the source of each BentoML function the adapter replaces or wraps, as BentoML 1.4.39 has it: when one
# changes, read the new code, port the adapter's change, then update the digest
DIGESTS = {
    "MultipartSerde.parse_request": "65de1b4c289aac56e271dc5011c9c0627bdb7fa124b1ac8fd1b7003cf58163ed",
    "MultipartSerde.ensure_file": "962fb19eb99f95a5a3b02600f26662d64920c3f343f6feb1123dd894ffec93ef",
    "IOMixin.mime_type": "babaa4832e83deb79fd974310f8b7226677154d02fa0005fe83e3e5ace1b1044",
    "ServiceAppFactory.middlewares": "bce0377ff45b69beb184cb7c8817d7eca51873ed1e2394c732ae58da296c8d31",
    "RunnerTrafficMetricsMiddleware.__call__": "b7dc25ae0208d7b27864271735f917f20fe7712a3d76e9afefca4271f5b458d9",
}


@pytest.mark.parametrize("name", list(DIGESTS))
def test_the_replaced_bentoml_code_is_the_code_the_adapter_was_written_for(name):
    source = inspect.getsource(bentoml_adapter.ORIGINALS[name])
    assert hashlib.sha256(source.encode()).hexdigest() == DIGESTS[name], f"BentoML's {name} changed:\n{source}"


def test_another_bentoml_version_is_refused_with_one_line_naming_the_module(monkeypatch):
    monkeypatch.setattr(bentoml, "__version__", "1.4.40")
    monkeypatch.delitem(sys.modules, "serving.bentoml_adapter")
    with pytest.raises(ImportError, match=r"^serving/bentoml_adapter\.py changes BentoML 1\.4\.39's internals and "
                                          r"this is BentoML 1\.4\.40: install bentoml==1\.4\.39, or port that module$"):
        importlib.import_module("serving.bentoml_adapter")
    monkeypatch.setitem(sys.modules, "serving.bentoml_adapter", bentoml_adapter)


@pytest.mark.parametrize("api", list(ImageClassifier.apis))
def test_same_media_type_as_bentoml(api):
    spec = ImageClassifier.apis[api].output_spec
    assert spec.mime_type() == bentoml_adapter.ORIGINALS["IOMixin.mime_type"](spec) == "application/json"


def test_the_schema_is_built_once_per_type():
    built = []

    class Frames(IORootModel):
        root: np.ndarray

        @classmethod
        def model_json_schema(cls, *args, **kwargs):
            built.append(cls)
            return {"type": "array"}

    bentoml_adapter.install(16 << 20)
    assert hasattr(IOMixin.mime_type, "cache_info")
    assert [Frames.mime_type() for _ in range(5)] == ["application/json"] * 5
    assert built == [Frames]


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
