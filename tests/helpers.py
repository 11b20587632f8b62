"""Plain helpers for the tests (imported as `helpers`; tests/ is on sys.path through the root conftest)."""
from __future__ import annotations

import shutil
from pathlib import Path

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
