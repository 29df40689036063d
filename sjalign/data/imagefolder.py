"""Image folders (ImageNet-style): one subfolder per class, views = augmentation pipelines.

Layouts::

    DIR/CLASS/**/IMAGE          seeded split by state id (about 20 % test)
    DIR/train/CLASS/**/IMAGE    the official split: train/ and test/ (or val/)
    DIR/test/CLASS/**/IMAGE

Images (``.jpg .jpeg .png .bmp .gif .tif .tiff .webp .ppm .pgm``, any case) are found
recursively inside each class folder and read with Pillow as RGB on access. Classes are
the subfolder names in sorted order (label = position; ``--classes`` takes names or
labels). State id = position of the image in the sorted list of every image of the
folder (train part first), so it does not depend on the view or the subset. The views
are the transforms of :mod:`sjalign.data.views`, chiefly ``aug-a`` and ``aug-b`` (the
paper's two augmentation pipelines, appendix A.3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sjalign.data.lazy import IMAGE_SUFFIXES, FileSource
from sjalign.data.selection import Subset, seeded_is_test, select_states
from sjalign.errors import DataError

SPLIT_DIRS = {"train": False, "test": True, "val": True, "validation": True}


@dataclass(frozen=True)
class ImageFolder:
    """Every image of a folder: paths, labels, split and class names (state id = index)."""

    root: Path
    paths: list[Path]
    labels: np.ndarray
    is_test: np.ndarray
    class_names: list[str]
    official_split: bool


def _images_in(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                found.append(Path(dirpath) / name)
    return found


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def scan_image_folder(root: str | os.PathLike) -> ImageFolder:
    """List the images of a class-subfolder tree (see the module docstring).

    Raises:
        DataError: not a folder, no class subfolders, or no images in them.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    try:
        top = _class_dirs(root)
    except OSError as exc:
        raise DataError(f"{root}: cannot list ({exc.strerror or exc})") from None
    split_parts = [d for d in top if d.name.lower() in SPLIT_DIRS]
    official = bool(split_parts) and any(not SPLIT_DIRS[d.name.lower()] for d in split_parts) and \
        any(SPLIT_DIRS[d.name.lower()] for d in split_parts)
    parts = [(d, SPLIT_DIRS[d.name.lower()]) for d in sorted(split_parts, key=lambda d: SPLIT_DIRS[d.name.lower()])] \
        if official else [(root, False)]
    entries: list[tuple[bool, str, Path]] = []
    for part, test in parts:
        for cdir in _class_dirs(part):
            entries += [(test, cdir.name, f) for f in _images_in(cdir)]
    if not entries:
        if any(root.glob("smallnorb-*")):
            raise DataError(f"{root}: holds smallNORB files, not class subfolders; use --dataset smallnorb "
                            f"--data-dir {root}")
        raise DataError(f"{root}: no images in class subfolders (expected DIR/CLASS/IMAGE or "
                        "DIR/train/CLASS/IMAGE and DIR/test/CLASS/IMAGE)")
    class_names = sorted({c for _, c, _ in entries})
    index = {c: i for i, c in enumerate(class_names)}
    paths = [f for _, _, f in entries]
    labels = np.array([index[c] for _, c, _ in entries], dtype=np.int64)
    ids = np.arange(len(paths), dtype=np.int64)
    is_test = np.array([t for t, _, _ in entries], dtype=bool) if official else seeded_is_test(ids)
    return ImageFolder(root, paths, labels, is_test, class_names, official)


def open_image_folder(root: str | os.PathLike, subset: Subset = Subset()) -> FileSource:
    """The rows of an image folder for a subset of states (``--max-states`` in hashed id order).

    Raises:
        DataError: see :func:`scan_image_folder`; unknown classes; an empty selection.
    """
    f = scan_image_folder(root)
    ids = np.arange(len(f.paths), dtype=np.int64)
    sel = select_states(ids, f.is_test, f.labels, subset, class_names=f.class_names, where=str(f.root))
    return FileSource(f.paths, name=str(root), state_ids=ids[sel], labels=f.labels[sel], is_test=f.is_test[sel],
                      class_names=f.class_names, rows=ids[sel])


def describe_image_folder(root: str | os.PathLike) -> dict:
    """Classes, images and split of an image folder."""
    f = scan_image_folder(root)
    return {"views": ["aug-a", "aug-b", "identity"], "states": len(f.paths), "test_states": int(f.is_test.sum()),
            "split": "train/ and test/ subfolders" if f.official_split else "seeded by state id (20 % test)",
            "classes": f.class_names}
