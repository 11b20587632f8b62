"""Plain helpers for the tests (imported as `helpers`; tests/ is on sys.path through the root conftest)."""
from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from serving.launch import Server

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared").resolve()
DATA = SHARED / "data" / "hymenoptera_data"


def copy_images(src: Path, dst: Path, n: int) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(src.iterdir())[:n]:
        shutil.copy(p, dst / p.name)
        out.append(dst / p.name)
    return out


@contextlib.contextmanager
def running_server(env: dict, log: Path) -> Iterator[Server]:
    """The real service (serving.launch.Server) with these SERVING_* settings, ready, stopped afterwards; a server that
    never becomes ready fails the caller with the end of its log."""
    srv = Server(env, log)
    try:
        assert srv.wait_ready(), log.read_text()[-3000:]
        yield srv
    finally:
        srv.stop()
