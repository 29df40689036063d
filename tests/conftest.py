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


def run(runner, *args):
    """Invoke the CLI in-process; a crash (not an exit) fails the test at once."""
    from sjalign.cli.app import app

    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def one_error_line(res, *needles, alone: bool = False) -> str:
    """Exit 1, one ``error:`` line ending stderr (alone: the only line), no traceback, nothing on stdout."""
    assert res.exit_code == 1, (res.exit_code, res.stderr)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr
    assert not alone or len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fashion_mnist_images(n: int):
    """The first ``n`` real Fashion-MNIST states (train and test in proportion), (n, 1, 28, 28) in [0, 1].

    Skips the calling test when the IDX files are not installed.
    """
    from sjalign.data import load_dataset, view_images
    from sjalign.errors import SjalignError

    try:
        ds = load_dataset("fashion-mnist", max_states=n)
    except SjalignError as exc:
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    return view_images(ds.images, ds.state_ids, "identity")


def tensors_of(path: Path) -> dict:
    """Every tensor of a safetensors file, as torch tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def pretrain_first_epoch_only(cfg, images, run_dir: Path) -> None:
    """Start ``pretrain(cfg, images, run_dir)`` and interrupt it right after epoch 1 is written."""
    from sjalign.jepa import pretrain

    class Interrupt(Exception):
        pass

    def stop(record):
        raise Interrupt

    with pytest.raises(Interrupt):
        pretrain(cfg, images, run_dir, on_epoch=stop)


def single_error_line(res, *needles) -> str:
    """:func:`one_error_line` where the error is the only line on stderr."""
    return one_error_line(res, *needles, alone=True)
