"""The embedding pipeline: batching, --layer all, the latents file's per-layer tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sjalign.cli.app import app
from sjalign.embed import embed_observations
from sjalign.encoders import EncoderOptions, create_encoder
from sjalign.encoders.base import pool_tokens, prepare_images
from sjalign.errors import SjalignError
from sjalign.io import Latents, load_latents, save_latents

from conftest import needs_fashion_mnist


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from sjalign.jepa import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("run")
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    pretrain(PretrainConfig(epochs=0, device="cpu"), images, out)
    return out


def test_layer_all_matches_single_layers(tiny_run):
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    enc_all = create_encoder(f"jepa:{tiny_run}", EncoderOptions(layer="all", device="cpu"))
    last, layers = embed_observations(enc_all, x, batch_size=3, all_layers=True)
    assert len(layers) == 4 and all(a.shape == (7, 128) for a in layers)
    np.testing.assert_array_equal(last, layers[-1])
    for k in (1, 3):
        single = embed_observations(create_encoder(f"jepa:{tiny_run}", EncoderOptions(layer=k, device="cpu")), x)
        np.testing.assert_allclose(layers[k - 1], single, rtol=1e-5, atol=1e-6)
    final = embed_observations(create_encoder(f"jepa:{tiny_run}", EncoderOptions(device="cpu")), x)
    assert not np.allclose(final, layers[-1])  # the final output is layer-normed, block 4's raw state is not


def test_jepa_refuses_cls_and_bad_layer(tiny_run):
    with pytest.raises(SjalignError, match="no CLS token"):
        create_encoder(f"jepa:{tiny_run}", EncoderOptions(pooling="cls"))
    with pytest.raises(SjalignError, match="out of range"):
        create_encoder(f"jepa:{tiny_run}", EncoderOptions(layer=9))


def test_layers_round_trip(tmp_path):
    lat = Latents(np.ones((4, 3), np.float32), np.arange(4), layers={"1": np.zeros((4, 5), np.float32),
                                                                      "2": np.ones((4, 3), np.float32)})
    save_latents(tmp_path / "l.safetensors", lat, {})
    back = load_latents(tmp_path / "l.safetensors")
    assert set(back.layers) == {"1", "2"} and back.layers["1"].shape == (4, 5)
    bad = Latents(np.ones((4, 3), np.float32), np.arange(4), layers={"1": np.zeros((3, 5), np.float32)})
    with pytest.raises(SjalignError):
        save_latents(tmp_path / "bad.safetensors", bad, {})


def test_pool_tokens_reference():
    t = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    torch.testing.assert_close(pool_tokens(t, "mean"), t.mean(1))
    torch.testing.assert_close(pool_tokens(t, "mean", num_prefix=1), t[:, 1:].mean(1))
    torch.testing.assert_close(pool_tokens(t, "cls", num_prefix=1), t[:, 0])
    assert pool_tokens(t, "tokens").shape == (2, 12)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(pool_tokens(t, "mean", mask=mask), torch.stack([t[0, :2].mean(0), t[1, 0]]))
    with pytest.raises(SjalignError, match="no CLS"):
        pool_tokens(t, "cls")


def test_prepare_images():
    x = torch.rand(2, 1, 28, 28)
    y = prepare_images(x, size=(56, 56), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert y.shape == (2, 3, 56, 56)
    torch.testing.assert_close(y[:, 0], y[:, 2])
    z = prepare_images(x, size=(28, 28), mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.testing.assert_close(z[:, 1], (x[:, 0] - 0.5) / 0.25)
    with pytest.raises(SjalignError):
        prepare_images(torch.rand(2, 3, 8, 8), size=(8, 8), mean=(0.0,), std=(1.0,), channels=1)


@needs_fashion_mnist
def test_embed_layer_all_cli(tiny_run, tmp_path):
    from typer.testing import CliRunner

    out = tmp_path / "l.safetensors"
    res = CliRunner().invoke(app, ["embed", "--encoder", f"jepa:{tiny_run}", "--view", "azimuth:30", "--max-states",
                                   "40", "--layer", "all", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.stderr
    lat = load_latents(out)
    assert sorted(lat.layers) == ["1", "2", "3", "4"] and json.loads(lat.metadata["layers"]) == ["1", "2", "3", "4"]
    res = CliRunner().invoke(app, ["embed", "--encoder", "pixels", "--max-states", "5", "--layer", "all",
                                   "-o", str(tmp_path / "p.safetensors")])
    assert res.exit_code == 1 and "layer" in res.stderr
