"""A batch job's output: Parquet parts written whole or not at all, and the summary of the archive they add up to.

Each part is written whole or not at all (contract.storage: a rename in a folder, one PUT to an object store), so
readers and a restarted job never see half of one. Its counts (images, unreadable files by reason, predicted
classes, predictions over the model's ATC thresholds) ride in the file's key-value metadata, so the summary of the
whole archive reads a few bytes per part, not the rows.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contract.storage import Place, translated

STATS_KEY = b"imgcls.part"
SCHEMA = pa.schema([
    ("path", pa.string()), ("sha256", pa.string()), ("label", pa.string()), ("confidence", pa.float32()),
    ("top_k_labels", pa.list_(pa.string())), ("top_k_probabilities", pa.list_(pa.float32())),
    ("model", pa.string()), ("version", pa.string()), ("error", pa.string()), ("error_message", pa.string()),
])


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def write_part(output: Place, name: str, rows: list[dict], stats: dict) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    table = table.replace_schema_metadata({STATS_KEY: json.dumps(stats).encode()})
    with output.writer(name) as local:
        pq.write_table(table, local, compression="zstd")


def part_stats(rows: list[dict], probs: np.ndarray, thresholds: dict[str, float], scores: dict) -> dict:
    """Counts of one part: what the summary adds up (probs: the scored images' probabilities, in row order)."""
    errors = Counter(r["error"] for r in rows if r["error"] is not None)
    predicted = Counter(r["label"] for r in rows if r["error"] is None)
    return {"images": len(rows), "scored": len(probs), "unreadable": dict(errors), "predicted": dict(predicted),
            "atc_confident": {k: int((scores[k] >= t).sum()) for k, t in thresholds.items()} if len(probs) else
            {k: 0 for k in thresholds}}


def read_stats(output: Place, name: str) -> dict:
    with output.open(name) as f, translated(output.url):
        return json.loads(pq.read_schema(f).metadata[STATS_KEY])


def summarize(output: Place, parts: int, job: dict) -> dict | None:
    """summary.json of the whole archive once every part exists (None before): whichever shard finishes last
    writes it, from the parts' metadata."""
    names = [part_name(k) for k in range(parts)]
    if not all(output.exists(n) for n in names):
        return None
    images = scored = 0
    unreadable, predicted, confident = Counter(), Counter(), Counter()
    for name in names:
        s = read_stats(output, name)
        images += s["images"]
        scored += s["scored"]
        unreadable.update(s["unreadable"])
        predicted.update(s["predicted"])
        confident.update(s["atc_confident"])
    summary = {
        "job": job, "parts": parts, "images": images, "scored": scored, "unreadable": sum(unreadable.values()),
        "unreadable_by_reason": dict(unreadable), "not_image_names": job.get("not_images", 0),
        "class_shares": {c: predicted[c] / scored for c in sorted(predicted)} if scored else {},
        # ATC (Garg et al. 2022): the share of predictions whose score reaches the threshold fitted on validation
        # estimates the accuracy on this archive, without labels (contract.monitoring)
        "estimated_accuracy": {f"atc_{k}": confident[k] / scored for k in job.get("thresholds", {})} if scored
        else {},
    }
    output.write_text("summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
