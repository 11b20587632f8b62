"""Multipart parsing of BentoML 1.4.39 (pinned in pyproject), hardened where fuzzing found it wanting.

- A text value in a file field: BentoML treats it as a URL and downloads it, a request from the server to wherever
  the client says. Here file fields take uploaded files only: 400.
- A malformed multipart body: starlette raises HTTPException(400), which BentoML's endpoint wrapper turns into a
  500. Here it is a 400 with the parser's message.
- A field the endpoint does not have (an image sent as `file`): BentoML reads its value as JSON, and bytes that are
  not UTF-8, or a number of more than 4,300 digits (Python's int limit), raise errors it answers with 500. Here an
  unknown field is a 400 naming the endpoint's fields, and a value JSON cannot read is a 400.

And `Upload`, the type of the predict endpoints' file fields, keeps each upload where starlette's parser left it.
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, BinaryIO

from _bentoml_impl.serde import MultipartSerde
from bentoml.exceptions import BadInput
from pydantic import ValidationError
from pydantic_core import PydanticCustomError, core_schema
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser


class Upload(PurePosixPath):
    """A multipart file upload, read where it lies: in memory, or past `upload_memory_bytes` in starlette's spool file.

    BentoML's `Path` fields copy every upload into a temporary file of their own on the event loop and delete it
    after the answer (mkstemp, write, unlink, rmdir: 9 % of the HTTP-facing process's CPU under load in
    bench/profile_serve.py). A PurePath subclass, named after the client's filename, so that BentoML still parses
    the field as a file part and documents it as binary in its OpenAPI spec."""

    file: BinaryIO

    def read_bytes(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(cls._validate)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        # what BentoML's own file fields say (validation mode): its client and OpenAPI spec send these as parts
        return {"type": "file", "format": "binary"} if handler.mode == "validation" else {"type": "string",
                                                                                          "format": "binary"}

    @classmethod
    def _validate(cls, value: Any) -> Upload:
        if isinstance(value, Upload):
            return value
        if isinstance(value, UploadFile):
            upload = cls(value.filename or "upload")
            upload.file = value.file
            return upload
        raise PydanticCustomError("upload_type", "expected a file upload (a multipart part with a filename)")

_parse_request = MultipartSerde.parse_request


async def _uploads_only(value):
    if isinstance(value, UploadFile):
        return value
    raise BadInput("image fields must be file uploads (multipart parts with a filename), not text or URLs; "
                   "for base64 use /predict_base64")


async def _parse_or_400(self, request, cls):
    try:
        form = await request.form()  # starlette keeps the parsed form on the request: BentoML's parse reuses it
        unknown = sorted(set(form) - set(cls.model_fields))
        if unknown:
            raise BadInput(f"unknown form field(s) {unknown}; this endpoint takes {sorted(cls.model_fields)}")
        return await _parse_request(self, request, cls)
    except HTTPException as exc:
        raise BadInput(f"malformed multipart/form-data body: {exc.detail}") from None
    except ValidationError:
        raise  # BentoML answers it with 400 and the field errors
    except ValueError as exc:  # json.loads of a field's value: not UTF-8, or an integer past Python's digit limit
        raise BadInput(f"a form field's value cannot be read: {str(exc)[:200]}") from None


def keep_uploads_in_memory(limit: int) -> None:
    """Uploads of up to `limit` bytes stay in memory. Past starlette's 1 MB default its spool file rolls over to
    disk, and every further chunk of the body (64 KB) is written there through a thread hop from the event loop
    (the event loops' cost per 12 MP photo: 6.0 core-ms with it, 5.5 without; bench/serve_cpu.py --photo-sizes).
    0: no limit. Memory stays bounded: a body past max_request_bytes is refused (413) without being read further."""
    MultiPartParser.spool_max_size = limit


def harden() -> None:
    MultipartSerde.ensure_file = staticmethod(_uploads_only)
    MultipartSerde.parse_request = _parse_or_400
