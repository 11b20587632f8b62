"""Score a whole archive: `python -m serving.batch --model DIR --input FOLDER|CSV --output FOLDER [--shard i/n]`.

The archive (serving.archive: a folder or an object-store prefix such as s3://bucket/photos, every level below it,
or a CSV manifest; contract.storage reads and writes both) is sorted and cut into parts of
`--part-size` images; part k belongs to shard k mod n, so n pods of a Kubernetes Indexed Job share it without talking
to each other (the completion index picks the shard where --shard is not given: --shards n). Each part is decoded
in parallel over the cores with the contract's preprocessing (the service's, pixel for pixel), run through
onnxruntime at full batch (CPU or CUDA; the service's precision setting picks the file) and written as one Parquet
file, whole or not at all (serving.parts); a restarted job skips the parts it finished. An unreadable file is a row
with its reason, never the job's end. The last shard to finish writes summary.json: counts, unreadable files by
reason, class shares and the label-free accuracy estimate (the model's ATC thresholds) for the whole archive.

Progress: a bar on a terminal, a JSON line per part in a pod.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from contract import monitoring
from contract.card import ArtifactError, ModelCard
from contract.errors import RequestError
from contract.precision import PRECISIONS
from contract.preprocess import preprocess
from contract.publish import fetch, resolve_path
from contract.scores import ranked, softmax
from contract.storage import Place, StorageError, is_url, place

from . import loading, parts
from .archive import ArchiveError, FileTooLarge, Item, Listing, list_input
from .cpus import cpu_allotment
from .settings import Settings

EXIT_ERROR, EXIT_USAGE = 1, 2


class BatchError(ValueError):
    """A job that cannot run as asked; the message says what to do."""


Decoded = tuple[np.ndarray | None, str | None, str | None, str | None]  # pixels, sha256, error reason, message


def decode(listing: Listing, item: Item, card: ModelCard, max_pixels: int, max_bytes: int) -> Decoded:
    """One file's pixels as the model takes them, or why not (never raises for a bad file)."""
    try:
        data = listing.read(item, max_bytes)
    except FileTooLarge as exc:
        return None, None, "file_too_large", str(exc)
    except OSError as exc:
        return None, None, "unreadable_file", f"{type(exc).__name__}: {exc.strerror or exc}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        return preprocess(data, card.spec, max_pixels), digest, None, None
    except RequestError as exc:
        return None, digest, exc.reason, str(exc)


def bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """pool.map in order, but at most `window` results pending: memory stays flat whatever the archive's size."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def answer_row(item: Item, digest: str | None, probs: np.ndarray | None, classes: list[str], top_k: int,
               card: ModelCard, error: str | None = None, message: str | None = None) -> dict:
    row = {"path": item.name, "sha256": digest, "model": card.name, "version": card.version, "error": error,
           "error_message": message, "label": None, "confidence": None, "top_k_labels": None,
           "top_k_probabilities": None}
    if probs is not None:
        order = ranked(probs, top_k)
        row |= {"label": classes[order[0]], "confidence": float(probs[order[0]]),
                "top_k_labels": [classes[i] for i in order], "top_k_probabilities": [float(probs[i]) for i in order]}
    return row


class Job:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        try:
            model_dir = fetch(args.model, args.model_cache) if is_url(args.model) else resolve_path(Path(args.model))
            settings = Settings(model_dir=model_dir, precision=args.precision, device=args.device,
                                intra_op_threads=args.threads)
            self.model = loading.load(settings)
        except (ArtifactError, OSError) as exc:
            raise BatchError(f"--model {args.model}: {exc}") from None
        self.card = self.model.card
        self.top_k = min(args.top_k, len(self.card.classes))
        self.thresholds = self.card.monitoring.thresholds if self.card.monitoring is not None else {}
        self.decoders = args.decode_threads or cpu_allotment() or os.cpu_count() or 1

    def identity(self, listing: Listing, parts_total: int) -> dict:
        """What every shard, and a restart, must agree on to write into the same folder."""
        return {"model": self.card.name, "version": self.card.version,
                "precision": self.model.chosen.precision, "input": listing.source, "listing_sha256": listing.digest,
                "images": len(listing.items), "not_images": len(listing.not_images), "part_size": self.args.part_size,
                "parts": parts_total, "top_k": self.top_k, "thresholds": self.thresholds}

    def claim(self, output: Place, job: dict) -> None:
        if output.exists("job.json"):
            before = json.loads(output.read_text("job.json"))
            if before != job:
                changed = sorted(k for k in job if before.get(k) != job[k])
                raise BatchError(f"--output {output.url} holds parts of another job (it differs in {changed}): give "
                                 "another --output, or delete that folder to start over")
        else:
            output.write_text("job.json", json.dumps(job, indent=2) + "\n")

    def score_part(self, listing: Listing, items: list[Item],
                   pool: ThreadPoolExecutor) -> tuple[list[dict], dict]:
        rows: list[dict | None] = [None] * len(items)
        batch: list[tuple[int, np.ndarray, str]] = []
        scored = []

        def run() -> None:
            logits = self.model.session.run(np.stack([pixels for _, pixels, _ in batch]))
            probs = softmax(logits, self.card.temperature)
            for (i, _, digest), p in zip(batch, probs):
                rows[i] = answer_row(items[i], digest, p, self.card.classes, self.top_k, self.card)
            scored.append(probs)
            batch.clear()

        a = self.args
        decoded = bounded_map(pool, lambda it: decode(listing, it, self.card, a.max_image_pixels, a.max_image_bytes),
                              items, 2 * a.batch_size)
        for i, (pixels, digest, error, message) in enumerate(decoded):
            if pixels is None:
                rows[i] = answer_row(items[i], digest, None, self.card.classes, self.top_k, self.card, error, message)
                continue
            batch.append((i, pixels, digest))
            if len(batch) == self.args.batch_size:
                run()
        if batch:
            run()
        probs = np.concatenate(scored) if scored else np.zeros((0, len(self.card.classes)), np.float32)
        return rows, parts.part_stats(rows, probs, self.thresholds, monitoring.scores(probs))

    def run(self, listing: Listing, shard: int, shards: int, progress: Progress) -> dict | None:
        size = self.args.part_size
        chunks = [listing.items[k:k + size] for k in range(0, len(listing.items), size)]
        job = self.identity(listing, len(chunks))
        output = place(self.args.output, create=True)
        self.claim(output, job)
        mine = [k for k in range(len(chunks)) if k % shards == shard]
        todo = [k for k in mine if not output.exists(parts.part_name(k))]
        progress.start(sum(len(chunks[k]) for k in mine), sum(len(chunks[k]) for k in mine if k not in todo))
        with ThreadPoolExecutor(self.decoders, thread_name_prefix="decode") as pool:
            for k in todo:
                start = time.perf_counter()
                rows, stats = self.score_part(listing, chunks[k], pool)
                parts.write_part(output, parts.part_name(k), rows, stats)
                progress.part(k, stats, time.perf_counter() - start)
        progress.close()
        return parts.summarize(output, len(chunks), job)


class Progress:
    """A bar on a terminal; a JSON line per part where stderr is not one (a pod's log)."""

    def __init__(self, shard: int, shards: int, interactive: bool) -> None:
        self.shard, self.shards, self.interactive, self.bar = shard, shards, interactive, None

    def start(self, total: int, done: int) -> None:
        if self.interactive:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, unit="img", desc=f"shard {self.shard}/{self.shards}")
        else:
            self.emit({"event": "start", "images": total, "already_done": done})

    def part(self, index: int, stats: dict, seconds: float) -> None:
        if self.bar is not None:
            self.bar.update(stats["images"])
        else:
            self.emit({"event": "part", "part": index, "images": stats["images"],
                       "unreadable": sum(stats["unreadable"].values()), "img_s": round(stats["images"] / seconds, 1)})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def emit(self, fields: dict) -> None:
        print(json.dumps({"ts": round(time.time(), 3), "shard": self.shard, "shards": self.shards, **fields}),
              file=sys.stderr, flush=True)


