"""serving.multipart.Upload: the predict endpoints' file fields keep the upload where starlette put it (no copy into a
temporary file per request), and BentoML still treats them as file parts."""
from __future__ import annotations

import io

import pytest
from _bentoml_sdk.io_models import IODescriptor
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from serving.multipart import Upload


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
