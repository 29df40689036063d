"""Views: geometry of crops and azimuth warps, per-state reproducibility, ablations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sjalign.data.views import azimuth_homography, parse_view
from sjalign.errors import DataError


def _images(n=6, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_crop_top_and_bottom_overlap_in_four_rows():
    x = torch.ones(2, 1, 28, 28)
    ids = np.arange(2)
    top, bottom = parse_view("crop:top")(x, ids), parse_view("crop:bottom")(x, ids)
    assert top[0, 0, :16].min() == 1 and top[0, 0, 16:].max() == 0
    assert bottom[0, 0, 12:].min() == 1 and bottom[0, 0, :12].max() == 0
    assert int(((top > 0) & (bottom > 0)).sum()) == 2 * 4 * 28


def test_azimuth_zero_is_identity_and_warp_is_perspective():
    x = _images()
    np.testing.assert_allclose(parse_view("azimuth:0")(x, np.arange(6)), x, atol=1e-5)
    h = azimuth_homography(40.0, 28, 28).numpy()
    centre = np.array([13.5, 13.5, 1.0])
    mapped = h @ centre
    np.testing.assert_allclose(mapped[:2] / mapped[2], [13.5, 13.5])  # the axis stays put
    # points left and right of the axis are foreshortened unequally (perspective, not affine)
    left, right = h @ np.array([0.0, 13.5, 1]), h @ np.array([27.0, 13.5, 1])
    dl = 13.5 - left[0] / left[2]
    dr = right[0] / right[2] - 13.5
    assert dl < 13.5 and dr < 13.5 and abs(dl - dr) > 0.5


def test_augmentations_are_seeded_per_state_not_per_batch():
    x = _images(8)
    ids = np.arange(100, 108)
    for name in ("aug-a", "aug-b"):
        view = parse_view(name)
        full = view(x, ids)
        halves = torch.cat([view(x[:3], ids[:3]), view(x[3:], ids[3:])])
        torch.testing.assert_close(full, halves)
        assert not torch.allclose(full, x)
        assert full.min() >= 0 and full.max() <= 1
    assert not torch.allclose(parse_view("aug-a")(x, ids), parse_view("aug-b")(x, ids))


def test_shuffles_are_fixed_permutations():
    x = _images(3)
    ids = np.arange(3)
    for spec in ("pixel-shuffle", "patch-shuffle:0:4", "crop:top+pixel-shuffle:3"):
        out = parse_view(spec)(x, ids)
        assert out.shape == x.shape
    px = parse_view("pixel-shuffle:1")(x, ids)
    torch.testing.assert_close(torch.sort(px.flatten(1)).values, torch.sort(x.flatten(1)).values)
    torch.testing.assert_close(parse_view("pixel-shuffle:1")(x, ids), px)  # same seed, same permutation
    # patch-shuffle keeps each 4x4 patch intact
    patches = lambda t: t.reshape(3, 1, 7, 4, 7, 4).permute(0, 2, 4, 1, 3, 5).reshape(3, 49, 16)  # noqa: E731
    ps = patches(parse_view("patch-shuffle:2")(x, ids))
    orig = patches(x)
    for p in range(49):
        assert any(torch.equal(ps[0, p], orig[0, q]) for q in range(49))


@pytest.mark.parametrize("spec", ["nope", "crop:middle", "azimuth:abc", "azimuth:95", "crop:top:1.5", "aug-c"])
def test_bad_views(spec):
    with pytest.raises(DataError):
        parse_view(spec)
