"""Datasets, views and the pairing of states across files."""

from __future__ import annotations

import os

import numpy as np
import torch

from sjalign.data.fashion_mnist import ImageSet, load_fashion_mnist
from sjalign.data.views import parse_view
from sjalign.errors import DataError

DATASETS = {"fashion-mnist": "Fashion-MNIST, 70k 28x28 grayscale images, 10 classes (state id = image index)"}


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
