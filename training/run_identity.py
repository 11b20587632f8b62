"""What a run directory is trained from: `<output_dir>/run.json` holds the classes, a digest of the data's content
and split, and the config that shapes the weights. A run whose data or config differs never resumes from that
directory's checkpoints: it stops at once with the differences and the two ways on.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from contract.files import write_atomic

from .config import TrainConfig

if TYPE_CHECKING:  # kept out of the CLI's start-up (the data stack is heavy)
    from .data import Splits

IDENTITY_FILE = "run.json"
# Settings that change where outputs go or how fast a run goes, not what it learns; a resume may change them.
# data.path is here because the data is identified by its content (the digest), wherever it is mounted; so are the
# intake's limits: which files they let in, the digest already says.
OPERATIONAL = ("name", "output_dir", "artifacts_dir", "threads", "data.path", "data.cache_dir", "data.num_workers",
               "data.eval_batch_size", "data.max_file_bytes", "data.max_image_pixels", "data.allow_outside_paths",
               "export", "evaluate", "tune")
RUN_OUTPUTS = ("checkpoints", "final", "report", "samples", "skipped_images.json", "tune", IDENTITY_FILE)


class RunMismatch(ValueError):
    """The output directory holds a run of other data or config."""


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def _learning_config(cfg: TrainConfig) -> dict:
    flat = _flatten(cfg.model_dump(mode="json"))
    return {k: v for k, v in flat.items() if not any(k == o or k.startswith(o + ".") for o in OPERATIONAL)}


def identity(cfg: TrainConfig, splits: Splits) -> dict:
    return {"classes": splits.classes, "data_digest": splits.data_digest(), "layout": splits.layout,
            "data_path": str(cfg.data.path), "counts": {n: len(p) for n, p in splits.parts().items()},
            "config": _learning_config(cfg)}


def differences(recorded: dict, current: dict) -> list[str]:
    diffs = []
    if recorded["classes"] != current["classes"]:
        diffs.append(f"classes {recorded['classes']} -> {current['classes']}")
    if recorded["data_digest"] != current["data_digest"]:
        diffs.append(f"data {recorded['data_path']} ({recorded['counts']}) -> {current['data_path']} "
                     f"({current['counts']}): other images, labels or split (digest {recorded['data_digest'][:12]} -> "
                     f"{current['data_digest'][:12]})")
    old, new = recorded["config"], current["config"]
    defaults = _learning_config(TrainConfig())
    for k in sorted(set(old) | set(new)):
        if k not in old and new.get(k) == defaults.get(k):
            continue  # a setting added since the run was recorded, at its default: what the run did all along
        if old.get(k) != new.get(k):
            diffs.append(f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}")
    return diffs


def clear(out: Path) -> list[str]:
    """--restart: remove what a run wrote in its directory (nothing else there is touched)."""
    removed = []
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def claim(out: Path, current: dict, restart: bool) -> str:
    """Make `out` this run's directory; returns 'new', 'same' or 'restarted'. Raises RunMismatch otherwise."""
    path = out / IDENTITY_FILE
    if restart:
        clear(out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(current, indent=2))
        return "restarted"
    if path.is_file():
        diffs = differences(json.loads(path.read_text()), current)
        if diffs:
            raise RunMismatch(
                f"{out} holds a run trained from other data or config, so it will not resume from it:\n  - "
                + "\n  - ".join(diffs) + "\nEither start over in that directory (--restart: deletes its checkpoints, "
                "final/ and report/), or train into another one (--set output_dir=runs/<new> and name=<new>).")
        return "same"
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise RunMismatch(f"{out}/checkpoints exists but {path} does not (a run from an older version, or a copied "
                          "directory): what those checkpoints were trained from is unknown, so they are not resumed. "
                          "--restart starts over there, or set another output_dir.")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(current, indent=2))
    return "new"
