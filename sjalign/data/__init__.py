"""Datasets, views and the pairing of states across files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sjalign.data.fashion_mnist import ImageSet, load_fashion_mnist
from sjalign.data.views import parse_view
from sjalign.errors import DataError

DATASETS = {
    "fashion-mnist": "Fashion-MNIST, 70k 28x28 grayscale images, 10 classes (state id = image index)",
    "PATH.txt": "text, one item per line (state id = line number from 0); for text encoders",
    "PATH.csv": "text in column 'text' (optional columns state_id, label, split); for text encoders",
}
TEXT_SUFFIXES = (".txt", ".csv")


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None, split: str = "all",
                 max_states: int | None = None) -> ImageSet:
    """Load a registered dataset by name.

    Raises:
        DataError: unknown dataset (the message lists the known ones) or unreadable files.
    """
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, split=split, max_states=max_states)
    raise DataError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")


def view_images(images: np.ndarray, state_ids: np.ndarray, view: str, *, batch_size: int = 4096) -> torch.Tensor:
    """Render observations of states through a view.

    Args:
        images: (n, H, W) uint8 grayscale states.
        state_ids: (n,) int64.
        view: view spec (see :func:`sjalign.data.views.parse_view`).

    Returns:
        (n, 1, H, W) float32 observations in [0, 1].
    """
    fn = parse_view(view)
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size].astype(np.float32) / 255.0)[:, None]
        out.append(fn(x, state_ids[start:start + batch_size]))
    if not out:
        raise DataError("the dataset selection is empty")
    return torch.cat(out)


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


def load_observations(dataset: str, *, view: str = "identity", data_dir: str | os.PathLike | None = None,
                      split: str = "all", max_states: int | None = None) -> Observations:
    """A dataset name or text-file path, rendered through a view, ready for an encoder.

    Raises:
        DataError: unknown dataset, a view on text, or unreadable files.
    """
    if Path(dataset).suffix.lower() in TEXT_SUFFIXES:
        from sjalign.data.text import load_text_dataset

        if view not in ("identity", "full"):
            raise DataError(f"{dataset}: views apply to images; a text dataset takes --view identity")
        text = load_text_dataset(dataset, split=split, max_states=max_states)
        return Observations(text.texts, text.state_ids, text.labels, text.is_test, "text")
    data = load_dataset(dataset, data_dir=data_dir, split=split, max_states=max_states)
    return Observations(view_images(data.images, data.state_ids, view), data.state_ids, data.labels,
                        data.is_test, "image")
