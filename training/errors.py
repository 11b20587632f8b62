"""Errors a user can act on; `python -m training` prints their message in one line, never a traceback."""
from __future__ import annotations


class DataError(ValueError):
    """The dataset cannot be used as given; the message says what to fix."""
