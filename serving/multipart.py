"""Multipart parsing of BentoML 1.4.39 (pinned in pyproject), hardened where fuzzing found it wanting.

- A text value in a file field: BentoML treats it as a URL and downloads it, a request from the server to wherever
  the client says. Here file fields take uploaded files only: 400.
- A malformed multipart body: starlette raises HTTPException(400), which BentoML's endpoint wrapper turns into a
  500. Here it is a 400 with the parser's message.
"""
from __future__ import annotations

from _bentoml_impl.serde import MultipartSerde
from bentoml.exceptions import BadInput
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

_parse_request = MultipartSerde.parse_request


async def _uploads_only(value):
    if isinstance(value, UploadFile):
        return value
    raise BadInput("image fields must be file uploads (multipart parts with a filename), not text or URLs; "
                   "for base64 use /predict_base64")


async def _parse_or_400(self, request, cls):
    try:
        return await _parse_request(self, request, cls)
    except HTTPException as exc:
        raise BadInput(f"malformed multipart/form-data body: {exc.detail}") from None


def harden() -> None:
    MultipartSerde.ensure_file = staticmethod(_uploads_only)
    MultipartSerde.parse_request = _parse_or_400
