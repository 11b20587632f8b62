"""Which folder layout a dataset directory has, read the way datasets are published.

Class folders, or split folders (train/val/test under their usual names) holding class folders. Around them, what
published datasets also hold is left out with a note rather than taken for a class: folders without images (saved
models, logs), hidden and tool folders (.ipynb_checkpoints, __MACOSX), loose files at the root, folders beside the
split folders, derived copies of the data (`Augmented Data/` beside `Original Data/`), and whatever data.exclude
names. A class folder whose only content is one folder of images (`<class>/Imgs/`) is read through it. Where two
readings are possible the job stops and lists them, most likely first, each with its counts and the `--set` that
selects it: nothing ambiguous is guessed silently, and every inference is a note (log, data report, `inspect`).
"""
from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .image_files import IMAGE_SUFFIXES

# Split folder names seen in public datasets, matched case-insensitively.
SPLIT_NAMES = {"train": ("train", "training", "training_set", "trn"),
               "val": ("val", "valid", "validation", "dev"),
               "test": ("test", "testing", "test_set")}
TOOL_FOLDERS = {"__macosx", "__pycache__", "lost+found", "$recycle.bin"}  # made by tools, never data
# A folder whose name says it was made from other data (augmentation, synthesis) beside one that was not.
DERIVED = re.compile(r"augment|synthetic|generated|\baug\b", re.IGNORECASE)
MAX_SHOWN = 5


def split_role(name: str) -> str | None:
    """'train' | 'val' | 'test' for a split folder (or a manifest's split value), else None."""
    low = name.strip().lower()
    return next((role for role, names in SPLIT_NAMES.items() if low in names), None)


def shown(names: list[str]) -> str:
    return ", ".join(names[:MAX_SHOWN]) + (f" and {len(names) - MAX_SHOWN} more" if len(names) > MAX_SHOWN else "")


def set_path(path: Path) -> str:
    return f"--set {shlex.quote(f'data.path={path}')}"


@dataclass(frozen=True)
class Exclude:
    """data.exclude: globs matched against paths relative to the dataset root (`models`, `*/masks/*`); a folder
    that matches takes everything below it out."""
    root: Path
    patterns: tuple[str, ...] = ()

    def __call__(self, path: Path) -> bool:
        if not self.patterns:
            return False
        rel = path.relative_to(self.root).as_posix()
        prefixes = [rel] + ["/".join(rel.split("/")[:k]) for k in range(1, rel.count("/") + 1)]
        return any(fnmatch.fnmatchcase(p, pat.strip("/")) for p in prefixes for pat in self.patterns)


