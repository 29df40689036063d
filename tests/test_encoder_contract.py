"""One contract test over every registered encoder (entry-point group ``sjalign.encoders``).

The test is parametrised over ``available_encoders()``, so a newly installed encoder (built-in
or plugin) is covered automatically; it fails until FIXTURES says how to build a working
spec for it offline. Each fixture writes tiny random weights into ``tmp_path``: no network,
no downloads, CPU only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from sjalign.embed import embed_observations
from sjalign.encoders import EncoderOptions, available_encoders, create_encoder
from sjalign.encoders.base import Encoder

from conftest import needs_fashion_mnist

N = 10
SENTENCES = [
    "A grey ankle boot on a white background.", "Two cats sleep on the sofa.", "The train leaves at noon.",
    "Latent spaces can be aligned by a linear map.", "It rained all week in Lyon.", "She bought a red dress.",
    "Sneakers with white soles.", "A pullover knitted from wool.", "The model predicts masked patches.",
    "Bags, shirts, sandals and trousers.",
]


def _jepa(tmp_path: Path) -> str:
    from sjalign.jepa import PretrainConfig, ViTConfig, pretrain

    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    vit = ViTConfig(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=2)
    pretrain(PretrainConfig(epochs=0, vit=vit, pred_dim=32, pred_depth=1, device="cpu"), images, tmp_path / "run")
    return f"jepa:{tmp_path / 'run'}"


def _timm(tmp_path: Path) -> str:
    from safetensors.torch import save_file

    from sjalign.compat import import_timm

    with torch.random.fork_rng():  # seeded weights, global RNG left as it was
        torch.manual_seed(0)
        model = import_timm().create_model("resnet10t", pretrained=False)
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"timm:resnet10t@{path}"


def _hf(tmp_path: Path) -> str:
    from sjalign.compat import import_transformers

    tr = import_transformers()
    config = tr.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tr.ViTModel(config).save_pretrained(tmp_path / "vit")
    tr.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    return f"hf:{tmp_path / 'vit'}"


# spec prefix -> builds a working spec (writing any weights it needs under tmp_path)
FIXTURES: dict[str, Callable[[Path], str]] = {
    "pixels": lambda tmp_path: "pixels",
    "jepa": _jepa,
    "randproj": lambda tmp_path: "randproj:16:0",
    "timm": _timm,
    "hf": _hf,
}


def _inputs(modality: str):
    if modality == "text":
        return list(SENTENCES)
    return torch.rand(N, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # (N, 1, 28, 28) in [0, 1]


@pytest.mark.parametrize("prefix", available_encoders())
def test_encoder_contract(prefix, tmp_path):
    if prefix not in FIXTURES:
        pytest.fail(f"encoder '{prefix}' is registered in 'sjalign.encoders' but has no fixture: add a function "
                    f"building a working spec for it (offline, tiny weights) to FIXTURES in {Path(__file__).name}")
    spec = FIXTURES[prefix](tmp_path)
    options = EncoderOptions(device="cpu")
    enc = create_encoder(spec, options)

    # the protocol
    assert isinstance(enc, Encoder), f"{spec}: missing one of spec, num_features, modality, embed_batch, describe"
    assert enc.spec == spec and enc.modality in ("image", "text")
    x = _inputs(enc.modality)
    first = enc.embed_batch(x[:2])
    assert isinstance(first, torch.Tensor) and first.dtype == torch.float32 and first.ndim == 2 and len(first) == 2
    assert int(enc.num_features) == first.shape[1], f"{spec}: num_features is not the width after the first batch"

    # shape, dtype, finiteness
    z = embed_observations(enc, x, batch_size=N)
    assert z.dtype == np.float32 and z.ndim == 2 and z.shape[0] == N and z.shape[1] >= 1
    assert np.isfinite(z).all()
    assert int(enc.num_features) == z.shape[1]

    # deterministic: the same encoder twice, and a fresh one from the same spec
    np.testing.assert_array_equal(embed_observations(enc, x, batch_size=N), z)
    np.testing.assert_array_equal(embed_observations(create_encoder(spec, options), x, batch_size=N), z)

    # batch-size independent (float32 BLAS may block batches differently: tolerance relative to the scale)
    scale = float(np.abs(z).max())
    np.testing.assert_allclose(embed_observations(enc, x, batch_size=3), z, rtol=1e-5, atol=1e-4 * scale)

    # different inputs, different latents: no two of the N rows coincide
    gaps = np.linalg.norm(z[:, None] - z[None], axis=-1)[np.triu_indices(N, 1)]  # (N(N-1)/2,)
    assert gaps.min() > 1e-4 * scale, f"{spec}: two different inputs gave (nearly) the same latents"

    # describe(): provenance that goes into the latents file as JSON
    desc = enc.describe()
    assert isinstance(desc, dict) and {"layer", "pooling", "config"} <= set(desc)
    json.dumps(desc)

    # --layer all, for encoders that offer it: one (n, d_k) float32 array per layer
    if hasattr(enc, "embed_batch_layers"):
        enc_all = create_encoder(spec, EncoderOptions(layer="all", device="cpu"))
        last, layers = embed_observations(enc_all, x, batch_size=N, all_layers=True)
        assert layers and all(a.dtype == np.float32 and a.ndim == 2 and len(a) == N for a in layers)
        assert all(np.isfinite(a).all() for a in layers)
        np.testing.assert_array_equal(last, layers[-1])


@needs_fashion_mnist
def test_embed_cli_with_plugin(runner, tmp_path):
    from sjalign.cli.app import app
    from sjalign.io import load_latents

    if "randproj" not in available_encoders():
        pytest.fail("plugin sjalign-randproj is not installed: pip install -e plugins/sjalign-randproj")
    out = tmp_path / "out.safetensors"
    res = runner.invoke(app, ["embed", "--encoder", "randproj:8", "--dataset", "fashion-mnist", "--view", "crop:top",
                              "--max-states", "50", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["d"] == 8
    lat = load_latents(out)
    assert lat.latents.shape == (50, 8) and lat.latents.dtype == np.float32
    assert lat.metadata["encoder"] == "randproj:8" and lat.metadata["layer"] == "projection"
    assert json.loads(lat.metadata["encoder_config"]) == {"dim": 8, "seed": 0}

    # a bad spec or a refused option: exit 1, one line, no output file
    for args in (["--encoder", "randproj:0"], ["--encoder", "randproj:8", "--layer", "2"]):
        bad = tmp_path / "bad.safetensors"
        res = runner.invoke(app, ["embed", *args, "--max-states", "5", "-o", str(bad)])
        assert res.exit_code == 1 and "randproj" in res.output and not bad.exists()
        assert len(res.output.strip().splitlines()) == 1, res.output
