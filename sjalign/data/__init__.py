"""Datasets and views: the states sjalign embeds (pairing across latents files lives in sjalign.align.pairing).

``--dataset`` is a registered name or a path:

=================  =====================================================  ======================================
dataset            what                                                   views (``--view``; transforms after +)
=================  =====================================================  ======================================
fashion-mnist      70k 28x28 grayscale, 10 classes, official split        transforms (crop:top, aug-a, ...)
smallnorb          the official binary files in --data-dir                ``azimuth=A[,camera=left|right]``
PATH.csv / .jsonl  manifest ``state_id, view, path[, label][, split]``     the manifest's view names
DIR                image folder with class subfolders                     ``aug-a``, ``aug-b`` (transforms)
PATH.txt / .csv    text (a ``text`` column) for text encoders             none
=================  =====================================================  ======================================

:func:`open_dataset` returns a lazy :class:`~sjalign.data.lazy.ViewDataset`;
:func:`load_observations` materialises one (or a text dataset) for small jobs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sjalign.data.fashion_mnist import CLASSES as FASHION_CLASSES
from sjalign.data.fashion_mnist import ImageSet, load_fashion_mnist
from sjalign.data.selection import Subset
from sjalign.data.views import parse_view
from sjalign.errors import DataError

DATASETS = {
    "fashion-mnist": "Fashion-MNIST, 70k 28x28 grayscale images, 10 classes (state id = image index; "
                     "official split 60k/10k)",
    "smallnorb": "smallNORB from its official binary files (--data-dir): 5 categories, 96x96 stereo pairs; "
                 "state = (category, instance, elevation, lighting); official split",
    "PATH.csv|PATH.jsonl": "manifest of a synchronised multi-camera capture: columns state_id, view, path"
                           "[, label][, split]; paths relative to the manifest; images via Pillow (RGB)",
    "DIR": "image folder: DIR/CLASS/IMAGE (seeded 80/20 split) or DIR/train|test/CLASS/IMAGE; images via Pillow",
    "PATH.txt": "text, one item per line (state id = line number from 0); for text encoders",
    "PATH.csv (text)": "text in column 'text' (optional columns state_id, label, split); for text encoders",
}
DATASET_VIEWS = {
    "fashion-mnist": "any transform below (crop:top, azimuth:30, aug-a, ...)",
    "smallnorb": "azimuth=A|A-B|all[,camera=left|right] (A = 0, 2, ..., 34, x10 degrees), then + transforms",
    "PATH.csv|PATH.jsonl": "a view name of the manifest (e.g. CAM_FRONT), then + transforms",
    "DIR": "aug-a, aug-b (the paper's two augmentation pipelines) or any transform below",
    "PATH.txt": "identity only",
    "PATH.csv (text)": "identity only",
}
TEXT_SUFFIXES = (".txt", ".csv")


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, split: str = "all",
                 max_states: int | None = None) -> ImageSet:
    """Load Fashion-MNIST in memory (the in-memory path of the original demo and tests).

    Raises:
        DataError: unknown dataset (the message lists the known ones) or unreadable files.
    """
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, split=split, max_states=max_states)
    raise DataError(f"unknown dataset '{name}' for in-memory loading (use open_dataset; known: {', '.join(DATASETS)})")


def view_images(images: np.ndarray, state_ids: np.ndarray, view: str, *, batch_size: int = 4096,
                seed: int = 0) -> torch.Tensor:
    """Render observations of states through a view.

    Args:
        images: (n, H, W) uint8 grayscale states.
        state_ids: (n,) int64.
        view: view spec (see :func:`sjalign.data.views.parse_view`).
        seed: model seed for shuffles without an explicit seed.

    Returns:
        (n, 1, H, W) float32 observations in [0, 1].
    """
    fn = parse_view(view, seed=seed)
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size].astype(np.float32) / 255.0)[:, None]
        out.append(fn(x, state_ids[start:start + batch_size]))
    if not out:
        raise DataError("the dataset selection is empty")
    return torch.cat(out)


def dataset_kind(dataset: str) -> str:
    """``fashion-mnist``, ``smallnorb``, ``manifest``, ``imagefolder`` or ``text``.

    Raises:
        DataError: a name that is not registered and a path that does not exist.
    """
    from sjalign.data.manifest import is_manifest

    if dataset in ("fashion-mnist", "smallnorb"):
        return dataset
    p = Path(dataset)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", *TEXT_SUFFIXES) and not p.is_file():
        raise DataError(f"{dataset}: dataset file not found")
    if suffix == ".jsonl" or (suffix == ".csv" and is_manifest(p)):
        return "manifest"
    if suffix in TEXT_SUFFIXES:
        return "text"
    if p.is_dir():
        return "imagefolder"
    if p.exists():
        raise DataError(f"{dataset}: not a dataset (use a folder of class subfolders, a manifest .csv/.jsonl, "
                        "or a text .txt/.csv)")
    raise DataError(f"unknown dataset '{dataset}' (registered: fashion-mnist, smallnorb; or a path to a manifest, "
                    "an image folder or a text file)")


def split_view(kind: str, view: str) -> tuple[str | None, str]:
    """Split a view spec into the dataset's image selector and the transforms after it.

    smallNORB: the first ``+`` part (``azimuth=8,camera=left``); a manifest: the first part
    (a view name); other datasets have no selector. ``"azimuth=8+pixel-shuffle"`` ->
    ``("azimuth=8", "pixel-shuffle")``.
    """
    if kind not in ("smallnorb", "manifest"):
        return None, view
    head, _, rest = view.partition("+")
    head = head.strip()
    if kind == "smallnorb" and "=" not in head:
        return None, view
    return head, rest.strip() or "identity"


def open_dataset(dataset: str, *, view: str = "identity", data_dir: str | os.PathLike | None = None,
                 subset: Subset = Subset(), image_size: int | None = None, seed: int = 0):
    """A dataset selection through a view, read lazily: a :class:`~sjalign.data.lazy.ViewDataset`.

    Args:
        dataset: a registered name or a path (see the module docstring).
        view: the dataset's image selector (if it has one) followed by ``+`` transforms.
        subset: ``--split``, ``--classes``, ``--max-states``; the same states whatever the view.
        image_size: S (every item is C x S x S); None: the native size, or 96 for image files.
        seed: model seed for shuffles without an explicit seed.

    Raises:
        DataError: unknown dataset, bad view, unreadable files, empty selection; text datasets
            (use :func:`load_observations`).
    """
    from sjalign.data.lazy import ArraySource, ViewDataset
    from sjalign.data.selection import select_states

    kind = dataset_kind(dataset)
    selector, transforms = split_view(kind, view)
    if kind == "fashion-mnist":
        data = load_fashion_mnist(data_dir, split="all")
        sel = select_states(data.state_ids, data.is_test, data.labels, subset, class_names=list(FASHION_CLASSES),
                            where="fashion-mnist", order="file")
        source = ArraySource(data.images, name=dataset, state_ids=data.state_ids[sel], labels=data.labels[sel],
                             is_test=data.is_test[sel], class_names=list(FASHION_CLASSES), rows=sel.astype(np.int64))
    elif kind == "smallnorb":
        from sjalign.data.smallnorb import open_smallnorb

        source = open_smallnorb(selector, subset, data_dir=data_dir)
    elif kind == "manifest":
        from sjalign.data.manifest import open_manifest

        source = open_manifest(dataset, selector, subset)
    elif kind == "imagefolder":
        from sjalign.data.imagefolder import open_image_folder

        source = open_image_folder(dataset, subset)
    else:
        raise DataError(f"{dataset}: a text dataset has no images (use a text encoder)")
    return ViewDataset(source, transforms, image_size=image_size, seed=seed, view_name=view)


def describe_dataset(dataset: str, *, data_dir: str | os.PathLike | None = None) -> dict:
    """What a dataset holds: kind, views, states, classes, split (for ``sjalign datasets DATASET``).

    Raises:
        DataError: as :func:`open_dataset`.
    """
    kind = dataset_kind(dataset)
    if kind == "fashion-mnist":
        return {"kind": kind, "views": DATASET_VIEWS["fashion-mnist"], "states": 70000, "test_states": 10000,
                "classes": list(FASHION_CLASSES), "split": "official (train 0-59999, test 60000-69999)"}
    if kind == "smallnorb":
        from sjalign.data.smallnorb import CATEGORIES, describe_smallnorb

        return {"kind": kind, "views": DATASET_VIEWS["smallnorb"], "sets": describe_smallnorb(data_dir),
                "classes": list(CATEGORIES), "split": "official (training set = train, testing set = test)"}
    if kind == "manifest":
        from sjalign.data.manifest import describe_manifest

        return {"kind": kind, **describe_manifest(dataset)}
    if kind == "imagefolder":
        from sjalign.data.imagefolder import describe_image_folder

        return {"kind": kind, **describe_image_folder(dataset)}
    from sjalign.data.text import load_text_dataset

    text = load_text_dataset(dataset)
    return {"kind": kind, "views": ["identity"], "states": len(text),
            "test_states": None if text.is_test is None else int(text.is_test.sum())}


@dataclass(frozen=True)
class Observations:
    """What an encoder sees for each state of a dataset selection.

    Attributes:
        items: (n, C, H, W) float32 images in [0, 1], or a list of n strings (text).
        state_ids: (n,) int64.   labels: (n,) int64 or None.   is_test: (n,) bool or None.
        modality: ``image`` or ``text``.
    """

    items: torch.Tensor | list[str]
    state_ids: np.ndarray
    labels: np.ndarray | None
    is_test: np.ndarray | None
    modality: str


def load_text(dataset: str, *, view: str = "identity", subset: Subset = Subset()) -> Observations:
    """A text dataset (``.txt``, or ``.csv`` with a ``text`` column) as :class:`Observations`.

    ``--max-states`` keeps the first N items of the selection (file order).

    Raises:
        DataError: a view other than identity, unreadable files, unknown classes, empty selection.
    """
    from sjalign.data.selection import select_states
    from sjalign.data.text import load_text_dataset

    if view not in ("identity", "full"):
        raise DataError(f"{dataset}: views apply to images; a text dataset takes --view identity")
    text = load_text_dataset(dataset, split=subset.split, max_states=None if subset.classes else subset.max_states)
    if subset.classes is not None:
        sel = select_states(text.state_ids, None, text.labels, Subset(classes=subset.classes,
                                                                        max_states=subset.max_states),
                            where=dataset, order="file")
        return Observations([text.texts[i] for i in sel], text.state_ids[sel], text.labels[sel],
                            None if text.is_test is None else text.is_test[sel], "text")
    return Observations(text.texts, text.state_ids, text.labels, text.is_test, "text")


def load_observations(dataset: str, *, view: str = "identity", data_dir: str | os.PathLike | None = None,
                      split: str = "all", max_states: int | None = None, classes: tuple[str, ...] | None = None,
                      image_size: int | None = None, seed: int = 0) -> Observations:
    """A dataset rendered through a view, in memory, ready for an encoder (small jobs and tests).

    Raises:
        DataError: unknown dataset, a view on text, or unreadable files.
    """
    subset = Subset(split, classes, max_states)
    if dataset_kind(dataset) == "text":
        return load_text(dataset, view=view, subset=subset)
    ds = open_dataset(dataset, view=view, data_dir=data_dir, subset=subset, image_size=image_size, seed=seed)
    return Observations(ds.materialize(), ds.state_ids, ds.labels, ds.is_test, "image")
