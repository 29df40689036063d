"""Shared fixtures: small latents files, the CLI runner, real Fashion-MNIST when installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sjalign.io import Latents, save_latents


def make_latents(path: Path, x: np.ndarray, ids: np.ndarray, *, labels=None, split=None, encoder="test") -> Path:
    """Write a latents file the way `sjalign embed` would."""
    lat = Latents(x.astype(np.float32), np.asarray(ids, dtype=np.int64),
                  None if labels is None else np.asarray(labels, dtype=np.int64),
                  None if split is None else np.asarray(split, dtype=np.uint8))
    return save_latents(path, lat, {"encoder": encoder, "dataset": "synthetic", "view": "v"})


@pytest.fixture
def planted(tmp_path):
    """Two latents files related by a planted linear map plus noise, rows in different orders.

    Returns (a_path, b_path, x, y, ids, labels).
    """
    rng = np.random.default_rng(0)
    n, d_a, d_b = 600, 12, 8
    labels = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, d_a)) * 2.0
    x = rng.normal(size=(n, d_a)) + centres[labels]
    w = rng.normal(size=(d_b, d_a))
    y = x @ w.T + 0.05 * rng.normal(size=(n, d_b)) + 3.0
    ids = np.arange(1000, 1000 + n)
    order_b = rng.permutation(n)
    a_path = make_latents(tmp_path / "a.safetensors", x, ids, labels=labels)
    b_path = make_latents(tmp_path / "b.safetensors", y[order_b], ids[order_b], labels=labels[order_b])
    return a_path, b_path, x, y, ids, labels


@pytest.fixture
def runner():
    return CliRunner()


def fashion_mnist_available() -> bool:
    from sjalign.data.fashion_mnist import find_data_dir
    from sjalign.errors import DataError

    try:
        find_data_dir()
        return True
    except DataError:
        return False


needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_available(),
    reason="Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)",
)