def parse_shard(shard: str | None, shards: int | None, environ: dict) -> tuple[int, int]:
    """--shard i/n, else --shards n with the Indexed Job's completion index, else the whole archive."""
    if shard is not None:
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise BatchError(f"--shard {shard!r}: write it as i/n, e.g. 0/4") from None
    elif shards is not None:
        index = environ.get("JOB_COMPLETION_INDEX")
        if index is None:
            raise BatchError("--shards needs JOB_COMPLETION_INDEX (set by an Indexed Job); elsewhere give --shard i/n")
        i, n = int(index), shards
    else:
        return 0, 1
    if not (n >= 1 and 0 <= i < n):
        raise BatchError(f"shard {i} of {n}: the index must be 0 to {n - 1}")
    return i, n


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m serving.batch", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a version directory, or artifacts/<name> (LATEST); or either "
                                                  "in an object store (s3://bucket/artifacts/<name>)")
    ap.add_argument("--model-cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "imgcls" / "models", help="where a model from an object store is kept (downloaded once)")
    ap.add_argument("--input", required=True,
                    help="a folder of images or a CSV manifest: a path, or an fsspec URL (s3://bucket/prefix)")
    ap.add_argument("--output", required=True, help="the folder or prefix (s3://...) for the parts and summary.json")
    ap.add_argument("--path-column", default="path", help="a CSV manifest's column of file paths")
    ap.add_argument("--path-template", help="build each path from the CSV's columns instead, e.g. 'train/{id}.jpg'")
    ap.add_argument("--allow-outside-paths", action="store_true",
                    help="a CSV manifest may name files outside its own folder (absolute paths, ../)")
    ap.add_argument("--shard", help="i/n: this job scores parts i, i+n, i+2n, ...")
    ap.add_argument("--shards", type=int, help="n, the shard from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="images per onnxruntime run")
    ap.add_argument("--part-size", type=int, default=1000, help="images per Parquet part (the unit of restart)")
    ap.add_argument("--precision", choices=PRECISIONS,
                    default=os.environ.get("SERVING_PRECISION", "auto"))
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default=os.environ.get("SERVING_DEVICE", "auto"))
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: the CPU allotment)")
    ap.add_argument("--decode-threads", type=int, default=0, help="decoding threads (0: the CPU allotment)")
    ap.add_argument("--max-image-pixels", type=int, default=Settings.model_fields["max_image_pixels"].default,
                    help="pixels one image may decode to (the service's default; a larger file is a row with its "
                    "reason): each decoding thread may hold one image of this size")
    ap.add_argument("--max-image-bytes", type=int, default=Settings.model_fields["max_request_bytes"].default,
                    help="bytes one file may have (the service's request limit; a larger file is a row with its "
                    "reason, read no further than the limit)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    for name in ("top_k", "batch_size", "part_size", "max_image_pixels", "max_image_bytes"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        shard, shards = parse_shard(args.shard, args.shards, dict(os.environ))
        listing = list_input(args.input, args.path_column, args.path_template, args.allow_outside_paths)
        job = Job(args)
        summary = job.run(listing, shard, shards, Progress(shard, shards, sys.stderr.isatty()))
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.permanent else EXIT_ERROR
    except (BatchError, ArchiveError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:  # device=cuda where the GPU cannot be used: another node may do (a retry)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if summary is not None:
        print(json.dumps({k: summary[k] for k in ("images", "scored", "unreadable", "class_shares",
                                                  "estimated_accuracy")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
