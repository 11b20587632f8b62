"""The data report, written before training (report/data.json + data.md, and the log): layout, images per class and
split, image sizes, skipped files and why, classes left out, and the same image in two splits.

A copy of a test image in the training split inflates the reported accuracy; exact copies are found by content
hash, near-copies (re-encoded, resized) by a 64-bit perceptual hash within data.near_duplicate_bits bits, confirmed
by a stricter pixel measure (training.copies). The accuracy the job reports, gates and publishes is measured on the
test images without a copy in train (training.job), the figure on all of them beside it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from contract.files import write_atomic

from . import copies
from .data import ImageSet, Splits, indices_by_content, phashes
from .errors import DataError
from .log import event

PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))
MAX_LISTED = 200  # groups written out; the counts are always complete
MAX_NAMES = 10  # file names listed per split in a group; its counts are complete


@dataclass
class Copies:
    """The same image in two splits, as groups rather than pairs: 2 images repeated as 4,000 manifest rows are 2
    groups, where pairs were 2 million (1.5 GB). `leaked_train`: training images with a copy in val or test."""
    groups: list[dict] = field(default_factory=list)
    by_splits: dict[str, dict] = field(default_factory=dict)
    leaked_train: set[int] = field(default_factory=set)
    test_copy_of: dict[int, set[int]] = field(default_factory=dict)  # test image -> its copies in train


def _group(na: str, nb: str, a: ImageSet, b: ImageSet, kind: str, bits: int, ia: list[int], jb: list[int]) -> dict:
    return {"splits": f"{na}-{nb}", "kind": kind, "bits": bits,
            f"{na}_count": len(ia), f"{na}_files": [a.name(i) for i in ia[:MAX_NAMES]],
            f"{nb}_count": len(jb), f"{nb}_files": [b.name(j) for j in jb[:MAX_NAMES]],
            "labels": sorted({a.classes[a.labels[i]] for i in ia} | {b.classes[b.labels[j]] for j in jb})}


def _exact_groups(a: ImageSet, b: ImageSet) -> dict[str, tuple[list[int], list[int]]]:
    in_b = indices_by_content(b)
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for i, info in enumerate(a.infos):
        if info.sha256 in in_b:
            groups.setdefault(info.sha256, ([], in_b[info.sha256]))[0].append(i)
    return groups


def _near(a: ImageSet, b: ImageSet, bits: int, skip_a: set[int], skip_b: set[int]):
    """Confirmed near copies between two splits (training.copies): each image of `a` (not in skip_a) grouped under
    its nearest confirmed copy in `b` (j -> [(i, bits)]), each image of `b` (not in skip_b) with its nearest confirmed
    copy in `a` (j -> i), and how many pHash candidates the second measure rejected."""
    ha, hb = phashes(a), phashes(b)
    thumbs_a, thumbs_b = copies.thumbnails(a.source), copies.thumbnails(b.source)
    forward, back = copies.Confirmer(thumbs_a, thumbs_b), copies.Confirmer(thumbs_b, thumbs_a)
    groups: dict[int, list] = {}
    for i, j, d in forward.confirm_all([c for c in copies.close_pairs(ha, hb, bits, False) if c[0] not in skip_a]):
        groups.setdefault(j, []).append((i, d))
    b_copy = {j: i for j, i, _ in back.confirm_all([c for c in copies.close_pairs(hb, ha, bits, False)
                                                     if c[0] not in skip_b])}
    return groups, b_copy, forward.rejected + back.rejected


def find_duplicates(splits: Splits, bits: int) -> Copies:
    """Images that appear in two splits: exact (same bytes) or near (pHash within `bits`, confirmed), in groups."""
    parts, found = splits.parts(), Copies()
    for na, nb in PAIRS:
        a, b = parts[na], parts[nb]
        exact = _exact_groups(a, b)
        exact_a = {i for ia, _ in exact.values() for i in ia}
        exact_b = {j for _, jb in exact.values() for j in jb}
        near, b_near, rejected = _near(a, b, bits, exact_a, exact_b)
        near_a = {i for members in near.values() for i, _ in members}
        found.groups += [_group(na, nb, a, b, "exact", 0, ia, jb) for ia, jb in exact.values()]
        found.groups += [_group(na, nb, a, b, "near", max(d for _, d in members), [i for i, _ in members], [j])
                         for j, members in sorted(near.items())]
        found.by_splits[f"{na}-{nb}"] = {"exact_groups": len(exact), "near_groups": len(near),
                                         f"{na}_images": len(exact_a | near_a),
                                         f"{nb}_images": len(exact_b | set(b_near)), "near_rejected": rejected}
        if na == "train":
            found.leaked_train |= exact_a | near_a
        if (na, nb) == ("train", "test"):
            ia_of = {j: ia for ia, jb in exact.values() for j in jb}
            found.test_copy_of = {j: set(ia) for j, ia in ia_of.items()} | {j: {i} for j, i in b_near.items()}
    return found


def drop_train_copies(splits: Splits, found: Copies) -> tuple[Splits, int]:
    """data.duplicates=drop_from_train: training images that also appear in val or test are removed."""
    leaked = found.leaked_train
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


def build(splits: Splits, found: Copies, dropped_copies: int, policy: str, image_size: int) -> dict:
    sizes = {}
    for name, part in splits.parts().items():
        sizes[name] = _size_stats(part)
        if sizes[name]:  # upsampled images carry less detail than the model's input: worth knowing
            sizes[name]["under_image_size"] = sum(min(i.width, i.height) < image_size for i in part.infos)
    return {
        "layout": splits.layout, "notes": splits.notes, "classes": splits.classes, "data_digest": splits.data_digest(),
        "counts": {n: dict(zip(p.classes, p.counts())) for n, p in splits.parts().items()},
        "image_sizes": sizes, "skipped": [{"path": p, "reason": r} for p, r in splits.skipped],
        "dropped_classes": splits.dropped_classes,
        "duplicates": {"policy": policy, "exact": sum(g["kind"] == "exact" for g in found.groups),
                       "near": sum(g["kind"] == "near" for g in found.groups), "dropped_from_train": dropped_copies,
                       "test_with_copy_in_train": len(splits.test_copies),
                       "by_splits": found.by_splits, "groups": found.groups[:MAX_LISTED]},
    }


def markdown(report: dict) -> str:
    classes = report["classes"]
    lines = [f"# Data report\n\nlayout: {report['layout']}  \ndata digest: `{report['data_digest']}`\n"]
    if report.get("notes"):
        lines += ["## How the dataset was read\n"] + [f"- {n}" for n in report["notes"]] + [""]
    lines += [
             "| class | " + " | ".join(report["counts"]) + " |", "|---|" + "---:|" * len(report["counts"])]
    lines += [f"| {c} | " + " | ".join(str(report["counts"][s][c]) for s in report["counts"]) + " |" for c in classes]
    lines.append("\n| split | width min/median/max | height min/median/max | shorter side < image_size |\n"
                 "|---|---|---|---:|")
    lines += [f"| {s} | {v['width']} | {v['height']} | {v['under_image_size']} |"
              for s, v in report["image_sizes"].items() if v]
    dup = report["duplicates"]
    lines.append(f"\n## Same image in two splits\n\n{dup['exact']} groups of exact, {dup['near']} of near copies "
                 f"(policy {dup['policy']}; removed from train: {dup['dropped_from_train']}; test images with a "
                 f"copy in train, left out of the reported accuracy: {dup.get('test_with_copy_in_train', 0)})\n")
    lines += [f"- {s}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) for s, counts in dup["by_splits"].items()]
    lines += [f"- {g['splits']} {g['kind']} ({g['bits']} bits): " + " = ".join(
        ", ".join(v) + (f" (+{g[k[:-6] + '_count'] - len(v)} more)" if g[k[:-6] + "_count"] > len(v) else "")
        for k, v in g.items() if k.endswith("_files")) + f" labels {g['labels']}" for g in dup["groups"][:50]]
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
    for note in report.get("notes", []):
        event(note if note.startswith("warning:") else f"note: {note}")
    if report["skipped"]:
        event(f"skipped {len(report['skipped'])} unreadable image(s)",
              files=[s["path"] for s in report["skipped"]][:20])
    for c, why in report["dropped_classes"].items():
        event(f"warning: class '{c}' left out of the model (data.small_classes=drop): {why}")
    dup = report["duplicates"]
    if dup["exact"] or dup["near"]:
        event(f"warning: {dup['exact']} groups of exact and {dup['near']} of near copies of the same image in two "
              "splits; "
              + ("removed from train" if dup["dropped_from_train"] else
                 f"the test accuracy is measured on the test images without a copy in train ("
                 f"{dup['test_with_copy_in_train']} left out of it; the figure on all is shown beside it); "
                 "data.duplicates=drop_from_train removes the training copies instead"),
              by_splits=dup["by_splits"],
              first=[{k: v[:3] for k, v in g.items() if k.endswith("_files")} for g in dup["groups"][:3]])


def _scored_test(splits: Splits, found: Copies, dropped: bool) -> Splits:
    """Mark the test images that still have a copy in train: the accuracy the job reports, gates and publishes
    leaves them out (issue 29). All of them leaking is an error: such a test split measures memory."""
    left = found.test_copy_of if not dropped else {
        j: ia for j, ia in found.test_copy_of.items() if ia - found.leaked_train}
    if left and len(left) == len(splits.test):
        raise DataError(f"every one of the {len(left)} test images has a copy in the training split: the test would "
                        "measure memory, not accuracy. Set data.duplicates=drop_from_train, or give a test split "
                        "of other pictures")
    return replace(splits, test_copies=sorted(left))


def prepare(splits: Splits, duplicates_policy: str, near_bits: int, image_size: int) -> tuple[Splits, dict]:
    """Find copies across splits and apply data.duplicates; returns the splits to train on and their report."""
    found = find_duplicates(splits, near_bits)
    dropped = 0
    if duplicates_policy == "drop_from_train":
        splits, dropped = drop_train_copies(splits, found)
    splits = _scored_test(splits, found, dropped > 0)
    return splits, build(splits, found, dropped, duplicates_policy, image_size)
