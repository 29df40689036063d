"""Seeded image augmentations of the view-invariance objectives (SimCLR, LeJEPA) and I-JEPA's crop.

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


def crop_boxes(shape: tuple[int, ...], size: tuple[int, int], *, generator: torch.Generator,
               scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Draw random-resized-crop boxes, as torchvision's ``RandomResizedCrop`` without its retries.

    A crop covers area s·H·W with s ~ U(scale) and aspect w/h = r, log r ~ U(log ratio)
    (sides clipped to the image), at a uniform position.

    Args:
        shape: leading shape of the boxes, e.g. (B,) or (B, V).
        size: (H, W) of the images in pixels.
        generator: CPU generator; the same state gives the same boxes.
        scale: (min, max) fraction of the image's area.
        ratio: (min, max) aspect ratio w/h.

    Returns:
        (*shape, 4, 2) float32 corners (x, y) in pixels, kornia's order (top-left, top-right,
        bottom-right, bottom-left; inclusive).
    """
    H, W = size

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator)

    area = uniform(*scale)
    r = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    bw = (torch.sqrt(area * r) * W).clamp(max=W)
    bh = (torch.sqrt(area / r) * H).clamp(max=H)
    x0 = torch.rand(shape, generator=generator) * (W - bw)
    y0 = torch.rand(shape, generator=generator) * (H - bh)
    x1, y1 = x0 + bw - 1, y0 + bh - 1
    return torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                        torch.stack([x1, y1], -1), torch.stack([x0, y1], -1)], dim=-2)


def sample_aug_params(batch_size: int, size: tuple[int, int], *, generator: torch.Generator,
                      scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                      contrast: tuple[float, float] = (0.6, 1.4), brightness: float = 0.2,
                      views: int = 2) -> AugParams:
    """Draw random-resized-crop (:func:`crop_boxes`), flip and intensity-jitter parameters for ``views`` views per image.

    Args:
        batch_size: B.
        size: (H, W) of the images in pixels.
        generator: CPU generator; the same state gives the same parameters.
        scale, ratio: the crops' area and aspect ranges; contrast: multiplicative range;
            brightness: additive shifts drawn from ± that much.
        views: views per image.

    Returns:
        :class:`AugParams` with leading shape (B, views).
    """
    shape = (batch_size, views)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator)

    boxes = crop_boxes(shape, size, generator=generator, scale=scale, ratio=ratio)  # (B, V, 4, 2)
    flip = torch.rand(shape, generator=generator) < 0.5
    return AugParams(boxes, flip, uniform(*contrast), uniform(-brightness, brightness))


def resized_crop(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Cut each image's box and resize it back to the image's size (kornia, bilinear).

    Args:
        images: (B, C, H, W).
        boxes: (B, 4, 2) corners from :func:`crop_boxes`.

    Returns:
        (B, C, H, W) in the images' dtype; the crop geometry runs outside autocast.
    """
    from kornia.geometry.transform import crop_and_resize

    with torch.autocast(images.device.type, enabled=False):
        return crop_and_resize(images, boxes.to(images.dtype), tuple(images.shape[-2:]))


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
    from kornia.geometry.transform import hflip

    dt = images.dtype
    out = resized_crop(images, boxes)
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


__all__ = ["AugParams", "augment", "augment_views", "crop_boxes", "resized_crop", "sample_aug_params"]
