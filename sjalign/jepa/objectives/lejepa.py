"""LeJEPA on a ViT, as the authors' reference: V augmented views, invariance to their mean, λ·SIGReg.

Train step (Balestriero & LeCun 2025, arXiv:2511.08544, Algorithm 1 and the authors' MINIMAL.md)::

    x_v = aug(x; θ_v),  v = 1..V                 # random resized crop, flip, intensity jitter
    h_v = mean_p f(x_v)                          # (B, D) pooled tokens: what ``sjalign embed`` exports
    z_v = proj(h_v)                              # (B, P) MLP projector with BatchNorm
    pred = mean_v mean (z̄ − z_v)²,  z̄ = mean_v z_v      # every view predicts the views' centre
    L   = (1 − λ)·pred + λ·mean_v SIGReg(z_v)

No EMA, no stop-gradient, no predictor network. SIGReg (the Epps–Pulley statistic of S random
1-D projections, scaled by the batch size as in the reference) acts on each view's projector
outputs; the S directions are re-drawn every step in :meth:`LeJEPA.sample_masks` from the
trainer's seeded CPU generator, with the augmentation parameters, so runs and ``--resume``
are reproducible and DDP ranks agree. Under DDP each rank computes the statistic on its own
slice (the reference all-reduces the empirical characteristic function instead).

Departures from the reference, for 28 px grayscale images on two CPU cores: V = 2 views of the
same size (no 2 global + 6 local multi-crop; at the same cost, 2 views × 14 epochs learned at
least as well as 4 views × 8 epochs: docs/results.md), SimCLR-style crops of 25–100 % of the image (no
colour jitter, grayscale, blur or solarisation on one channel), a projector of width 512
(the reference: 2048) with output P = 16, as in the minimal recipe's ``proj_dim=16``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from sjalign.jepa.objectives.augment import augment_views, sample_aug_params
from sjalign.jepa.objectives.common import Objective, ObjectiveOption, at_least, batch_shared
from sjalign.jepa.objectives.losses import random_directions, sigreg
from sjalign.jepa.vit import VisionTransformer, ViTConfig


class ViewsAndSlices(NamedTuple):
    """Augmentation parameters of V views per image plus the step's SIGReg directions (batch-first, CPU).

    Attributes:
        boxes: (B, V, 4, 2) crop corners.  flip: (B, V) bool.  contrast, brightness: (B, V).
        directions: (B, P, S) float32: one (P, S) set of unit directions, expanded over the batch.
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    contrast: torch.Tensor
    brightness: torch.Tensor
    directions: torch.Tensor


def projector(in_dim: int, hidden: int, out_dim: int, *, rectify: bool = False) -> nn.Sequential:
    """The 3-layer projector of LeJEPA and Rectified LpJEPA: Linear → BN → ReLU → Linear → BN → ReLU → Linear [→ ReLU].

    ``rectify`` ends it with a ReLU (Rectified LpJEPA: its target is non-negative with exact zeros).
    Shape: (B, in_dim) -> (B, out_dim), B >= 2 in training mode (batch statistics).
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                               nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                               nn.Linear(hidden, out_dim)]
    return nn.Sequential(*layers, *([nn.ReLU()] if rectify else []))


def view_invariance(z: torch.Tensor) -> torch.Tensor:
    """LeJEPA's prediction term: mean over views, rows and dims of (z̄ − z_v)², z̄ the views' mean.

    Args:
        z: (V, B, P) projections of V views of B images.

    Returns:
        () float32 loss; 0 when every view of an image has the same projection.
    """
    if z.ndim != 3 or z.shape[0] < 2:
        raise ValueError(f"view_invariance expects (V, B, P) with V >= 2, got {tuple(z.shape)}")
    z = z.float()
    return (z.mean(0, keepdim=True) - z).square().mean()


class LeJEPA(Objective):
    """ViT encoder and projector trained with LeJEPA's view prediction + λ·SIGReg.

    Submodules (checkpoint prefixes): ``encoder.*`` (the exported encoder), ``projector.*``.

    Args:
        vit: encoder architecture.
        reg_weight: λ (the minimal recipe: 0.02; the paper's default 0.05).
        num_slices: projection directions S per step (256).
        num_views: V augmented views per image (2).
        proj_dim: projector output width P (16).
        proj_hidden: projector hidden width (512).
    """

    name = "lejepa"
    export_prefix = "encoder"
    summary = "V augmented views predict their mean + λ·SIGReg on the projections (no EMA, no stop-gradient)"
    recipe = {"lr": 1e-3, "epochs": 14}  # with 2 views: ~18 min for 8,572 images on two CPU cores (README: Does it learn?)
    options = {
        "reg_weight": ObjectiveOption(0.02, "weight λ of SIGReg; L = (1 − λ)·pred + λ·SIGReg", at_least(0)),
        "num_slices": ObjectiveOption(256, "random 1-D projections of SIGReg per step", at_least(1, integer=True)),
        "num_views": ObjectiveOption(2, "augmented views per image", at_least(2, integer=True)),
        "proj_dim": ObjectiveOption(16, "projector output width (SIGReg acts on it)", at_least(1, integer=True),
                                    architecture=True),
    }

    def __init__(self, vit: ViTConfig, *, reg_weight: float, num_slices: int, num_views: int, proj_dim: int,
                 proj_hidden: int = 512) -> None:
        super().__init__()
        self.reg_weight, self.num_slices, self.num_views = reg_weight, num_slices, num_views
        self.img_size = (vit.img_size, vit.img_size)
        self.encoder = VisionTransformer(vit)
        self.projector = projector(vit.embed_dim, proj_hidden, proj_dim)
        self.proj_dim = proj_dim

    @classmethod
    def from_config(cls, config) -> "LeJEPA":
        """Build from a :class:`sjalign.jepa.config.PretrainConfig`."""
        return cls(config.vit, reg_weight=config.reg_weight, num_slices=config.num_slices,
                   num_views=config.num_views, proj_dim=config.proj_dim)

    def sample_masks(self, batch_size: int, generator: torch.Generator) -> ViewsAndSlices:
        """V views' augmentation parameters per image and S fresh unit directions in R^P, drawn on the CPU."""
        aug = sample_aug_params(batch_size, self.img_size, generator=generator, views=self.num_views)
        c = random_directions(self.proj_dim, self.num_slices, generator=generator)  # (P, S)
        return ViewsAndSlices(*aug, batch_shared(c, batch_size))

    def forward(self, images: torch.Tensor, masks: ViewsAndSlices) -> torch.Tensor:
        """LeJEPA loss of one batch.

        Args:
            images: (B, C, H, W) images in [0, 1].
            masks: :class:`ViewsAndSlices` on the images' device.

        Returns:
            () scalar loss; ``self.last_terms`` keeps the detached ``pred`` and ``sigreg`` terms.
        """
        B, V = images.shape[0], self.num_views
        h = self.encoder(augment_views(images, masks)).mean(1)  # (V*B, D)
        z = self.projector(h).reshape(V, B, -1)  # (V, B, P)
        pred = view_invariance(z)
        reg = torch.stack([sigreg(z[v], masks.directions[0]) for v in range(V)]).mean()
        self.last_terms = {"pred": pred.detach(), "sigreg": reg.detach()}
        return (1.0 - self.reg_weight) * pred + self.reg_weight * reg
