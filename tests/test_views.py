"""Views: geometry of crops and azimuth warps, per-state reproducibility, ablations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sjalign.data.views import augmentation_modules, azimuth_homography, parse_view, resolve_view
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


def test_shuffle_permutation_is_fixed_per_model_seed():
    x = _images(2)
    ids = np.arange(2)
    by_seed = parse_view("pixel-shuffle", seed=3)(x, ids)
    torch.testing.assert_close(by_seed, parse_view("pixel-shuffle:3")(x, ids))
    assert not torch.equal(by_seed, parse_view("pixel-shuffle", seed=4)(x, ids))
    torch.testing.assert_close(parse_view("patch-shuffle::7", seed=2)(x, ids), parse_view("patch-shuffle:2:7")(x, ids))
    torch.testing.assert_close(parse_view("pixel-shuffle:3", seed=9)(x, ids), by_seed)  # an explicit seed wins
    assert resolve_view("crop:top+pixel-shuffle", seed=5) == "crop:top+pixel-shuffle:5"
    assert resolve_view("patch-shuffle::7+pixel-shuffle:1", seed=5) == "patch-shuffle:5:7+pixel-shuffle:1"
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = parse_view("pixel-shuffle", seed=1)(rgb, ids)  # one permutation of positions for every channel
    flat_in, flat_out = rgb.flatten(2), out.flatten(2)
    perm = [int((flat_in[0, 0] == v).nonzero()[0]) for v in flat_out[0, 0]]
    torch.testing.assert_close(flat_out, flat_in[:, :, perm])


def test_augmentation_pipelines_follow_the_paper():
    import kornia.augmentation as K

    a, b = augmentation_modules("aug-a", 3, 32, 32), augmentation_modules("aug-b", 3, 32, 32)
    assert [type(m) for m in a] == [K.RandomResizedCrop, K.RandomHorizontalFlip, K.ColorJitter, K.RandomGrayscale]
    assert [type(m) for m in b[4:]] == [K.RandomGaussianBlur, K.RandomSolarize] and len(b) == 6
    jitter = a[2]
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue, jitter.p) == (0.4, 0.4, 0.4, 0.1, 0.8)
    assert (a[1].p, a[3].p, b[4].p, b[5].p) == (0.5, 0.2, 0.5, 0.2)
    assert [type(m) for m in augmentation_modules("aug-a", 1, 28, 28)][-1] is K.ColorJitter  # no grayscale on 1 ch.
    # about 20 % of states come out grayscale (R = G = B) under aug-a
    x = torch.rand(300, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    out = parse_view("aug-a")(x, np.arange(300))
    gray = ((out[:, 0] == out[:, 1]) & (out[:, 1] == out[:, 2])).flatten(1).all(1).float().mean()
    assert 0.12 < gray < 0.28


@pytest.mark.parametrize("spec", ["nope", "crop:middle", "azimuth:abc", "azimuth:95", "crop:top:1.5", "aug-c"])
def test_bad_views(spec):
    with pytest.raises(DataError):
        parse_view(spec)
