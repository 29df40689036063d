"""Rectified LpJEPA on a ViT: view invariance + λ·RDMReg to a rectified generalised Gaussian.

Train step (Kuang et al. 2026, arXiv:2602.01456, Eq. 22 and the authors' MINIMAL.md)::

    x_v = aug(x; θ_v),  v = 1..V                 # V = 2 augmented views, as the reference
    h_v = mean_p f(x_v)                          # (B, D) pooled tokens: what ``sjalign embed`` exports
    r_v = proj(h_v)                              # (B, P) 3-layer projector ending in a ReLU
    inv = mean over view pairs of mean (r_v − r_w)²          # F.mse_loss(r_1, r_2) for V = 2
    L   = inv + λ · mean_v SW2²(r_v, y_v),   y_v ~ RGG_p(μ = 0, σ: unit variance), (B, P)

The reference weighs the two terms 25 and 250, so λ = 10 with the invariance at weight 1.
As in the paper the projector ends with a ReLU (the target is non-negative with exact zeros)
and RDMReg acts on its output; ``sjalign embed`` uses the encoder's pooled tokens before the
projector. The augmentations, the S directions and the target samples are drawn every step in
:meth:`LpJEPA.sample_masks` from the trainer's seeded CPU generator.

Departures from the reference, for 28 px grayscale images on two CPU cores: the ViT instead of
a ResNet-18, AdamW instead of LARS, SimCLR-style crops of 25–100 % of the image with flip and
intensity jitter (one channel: no colour jitter, grayscale or solarisation), S = 256 directions
(the reference: 8192, "512 also works"), a projector of width 512 as the reference's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sjalign.jepa.objectives.augment import augment_views, sample_aug_params
from sjalign.jepa.objectives.common import Objective, ObjectiveOption, at_least, batch_shared
from sjalign.jepa.objectives.lejepa import projector, view_invariance
from sjalign.jepa.objectives.losses import random_directions, rdmreg, sample_rgg
from sjalign.jepa.vit import VisionTransformer, ViTConfig


class ViewsSlicesTargets(NamedTuple):
    """Augmentations of V views, the step's directions and RGG target samples (all batch-first, CPU).

    Attributes:
        boxes: (B, V, 4, 2) crop corners.  flip: (B, V) bool.  contrast, brightness: (B, V).
        directions: (B, P, S) float32: one (P, S) set of unit directions, expanded over the batch.
        rgg: (B, V, P) float32 samples of RGG_p, one per image and view.
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    contrast: torch.Tensor
    brightness: torch.Tensor
    directions: torch.Tensor
    rgg: torch.Tensor


def pairwise_invariance(z: torch.Tensor) -> torch.Tensor:
    """Mean over ordered view pairs v ≠ w of the per-element MSE (z_v − z_w)² (F.mse_loss for V = 2).

    Args:
        z: (V, B, P) projections of V >= 2 views of B images.

    Returns:
        () float32 loss.

    Raises:
        ValueError: ``z`` not (V, B, P) with V >= 2 (from :func:`~sjalign.jepa.objectives.lejepa.view_invariance`).
    """
    centre = view_invariance(z)  # checks the shape first
    V = z.shape[0]
    # Σ_{v≠w} mean (z_v − z_w)² = 2V · Σ_v mean (z_v − z̄)², over V(V−1) ordered pairs
    return 2.0 * V / (V - 1) * centre


class LpJEPA(Objective):
    """ViT encoder and rectified projector trained with view invariance + λ·RDMReg.

    Submodules (checkpoint prefixes): ``encoder.*`` (exported), ``projector.*``.

    Args:
        vit: encoder architecture.
        proj_dim: projector hidden and output width P (512, as the reference).
        reg_weight: λ (10: the ratio of the paper's λ_reg = 250 to λ_inv = 25).
        num_slices: projection directions S per step.
        rgg_p: shape p of the target (1 = rectified Laplace, the paper's default).
        num_views: V augmented views per image (2, as the reference).
    """

    name = "lpjepa"
    export_prefix = "encoder"
    summary = "view invariance + λ·RDMReg (sliced W2² to rectified generalised Gaussian samples) on ReLU projections"
    recipe = {"lr": 1e-3, "epochs": 15}  # ~19 min for 8,572 images on two CPU cores (README: Does it learn?)
    options = {
        "reg_weight": ObjectiveOption(10.0, "weight λ of RDMReg; L = inv + λ·RDMReg", at_least(0)),
        "num_slices": ObjectiveOption(256, "random 1-D projections of RDMReg per step", at_least(1, integer=True)),
        "rgg_p": ObjectiveOption(1.0, "shape p of the rectified generalised Gaussian target (1 = rectified Laplace)",
                                 at_least(0.1)),  # Γ(3/p) overflows a float below p ≈ 0.018
        "num_views": ObjectiveOption(2, "augmented views per image", at_least(2, integer=True)),
        "proj_dim": ObjectiveOption(512, "projector hidden and output width", at_least(1, integer=True),
                                    architecture=True),
    }

    def __init__(self, vit: ViTConfig, *, proj_dim: int, reg_weight: float, num_slices: int, rgg_p: float,
                 num_views: int) -> None:
        super().__init__()
        self.reg_weight, self.num_slices, self.rgg_p, self.num_views = reg_weight, num_slices, rgg_p, num_views
        self.img_size, self.proj_dim = (vit.img_size, vit.img_size), proj_dim
        self.encoder = VisionTransformer(vit)
        self.projector = projector(vit.embed_dim, proj_dim, proj_dim, rectify=True)

    @classmethod
    def from_config(cls, config) -> "LpJEPA":
        """Build from a :class:`sjalign.jepa.config.PretrainConfig`."""
        return cls(config.vit, proj_dim=config.proj_dim, reg_weight=config.reg_weight, num_slices=config.num_slices,
                   rgg_p=config.rgg_p, num_views=config.num_views)

    def sample_masks(self, batch_size: int, generator: torch.Generator) -> ViewsSlicesTargets:
        """V views' augmentations, S unit directions in R^P and B·V RGG samples, drawn on the CPU."""
        aug = sample_aug_params(batch_size, self.img_size, generator=generator, views=self.num_views)
        c = random_directions(self.proj_dim, self.num_slices, generator=generator)  # (P, S)
        y = sample_rgg(batch_size * self.num_views, self.proj_dim, self.rgg_p, generator=generator)  # (B*V, P)
        return ViewsSlicesTargets(*aug, batch_shared(c, batch_size), y.reshape(batch_size, self.num_views, -1))

    def forward(self, images: torch.Tensor, masks: ViewsSlicesTargets) -> torch.Tensor:
        """Rectified LpJEPA loss of one batch.

        Args:
            images: (B, C, H, W) images in [0, 1].
            masks: :class:`ViewsSlicesTargets` on the images' device.

        Returns:
            () scalar loss; ``self.last_terms`` keeps the detached ``pred`` (invariance) and ``rdmreg`` terms.
        """
        B, V = images.shape[0], self.num_views
        r = self.projector(self.encoder(augment_views(images, masks)).mean(1)).reshape(V, B, -1)  # (V, B, P) >= 0
        pred = pairwise_invariance(r)
        reg = torch.stack([rdmreg(r[v], masks.rgg[:, v], masks.directions[0]) for v in range(V)]).mean()
        self.last_terms = {"pred": pred.detach(), "rdmreg": reg.detach()}
        return pred + self.reg_weight * reg
