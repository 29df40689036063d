"""The plugin's own checks: spec parsing, refused options, the JL property, per-size caching."""

from __future__ import annotations

import pytest
import torch

from sjalign.encoders import EncoderOptions, create_encoder
from sjalign.errors import SjalignError


@pytest.mark.parametrize("spec", ["randproj", "randproj:", "randproj:0", "randproj:-3", "randproj:x",
                                  "randproj:8:-1", "randproj:8:s", "randproj:8:1:2", "randproj:2.5"])
def test_bad_spec_one_line(spec):
    with pytest.raises(SjalignError) as info:
        create_encoder(spec)
    assert "\n" not in str(info.value) and "randproj" in str(info.value)


@pytest.mark.parametrize("options", [EncoderOptions(layer=2), EncoderOptions(layer="all"),
                                     EncoderOptions(pooling="cls"), EncoderOptions(pooling="tokens")])
def test_refused_options(options):
    with pytest.raises(SjalignError, match="randproj"):
        create_encoder("randproj:8", options)


def test_projection_matches_formula_and_preserves_distances():
    enc = create_encoder("randproj:2048:5", EncoderOptions(device="cpu"))
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    z = enc.embed_batch(x)
    r = torch.randn(64, 2048, generator=torch.Generator().manual_seed(5)) / 2048 ** 0.5
    torch.testing.assert_close(z, x.flatten(1) @ r)
    ratio = torch.pdist(z) / torch.pdist(x.flatten(1))
    assert ((ratio - 1).abs() < 0.1).all()
    assert enc.describe() == {"layer": "projection", "pooling": "none", "config": {"dim": 2048, "seed": 5}}


def test_one_matrix_per_image_size_and_seed_matters():
    enc = create_encoder("randproj:4", EncoderOptions(device="cpu"))
    assert enc.embed_batch(torch.rand(2, 1, 28, 28)).shape == (2, 4)
    assert enc.embed_batch(torch.rand(2, 3, 14, 14)).shape == (2, 4)
    assert sorted(enc._matrices) == [(1, 28, 28), (3, 14, 14)]
    x = torch.rand(3, 1, 5, 5)
    assert not torch.allclose(enc.embed_batch(x), create_encoder("randproj:4:1").embed_batch(x))


def test_wrong_input_is_a_one_line_error():
    enc = create_encoder("randproj:4")
    with pytest.raises(SjalignError, match=r"\(B, C, H, W\)"):
        enc.embed_batch(torch.rand(2, 28, 28))
    with pytest.raises(SjalignError, match="list"):
        enc.embed_batch(["a sentence"])
