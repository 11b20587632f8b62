"""data.path and artifacts_dir as object-store URLs (s3://bucket/prefix, gs://...; contract.storage, with the s3 or
gcs extra).

Data: the training job reads a local mirror of every object under the prefix, in data.cache_dir (default
<output_dir>/data_mirror, on the run's volume). Each object is downloaded once and recorded with its ETag (or the
store's content hash): a resumed or repeated Job downloads only what changed, and an object removed from the store
leaves the mirror too. So the mirror is the store's content, and the run identity (a digest of the files' content
and split, training.run_identity) tells a resume from a run on other data exactly as it does for a folder. A key
that would land outside the mirror (`../`) and an object over data.max_file_bytes are left in the store, and said.

Artifacts: the version is built and checked locally as always (training.export), next to what the store publishes
now (its LATEST and that version's model.json, for the publish gate's comparison); then its files are uploaded and,
if the gate passed, LATEST last, as one PUT: a reader that follows LATEST finds every file of the version there.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from contract.files import write_atomic
from contract.storage import Place, StorageError, is_url, place, translated

from .config import DataConfig
from .log import event
from .publish import PublishRefused

INDEX_SUFFIX = ".mirror.json"  # beside the mirrored folder, never inside it (the dataset reader sees every file)
CHUNK = 256  # objects per download call: s3fs fetches a call's files concurrently; the index is saved after each


@dataclass
class Mirrored:
    """What a mirror pass found and did."""
    local: Path
    downloaded: int = 0
    reused: int = 0
    removed: int = 0
    bytes_downloaded: int = 0
    left_out: dict[str, str] = field(default_factory=dict)  # key -> why it was not mirrored


def version_tag(info: dict) -> str:
    """What says an object changed: its ETag (S3), etag / md5Hash (GCS), else size and modification time."""
    for key in ("ETag", "etag", "md5Hash", "crc32c"):
        if info.get(key):
            return str(info[key]).strip('"')
    return f"size={info.get('size')} mtime={info.get('LastModified') or info.get('mtime') or info.get('updated')}"


def safe_relative(key: str) -> str | None:
    """The key's path below the prefix if it stays below it; None for '..' parts and absolute names."""
    rel = PurePosixPath(key)
    return None if rel.is_absolute() or ".." in rel.parts or not rel.parts else rel.as_posix()


def listing(store: Place, max_file_bytes: int) -> tuple[dict[str, dict], dict[str, str]]:
    """{relative key: info} for every object under the prefix, and the keys left out with why."""
    with translated(store.url):
        found = store.fs.find(store.root, detail=True)
    if not found:
        raise StorageError(f"{store.url}: no objects under this prefix (check the bucket and prefix)")
    objects, left_out = {}, {}
    for path, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        key = path[len(store.root.rstrip("/")) + 1:]
        rel = safe_relative(key)
        if rel is None:
            left_out[key] = "its key would land outside the mirror ('..' or an absolute name)"
        elif (info.get("size") or 0) > max_file_bytes:
            left_out[key] = f"{info.get('size')} bytes, over data.max_file_bytes {max_file_bytes}"
        else:
            objects[rel] = info
    return objects, left_out


def mirror(url: str, cache_dir: Path, max_file_bytes: int) -> Mirrored:
    """Bring the local mirror of the prefix `url` up to date with the store; see the module's docstring."""
    store = place(url)
    protocol = store.fs.protocol if isinstance(store.fs.protocol, str) else store.fs.protocol[0]
    local = Path(cache_dir) / protocol / store.root.strip("/")
    index_path = local.with_name(local.name + INDEX_SUFFIX)
    index: dict[str, str] = json.loads(index_path.read_text()) if index_path.is_file() else {}
    objects, left_out = listing(store, max_file_bytes)
    done = Mirrored(local, left_out=left_out)
    for rel in sorted(set(index) - set(objects)):  # gone from the store (or now left out): gone from the mirror
        (local / rel).unlink(missing_ok=True)
        del index[rel]
        done.removed += 1
    if done.removed:
        remove_empty_folders(local)  # a class whose objects all left must not stay as an empty class folder
    wanted = [rel for rel, info in objects.items()
              if index.get(rel) != version_tag(info) or not (local / rel).is_file()]
    done.reused = len(objects) - len(wanted)
    partial = Path(cache_dir) / f".partial-{os.getpid()}"  # torchrun's ranks may mirror at once
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start:start + CHUNK]
        shutil.rmtree(partial, ignore_errors=True)
        tmp = [partial / str(i) for i in range(len(chunk))]
        partial.mkdir(parents=True)
        with translated(url):  # one call per chunk: s3fs downloads its files concurrently
            store.fs.get([store.path(rel) for rel in chunk], [str(t) for t in tmp])
        for rel, t in zip(chunk, tmp):
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(t, local / rel)  # a file in the mirror is whole: it is renamed in once downloaded
            index[rel] = version_tag(objects[rel])
            done.bytes_downloaded += objects[rel].get("size") or 0
        done.downloaded += len(chunk)
        write_atomic(index_path, json.dumps(index, indent=0))
        event(f"mirrored {done.downloaded} of {len(wanted)} changed objects from {url}",
              downloaded=done.downloaded, changed=len(wanted))
    shutil.rmtree(partial, ignore_errors=True)
    write_atomic(index_path, json.dumps(index, indent=0))
    return done


