"""Seeded image augmentations of the view-invariance objectives (SimCLR, LeJEPA).

The parameters of every view (crop box, flip, contrast, brightness) are drawn on the CPU from
the trainer's seeded generator (:func:`sample_aug_params`), batch-first so they can be sliced
per rank, and applied on the images' device with kornia (:func:`augment`). Defaults for 28 px
grayscale: crop area (0.25, 1) of the image, aspect (3/4, 4/3), flip with probability 1/2,
contrast × U(0.6, 1.4), brightness + U(−0.2, 0.2) (no colour: one channel).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class AugParams(NamedTuple):
    """Augmentation parameters of two views per image (batch-first, CPU).

    Attributes:
        boxes: (B, 2, 4, 2) float32 crop corners (x, y) in pixels, kornia's order (top-left,
            top-right, bottom-right, bottom-left; inclusive).
        flip: (B, 2) bool horizontal flips.
        contrast: (B, 2) float32 multiplicative contrast factors.
        brightness: (B, 2) float32 additive brightness shifts.
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    contrast: torch.Tensor
    brightness: torch.Tensor


def sample_aug_params(batch_size: int, size: tuple[int, int], *, generator: torch.Generator,
                      scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                      contrast: tuple[float, float] = (0.6, 1.4), brightness: float = 0.2,
                      views: int = 2) -> AugParams:
    """Draw random-resized-crop, flip and intensity-jitter parameters for ``views`` views per image.

    A crop covers area s·H·W with s ~ U(scale) and aspect w/h = r, log r ~ U(log ratio)
    (sides clipped to the image), at a uniform position.

    Args:
        batch_size: B.
        size: (H, W) of the images in pixels.
        generator: CPU generator; the same state gives the same parameters.
        scale, ratio, contrast, brightness: ranges as above (brightness ± that much).
        views: views per image.

    Returns:
        :class:`AugParams` with leading shape (B, views).
    """
    H, W = size
    shape = (batch_size, views)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator)

    area = uniform(*scale)
    r = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    bw = (torch.sqrt(area * r) * W).clamp(max=W)  # (B, V)
    bh = (torch.sqrt(area / r) * H).clamp(max=H)
    x0 = torch.rand(shape, generator=generator) * (W - bw)
    y0 = torch.rand(shape, generator=generator) * (H - bh)
    x1, y1 = x0 + bw - 1, y0 + bh - 1
    boxes = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                         torch.stack([x1, y1], -1), torch.stack([x0, y1], -1)], dim=-2)  # (B, V, 4, 2)
    flip = torch.rand(shape, generator=generator) < 0.5
    return AugParams(boxes, flip, uniform(*contrast), uniform(-brightness, brightness))


def augment(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, contrast: torch.Tensor,
            brightness: torch.Tensor) -> torch.Tensor:
    """Apply one view's crop-resize, flip, contrast and brightness (kornia), clamped to [0, 1].

    Args:
        images: (B, C, H, W) in [0, 1].
        boxes: (B, 4, 2) crop corners; flip: (B,) bool; contrast, brightness: (B,).

    Returns:
        (B, C, H, W) augmented images.
    """
    from kornia.enhance import adjust_brightness, adjust_contrast
    from kornia.geometry.transform import crop_and_resize, hflip

    H, W = images.shape[-2:]
    dt = images.dtype
    out = crop_and_resize(images, boxes.to(dt), (H, W))
    out = torch.where(flip[:, None, None, None], hflip(out), out)
    out = adjust_contrast(out, contrast.to(dt))
    out = adjust_brightness(out, brightness.to(dt))
    return out.clamp(0.0, 1.0)


def augment_views(images: torch.Tensor, params: AugParams) -> torch.Tensor:
    """All V views of a batch, view-major: rows v·B .. (v+1)·B − 1 are view v of the B images.

    Args:
        images: (B, C, H, W) in [0, 1].
        params: :class:`AugParams` with leading shape (B, V), on the images' device (extra
            fields of a NamedTuple that extends it are ignored).

    Returns:
        (V·B, C, H, W) augmented images.
    """
    with torch.autocast(images.device.type, enabled=False):  # crop geometry in the images' precision
        return torch.cat([augment(images, params.boxes[:, v], params.flip[:, v], params.contrast[:, v],
                                  params.brightness[:, v]) for v in range(params.flip.shape[1])])


__all__ = ["AugParams", "augment", "augment_views", "sample_aug_params"]