def visible(folder: Path, exclude: Exclude) -> list[Path]:
    """A folder's entries that can be data: not hidden (.DS_Store, .ipynb_checkpoints), not a tool's folder, not
    excluded by the user."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                  and p.name.lower() not in TOOL_FOLDERS and not exclude(p))


def is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES


def _subdirs(folder: Path, exclude: Exclude) -> list[Path]:
    return [d for d in visible(folder, exclude) if d.is_dir()]


def _direct_images(folder: Path, exclude: Exclude) -> int:
    return sum(1 for p in visible(folder, exclude) if is_image_name(p) and not p.is_dir())


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(part.startswith(".") or part.lower() in TOOL_FOLDERS for part in parts)


def _images_below(folder: Path, exclude: Exclude) -> int:
    return sum(1 for p in folder.rglob("*") if is_image_name(p) and p.is_file() and not exclude(p)
               and not _hidden(p.relative_to(folder).parts))


@dataclass
class FolderLayout:
    root: Path
    classes: list[str]
    splits: dict[str, Path] = field(default_factory=dict)  # role -> folder; empty for plain class folders
    class_dirs: dict[str, dict[str, Path]] = field(default_factory=dict)  # role ('all') -> class -> its images' folder
    notes: list[str] = field(default_factory=list)  # what was left out or inferred, and why

    def describe(self) -> str:
        if self.splits:
            return "split folders (" + ", ".join(f"{r}={p.relative_to(self.root)}"
                                                 for r, p in self.splits.items()) + ")"
        parents = {d.parent for d in self.class_dirs.get("all", {}).values()}
        inner = parents.pop() if len(parents) == 1 else self.root
        where = f" in {inner.relative_to(self.root)}/" if inner != self.root else ""
        return f"class folders ({len(self.classes)} classes){where}"


@dataclass
class _ClassFolders:
    """The class folders of one folder: class -> the folder its images are in, and notes on what was left out."""
    dirs: dict[str, Path]
    notes: list[str]
    nested: list[str]  # class/sub-folder pairs where a class folder holds several folders of images


def _class_folders(folder: Path, exclude: Exclude, root: Path) -> _ClassFolders:
    dirs, notes, nested, empty = {}, [], [], []
    for d in _subdirs(folder, exclude):
        inner = [s for s in _subdirs(d, exclude) if _images_below(s, exclude)]
        if _direct_images(d, exclude):
            nested += [f"{d.relative_to(root)}/{s.name}" for s in inner]  # images beside folders of images
            dirs[d.name] = d
        elif not inner:
            empty.append(d.relative_to(root).as_posix() + "/")
        elif len(inner) == 1 and _direct_images(inner[0], exclude) and not _subdirs(inner[0], exclude):
            dirs[d.name] = inner[0]  # <class>/Imgs/*.jpg: the class's images are one folder down
            notes.append(f"{d.relative_to(root)}/ holds its images in one folder, {inner[0].name}/; read through it")
        elif DERIVED.search(d.name) and folder == root:  # `augmented/<class>/` beside the class folders
            notes.append(_derived_note(d, root, _images_below(d, exclude)))
        else:
            nested += [f"{d.relative_to(root)}/{s.name}" for s in inner]
    if empty:
        notes.append(f"left out {shown(empty)}: no images in it, so not a class")
    return _ClassFolders(dirs, notes, nested)


def _derived_note(d: Path, root: Path, images: int) -> str:
    return (f"warning: left out {d.relative_to(root)}/ ({images} images): its name says it is derived from the data "
            f"(augmented or generated); mixing it with the originals would leak between train and test. To train on "
            f"it alone: {set_path(d)}")


def _nested_error(root: Path, nested: list[str]) -> DataError:
    return DataError(
        f"{root}: class folders hold sub-folders of images ({shown(nested)}); the scan reads one level of "
        f"class folders and cannot tell whether those sub-folders are classes or splits. If they are classes, "
        f"set data.path to the folder that holds them; if the top folders are splits, name them train / val / test "
        f"(also training, training_set, valid, validation, dev, testing, test_set); or list the files in a CSV "
        f"manifest.")


def _loose_files(root: Path, exclude: Exclude) -> list[str]:
    files = [p for p in visible(root, exclude) if not p.is_dir()]
    if not files:
        return []
    images = [p.name for p in files if is_image_name(p)]
    other = [p.name for p in files if not is_image_name(p)]
    notes = [f"left out {len(other)} loose file(s) at the top of the dataset ({shown(other)})"] if other else []
    if images:
        notes.append(f"warning: left out {len(images)} image(s) at the top of the dataset, in no class folder "
                     f"({shown(images)})")
    return notes


def _unwrap(folder: Path, exclude: Exclude) -> Path:
    """Kaggle's `training_set/training_set/<class>`: a split folder whose only content is one folder of the same
    role stands for that folder."""
    inner = _subdirs(folder, exclude)
    files = [p for p in visible(folder, exclude) if not p.is_dir()]
    if len(inner) == 1 and not files and split_role(inner[0].name) == split_role(folder.name):
        return inner[0]
    return folder


def _split_layout(root: Path, roles: dict[str, Path], others: list[Path], exclude: Exclude) -> FolderLayout:
    notes = _loose_files(root, exclude)
    for d in others:
        n = _images_below(d, exclude)
        rel = d.relative_to(root)
        if not n:
            notes.append(f"left out {rel}/: no images in it")
        elif DERIVED.search(d.name):
            notes.append(_derived_note(d, root, n))
        else:
            notes.append(f"warning: left out {rel}/ ({n} images): not a split folder (train / val / test) beside "
                         f"the split folders; to train on it alone: {set_path(d)}")
    if "train" not in roles:
        raise DataError(f"{root}: found split folder(s) {sorted(p.name for p in roles.values())} but no training "
                        "split; a dataset is either class folders, or split folders (train/, and val/ and/or test/) "
                        "each holding the same class folders")
    if set(roles) == {"train"}:
        raise DataError(f"{root}: {roles['train'].name}/ exists but neither a val nor a test folder: add one, or drop "
                        "the split folder and let the job split the classes")
    class_dirs = {}
    for role in ("train", "val", "test"):
        if role not in roles:
            continue
        found = _class_folders(roles[role], exclude, root)
        if found.nested:
            raise _nested_error(roles[role], found.nested)
        if not found.dirs:
            raise DataError(f"{roles[role]} has no class folders: expected {roles[role]}/<class>/<image files>")
        notes += found.notes
        class_dirs[role] = found.dirs
    classes = sorted(class_dirs["train"])
    for role, dirs in class_dirs.items():
        extra = sorted(set(dirs) - set(classes))
        if extra:
            raise DataError(f"{roles[role]} has class folder(s) {extra} that {roles['train']} lacks; the model can "
                            "only learn classes it trains on: add their training images or remove them")
    order = [r for r in ("train", "val", "test") if r in roles]
    return FolderLayout(root, classes, {r: roles[r] for r in order}, class_dirs, notes)


def _roles(root: Path, dirs: list[Path], exclude: Exclude) -> dict[str, Path]:
    roles: dict[str, Path] = {}
    for d in dirs:
        role = split_role(d.name)
        if role is None:
            continue
        if role in roles:
            raise DataError(f"{root}: both {roles[role].name}/ and {d.name}/ look like the {role} split; keep one, "
                            f"or leave one out with --set 'data.exclude=[\"{d.name}\"]'")
        roles[role] = _unwrap(d, exclude)
    return roles


@dataclass
class _Candidate:
    folder: Path
    layout: FolderLayout
    images: int


def _candidates(root: Path, folders: list[str], exclude: Exclude, depth: int) -> list[_Candidate]:
    """Folders under root that each read as a whole dataset on their own, most images first."""
    found = []
    for name in folders:
        d = root / name
        try:
            layout = _detect(d, exclude, depth + 1)
        except DataError:
            continue
        found.append(_Candidate(d, layout, _images_below(d, exclude)))
    return sorted(found, key=lambda c: (-c.images, c.folder.name))


def _datasets_inside(root: Path, cf: _ClassFolders, exclude: Exclude, depth: int) -> FolderLayout:
    """The root holds no class folders of images, only folders that hold folders of images: each may be a dataset
    (`Original Data/<class>/`, `Augmented Data/<class>/`). One original is read with a note; several stop the job with
    the readings ranked."""
    cands = _candidates(root, sorted({n.split("/")[0] for n in cf.nested}), exclude, depth)
    if not cands:
        raise _nested_error(root, cf.nested)
    originals = [c for c in cands if not DERIVED.search(c.folder.name)]
    derived = [c for c in cands if DERIVED.search(c.folder.name)]
    if len(originals) == 1:
        chosen = originals[0]
        layout = chosen.layout
        layout.root = root
        layout.notes = [f"read {chosen.folder.name}/, the only folder of {root} that holds a dataset"
                        + (" that is not derived" if derived else "")] + cf.notes + _loose_files(root, exclude) + [
            f"{chosen.folder.name}/: {n}" for n in layout.notes]
        layout.notes += [_derived_note(c.folder, root, c.images) for c in derived]
        return layout
    lines = [f"  {k}. {c.folder.name}/: {c.layout.describe()}, {c.images} images ("
             + shown([f"{name} {n}" for name, n in class_counts(c.layout, exclude).items()])
             + f"): {set_path(c.folder)}" for k, c in enumerate(originals or cands, 1)]
    raise DataError(f"{root} holds {len(lines)} folders that each read as a dataset; which one is yours? "
                    "Most images first:\n" + "\n".join(lines) + "\nIf they are splits instead, name them train / val "
                    "/ test (also training, valid, validation, testing); to read them as one, list the files in a CSV "
                    "manifest.")


def class_counts(layout: FolderLayout, exclude: Exclude) -> dict[str, int]:
    """Image files per class over all splits, by name (nothing decoded): what a reading would train on."""
    return {c: sum(_direct_images(dirs[c], exclude) for dirs in layout.class_dirs.values() if c in dirs)
            for c in layout.classes}


def _detect(root: Path, exclude: Exclude, depth: int) -> FolderLayout:
    dirs = _subdirs(root, exclude)
    roles = _roles(root, dirs, exclude)
    if roles:
        return _split_layout(root, roles, [d for d in dirs if split_role(d.name) is None], exclude)
    found = _class_folders(root, exclude, root)
    if found.nested and not found.dirs and depth < 2:
        return _datasets_inside(root, found, exclude, depth)
    if found.nested:
        raise _nested_error(root, found.nested)
    if not found.dirs:
        raise DataError(f"{root} has no class folders with images: expected {root}/<class>/<image files>")
    notes = _loose_files(root, exclude) + found.notes
    return FolderLayout(root, sorted(found.dirs), {}, {"all": found.dirs}, notes)


def detect(root: Path, exclude: tuple[str, ...] = ()) -> FolderLayout:
    return _detect(root, Exclude(root, tuple(exclude)), 0)
