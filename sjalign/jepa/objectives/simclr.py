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

import torch

from sjalign.jepa.objectives.augment import AugParams, augment_views, sample_aug_params
from sjalign.jepa.objectives.common import MLPHead, Objective, ObjectiveOption, at_least
from sjalign.jepa.objectives.losses import nt_xent
from sjalign.jepa.vit import VisionTransformer, ViTConfig


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
    summary = "NT-Xent between two augmented views (crop, flip, contrast/brightness)"
    recipe = {"lr": 1e-3, "epochs": 6}  # ~8 min for 8,572 images on two CPU cores (README: Does it learn?)
    options = {
        "temperature": ObjectiveOption(0.5, "τ of NT-Xent", at_least(0, strict=True)),
        "proj_dim": ObjectiveOption(256, "projection head width", at_least(1, integer=True), architecture=True),
    }

    def __init__(self, vit: ViTConfig, *, proj_dim: int, temperature: float) -> None:
        super().__init__()
        self.temperature, self.img_size = temperature, (vit.img_size, vit.img_size)
        self.encoder = VisionTransformer(vit)
        self.head = MLPHead(vit.embed_dim, proj_dim, proj_dim)

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
        views = augment_views(images, masks)  # (2B, C, H, W), view-major
        z = self.head(self.encoder(views).mean(1))  # (2B, P)
        loss = nt_xent(z[:B], z[B:], self.temperature)
        self.last_terms = {"nt_xent": loss.detach()}
        return loss
