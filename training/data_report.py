"""The data report, written before training (report/data.json + data.md, and the log): layout, images per class and
split, image sizes, skipped files and why, classes left out, and the same image in two splits.

A copy of a test image in the training split inflates the reported accuracy; exact copies are found by content
hash, near-copies (re-encoded, resized) by a 64-bit perceptual hash within data.near_duplicate_bits bits.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from contract.files import write_atomic

from .data import ImageSet, Splits
from .errors import DataError
from .log import event

PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))
MAX_LISTED = 200  # pairs written out; the counts are always complete


def _near_pairs(a: ImageSet, b: ImageSet, bits: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for pHash Hamming distance <= bits, in chunks so memory stays bounded."""
    ha = np.array([i.phash for i in a.infos], dtype=np.uint64)
    hb = np.array([i.phash for i in b.infos], dtype=np.uint64)
    out = []
    step = max(1, 4_000_000 // max(1, len(hb)))
    for start in range(0, len(ha), step):
        dist = np.bitwise_count(ha[start:start + step, None] ^ hb[None, :])
        for i, j in zip(*np.nonzero(dist <= bits)):
            out.append((start + int(i), int(j), int(dist[i, j])))
    return out


def find_duplicates(splits: Splits, bits: int) -> list[dict]:
    """Images that appear in two splits: exact (same bytes) or near (pHash within `bits`)."""
    parts = splits.parts()
    found = []
    for na, nb in PAIRS:
        a, b = parts[na], parts[nb]
        by_sha = {}
        for j, info in enumerate(b.infos):
            by_sha.setdefault(info.sha256, []).append(j)
        exact = {(i, j) for i, info in enumerate(a.infos) for j in by_sha.get(info.sha256, [])}
        near = {(i, j): d for i, j, d in _near_pairs(a, b, bits) if (i, j) not in exact}
        for (i, j), kind, d in [((i, j), "exact", 0) for i, j in sorted(exact)] + \
                               [(k, "near", d) for k, d in sorted(near.items())]:
            found.append({"splits": f"{na}-{nb}", "kind": kind, "bits": d, na + "_file": a.name(i),
                          nb + "_file": b.name(j), "labels": [a.classes[a.labels[i]], b.classes[b.labels[j]]],
                          "_index": (na, i)})
    return found


def drop_train_copies(splits: Splits, duplicates: list[dict]) -> tuple[Splits, int]:
    """data.duplicates=drop_from_train: training images that also appear in val or test are removed."""
    leaked = {d["_index"][1] for d in duplicates if d["_index"][0] == "train"}
    if not leaked:
        return splits, 0
    train = splits.train.subset(i for i in range(len(splits.train)) if i not in leaked)
    empty = [c for c, n in zip(train.classes, train.counts()) if n == 0]
    if empty:
        raise DataError(f"data.duplicates=drop_from_train would leave class(es) {empty} with no training images: "
                        "every training image of theirs also appears in val or test")
    return replace(splits, train=train), len(leaked)


def _size_stats(part: ImageSet) -> dict:
    w = np.array([i.width for i in part.infos])
    h = np.array([i.height for i in part.infos])
    if not len(w):
        return {}
    return {"width": [int(w.min()), int(np.median(w)), int(w.max())],
            "height": [int(h.min()), int(np.median(h)), int(h.max())], "under_image_size": None}


def build(splits: Splits, duplicates: list[dict], dropped_copies: int, policy: str, image_size: int) -> dict:
    sizes = {}
    for name, part in splits.parts().items():
        sizes[name] = _size_stats(part)
        if sizes[name]:  # upsampled images carry less detail than the model's input: worth knowing
            sizes[name]["under_image_size"] = sum(min(i.width, i.height) < image_size for i in part.infos)
    return {
        "layout": splits.layout, "classes": splits.classes, "data_digest": splits.data_digest(),
        "counts": {n: dict(zip(p.classes, p.counts())) for n, p in splits.parts().items()},
        "image_sizes": sizes, "skipped": [{"path": p, "reason": r} for p, r in splits.skipped],
        "dropped_classes": splits.dropped_classes,
        "duplicates": {"policy": policy, "exact": sum(d["kind"] == "exact" for d in duplicates),
                       "near": sum(d["kind"] == "near" for d in duplicates), "dropped_from_train": dropped_copies,
                       "by_splits": dict(Counter(d["splits"] for d in duplicates)),
                       "pairs": [{k: v for k, v in d.items() if k != "_index"} for d in duplicates[:MAX_LISTED]]},
    }


def markdown(report: dict) -> str:
    classes = report["classes"]
    lines = [f"# Data report\n\nlayout: {report['layout']}  \ndata digest: `{report['data_digest']}`\n",
             "| class | " + " | ".join(report["counts"]) + " |", "|---|" + "---:|" * len(report["counts"])]
    lines += [f"| {c} | " + " | ".join(str(report["counts"][s][c]) for s in report["counts"]) + " |" for c in classes]
    lines.append("\n| split | width min/median/max | height min/median/max | shorter side < image_size |\n"
                 "|---|---|---|---:|")
    lines += [f"| {s} | {v['width']} | {v['height']} | {v['under_image_size']} |"
              for s, v in report["image_sizes"].items() if v]
    dup = report["duplicates"]
    lines.append(f"\n## Same image in two splits\n\n{dup['exact']} exact, {dup['near']} near copies "
                 f"(policy {dup['policy']}; removed from train: {dup['dropped_from_train']})\n")
    lines += [f"- {d['splits']} {d['kind']} ({d['bits']} bits): " + " = ".join(
        v for k, v in d.items() if k.endswith("_file")) + f" labels {d['labels']}" for d in dup["pairs"][:50]]
    if report["dropped_classes"]:
        lines.append("\n## Classes left out (data.small_classes=drop)\n")
        lines += [f"- {c}: {why}" for c, why in report["dropped_classes"].items()]
    lines.append(f"\n## Skipped files ({len(report['skipped'])})\n")
    lines += [f"- {s['path']}: {s['reason']}" for s in report["skipped"][:200]]
    return "\n".join(lines) + "\n"


def write(report: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "data.json", json.dumps(report, indent=2))
    write_atomic(folder / "data.md", markdown(report))


def log(report: dict) -> None:
    event("data", layout=report["layout"], classes=report["classes"],
          **{n: sum(c.values()) for n, c in report["counts"].items()},
          train_counts=list(report["counts"]["train"].values()), skipped=len(report["skipped"]))
    if report["skipped"]:
        event(f"skipped {len(report['skipped'])} unreadable image(s)",
              files=[s["path"] for s in report["skipped"]][:20])
    for c, why in report["dropped_classes"].items():
        event(f"warning: class '{c}' left out of the model (data.small_classes=drop): {why}")
    dup = report["duplicates"]
    if dup["exact"] or dup["near"]:
        event(f"warning: {dup['exact']} exact and {dup['near']} near copies of the same image in two splits; "
              + ("removed from train" if dup["dropped_from_train"] else
                 "copies in train and test inflate the test accuracy (data.duplicates=drop_from_train removes them)"),
              pairs=dup["by_splits"],
              first=[{k: v for k, v in d.items() if k.endswith("_file")} for d in dup["pairs"][:3]])


def prepare(splits: Splits, duplicates_policy: str, near_bits: int, image_size: int) -> tuple[Splits, dict]:
    """Find copies across splits and apply data.duplicates; returns the splits to train on and their report."""
    duplicates = find_duplicates(splits, near_bits)
    dropped = 0
    if duplicates_policy == "drop_from_train":
        splits, dropped = drop_train_copies(splits, duplicates)
    return splits, build(splits, duplicates, dropped, duplicates_policy, image_size)
