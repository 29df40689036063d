"""SimCLR on the same ViT: NT-Xent between two augmented views of every image.

Train step (Chen et al. 2020, ICML)::

    x1, x2 = aug(x; θ1), aug(x; θ2)     # random resized crop, horizontal flip, intensity jitter
    h_v    = mean_p f(x_v)              # (B, D): the representation (what ``sjalign embed`` exports)
    z_v    = head(h_v)                  # (B, P) projection head, discarded after training
    L      = NT-Xent(z1, z2; τ)

The augmentation parameters θ (crop boxes, flips, contrast and brightness factors) are drawn
in :meth:`SimCLR.sample_masks` from the trainer's seeded CPU generator and applied on the
images' device with kornia. Defaults for 28 px grayscale: crop area (0.25, 1) of the image,
aspect (3/4, 4/3), flip with probability 1/2, contrast × U(0.6, 1.4), brightness + U(−0.2, 0.2)
(no colour: one channel). τ = 0.5, SimCLR's choice for small images and batches (CIFAR-10,
App. B.9); τ = 0.1 is its ImageNet setting with batches of thousands.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from sjalign.jepa.objectives.common import MLPHead, Objective
from sjalign.jepa.objectives.losses import nt_xent
from sjalign.jepa.vit import VisionTransformer, ViTConfig


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


class SimCLR(Objective):
    """ViT encoder plus projection head trained with NT-Xent on two augmented views.

    Submodules (checkpoint prefixes): ``encoder.*`` (exported), ``head.*``.

    Args:
        vit: encoder architecture.
        proj_dim: projection head hidden and output width.
        temperature: τ of NT-Xent.
    """

    name = "simclr"
    export_prefix = "encoder"

    def __init__(self, vit: ViTConfig, *, proj_dim: int = 256, temperature: float = 0.5) -> None:
        super().__init__()
        self.temperature, self.img_size = temperature, (vit.img_size, vit.img_size)
        self.encoder = VisionTransformer(vit)
        self.head = MLPHead(vit.embed_dim, proj_dim, proj_dim)
        self.last_terms: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, config) -> "SimCLR":
        """Build from a :class:`sjalign.jepa.config.PretrainConfig`."""
        return cls(config.vit, proj_dim=config.proj_dim, temperature=config.temperature)

    def sample_masks(self, batch_size: int, generator: torch.Generator) -> AugParams:
        """Augmentation parameters of two views per image, drawn on the CPU."""
        return sample_aug_params(batch_size, self.img_size, generator=generator)

    def forward(self, images: torch.Tensor, masks: AugParams) -> torch.Tensor:
        """SimCLR loss of one batch.

        Args:
            images: (B, C, H, W) images in [0, 1].
            masks: :class:`AugParams` on the images' device.

        Returns:
            () scalar NT-Xent loss.
        """
        B = images.shape[0]
        with torch.autocast(images.device.type, enabled=False):  # crop geometry in the images' precision
            views = torch.cat([augment(images, masks.boxes[:, v], masks.flip[:, v], masks.contrast[:, v],
                                       masks.brightness[:, v]) for v in range(2)])  # (2B, C, H, W)
        z = self.head(self.encoder(views).mean(1))  # (2B, P)
        loss = nt_xent(z[:B], z[B:], self.temperature)
        self.last_terms = {"nt_xent": loss.detach()}
        return loss
