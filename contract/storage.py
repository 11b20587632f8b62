"""Where a batch job reads and writes: a local folder, or an object store by fsspec URL (s3://bucket/prefix with
the s3fs extra, gs:// with gcsfs; credentials the store's own way: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_ENDPOINT_URL, a pod's role).

A file is written whole or not at all either way: locally to a temporary name beside it and renamed into place; to
an object store as one PUT, which makes the object appear whole. The store's failures (no such bucket, wrong
credentials, a store that cannot be reached) become one StorageError that names the URL and what to check.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from contract.files import replaced, write_atomic

EXTRAS = {"s3": "s3fs (pip install imgcls[s3])", "gs": "gcsfs (pip install imgcls[gcs])",
          "gcs": "gcsfs (pip install imgcls[gcs])"}


class StorageError(ValueError):
    """The store cannot be read or written as asked; the message says why and what to check. permanent: asking
    again cannot help (no such bucket, access denied); else it may (the store did not answer)."""

    def __init__(self, message: str, permanent: bool = True):
        super().__init__(message)
        self.permanent = permanent


def _explain(url: str, exc: BaseException) -> StorageError:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, PermissionError) or any(w in text for w in ("InvalidAccessKeyId", "SignatureDoesNotMatch",
                                                                    "AccessDenied", "Forbidden")):
        return StorageError(f"{url}: access denied ({text}); check the credentials (AWS_ACCESS_KEY_ID, "
                            "AWS_SECRET_ACCESS_KEY, or the pod's role) and that they may read/write there")
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text:
        return StorageError(f"{url}: no such bucket or path ({text})")
    return StorageError(f"{url}: the store failed ({text}); check the URL and AWS_ENDPOINT_URL / the network",
                        permanent=False)


@contextlib.contextmanager
def translated(url: str) -> Iterator[None]:
    """The store's own exceptions (botocore's, aiohttp's, OSError) as one StorageError naming the URL."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # every store raises its own types; all are reported the same way
        raise _explain(url, exc) from None


@dataclass(frozen=True)
class Place:
    """A folder or a prefix: `fs` and the path inside it."""
    url: str
    fs: fsspec.AbstractFileSystem
    root: str

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        with translated(self.url):
            return self.fs.exists(self.path(name))

    def read_text(self, name: str) -> str:
        with translated(self.url):
            return self.fs.cat_file(self.path(name)).decode()

    def write_text(self, name: str, text: str) -> None:
        if self.local:
            write_atomic(Path(self.path(name)), text)
            return
        with translated(self.url):
            self.fs.pipe_file(self.path(name), text.encode())

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[str]:
        """A local file name to write `name` into; on leaving, it becomes `name` whole (rename, or one PUT)."""
        if self.local:
            with replaced(Path(self.path(name))) as tmp:
                yield str(tmp)
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, name)
            yield local
            with translated(self.url):
                self.fs.put_file(local, self.path(name))

    def open(self, name: str):
        with translated(self.url):
            return self.fs.open(self.path(name), "rb")


def is_url(location: str | Path) -> bool:
    """An object-store URL (s3://..., gs://...), as text; a Path never is one."""
    return isinstance(location, str) and "://" in location


def place(url: str, create: bool = False) -> Place:
    """The folder or prefix a URL or path names; create: make a local folder (a prefix needs no making)."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except ImportError:
        raise StorageError(f"{url}: reading {protocol}:// needs {EXTRAS.get(protocol, 'its fsspec package')}") \
            from None
    except ValueError as exc:
        raise StorageError(f"{url}: {exc}") from None
    found = Place(url, fs, root)
    if create and found.local:
        os.makedirs(root, exist_ok=True)
    return found