def remove_empty_folders(root: Path) -> None:
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def mirror_data(url: str, cache_dir: Path, max_file_bytes: int) -> Path:
    """The local path to read for data.path = `url`: the mirrored prefix, or the CSV manifest inside the mirror of
    its folder (a manifest names its images relative to its own folder)."""
    store = place(url)
    with translated(url):
        is_file = store.fs.isfile(store.root)
    prefix, name = (url.rstrip("/").rsplit("/", 1)) if is_file else (url, None)
    done = mirror(prefix, cache_dir, max_file_bytes)
    event(f"data {url}: mirrored in {done.local} ({done.downloaded} objects downloaded, "
          f"{done.bytes_downloaded / 1e6:.1f} MB; {done.reused} unchanged since the last mirror; {done.removed} "
          f"removed since)", downloaded=done.downloaded, reused=done.reused, removed=done.removed)
    for key, why in done.left_out.items():
        event(f"warning: {url}/{key} is not mirrored: {why}", key=key)
    return done.local / name if name else done.local


def local_data(data: DataConfig, output_dir: Path) -> DataConfig:
    """`data` as the dataset reader takes it: an object-store data.path replaced by its up-to-date mirror."""
    if not is_url(data.path):
        return data
    cache = data.cache_dir or Path(output_dir) / "data_mirror"
    return data.model_copy(update={"path": mirror_data(data.path, cache, data.max_file_bytes)})


def fetch_published(store: Place, local_root: Path) -> None:
    """What the store publishes now, in `local_root` as the publish gate reads it: LATEST and its model.json."""
    shutil.rmtree(local_root, ignore_errors=True)
    local_root.mkdir(parents=True)
    if not store.exists("LATEST"):
        return
    version = store.read_text("LATEST").strip()
    write_atomic(local_root / "LATEST", version + "\n")
    if store.exists(f"{version}/model.json"):
        (local_root / version).mkdir()
        write_atomic(local_root / version / "model.json", store.read_text(f"{version}/model.json"))


def upload_version(version_dir: Path, store: Place) -> str:
    """Every file of the version, model.json last (a version is complete when its card is there); returns its
    URL."""
    files = sorted((p for p in version_dir.rglob("*") if p.is_file()), key=lambda p: (p.name == "model.json", p))
    with translated(store.url):
        for f in files:
            store.fs.put_file(str(f), store.path(f"{version_dir.name}/{f.relative_to(version_dir).as_posix()}"))
    return f"{store.url.rstrip('/')}/{version_dir.name}"


def publish_to_store(url: str, name: str, staging: Path, build: Callable[[Path], Path]) -> str:
    """Build the version locally under `staging` (beside the store's published card), upload it, then move the
    store's LATEST if the local publish did; returns the version's URL."""
    store = place(f"{url.rstrip('/')}/{name}")
    fetch_published(store, staging / name)
    try:
        version_dir = build(staging)
    except PublishRefused as exc:  # the version is uploaded all the same, as a local export keeps it
        upload_version(exc.version_dir, store)
        raise PublishRefused(exc.version_dir, exc.reasons, store.url.rstrip("/")) from None
    where = upload_version(version_dir, store)
    store.write_text("LATEST", version_dir.name + "\n")
    event(f"uploaded {version_dir.name} to {where} and moved {store.url}/LATEST to it", url=where)
    return where
