"""Rectified LpJEPA on a ViT: no-EMA latent prediction + λ·RDMReg to a rectified generalised Gaussian.

Train step (Kuang et al. 2026, arXiv:2602.01456, here with I-JEPA's masked prediction as the
predictive term)::

    t   = f(x)                                   # full image, gradients on (no EMA, no stop-grad)
    ŝ   = g(f(x[context]), positions)            # I-JEPA multi-block masks
    r   = h(mean_p t)                            # projector ending in a ReLU, (B, P)
    L   = mean (ŝ − t[targets])²  +  λ · SW2²(r, y),   y ~ RGG_p(μ=0, σ: unit variance), (B, P)

As in the paper the projector ends with a ReLU (the target is non-negative with exact zeros),
and RDMReg acts on its output; ``sjalign embed`` uses the encoder's pooled tokens before the
projector. The target samples y and the S directions are drawn every step in
:meth:`LpJEPA.sample_masks` from the trainer's seeded CPU generator.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sjalign.jepa.masks import MaskConfig, sample_masks
from sjalign.jepa.objectives.common import MLPHead, Objective, batch_shared, self_prediction
from sjalign.jepa.objectives.losses import random_directions, rdmreg, sample_rgg
from sjalign.jepa.vit import Predictor, VisionTransformer, ViTConfig


class RDMMasks(NamedTuple):
    """Masks, directions and RGG target samples of one batch (all batch-first, CPU).

    Attributes:
        context: (B, Kc) int64 context patch indices.
        targets: (B, M, Kt) int64 target-block patch indices.
        directions: (B, P, S) float32: one (P, S) set of unit directions, expanded over the batch.
        rgg: (B, P) float32 samples of RGG_p, one per image.
    """

    context: torch.Tensor
    targets: torch.Tensor
    directions: torch.Tensor
    rgg: torch.Tensor


class LpJEPA(Objective):
    """ViT encoder, predictor and rectified projector trained with prediction + λ·RDMReg.

    Submodules (checkpoint prefixes): ``encoder.*`` (exported), ``predictor.*``, ``projector.*``.

    Args:
        vit: encoder architecture.
        pred_dim: predictor width.
        pred_depth: predictor blocks.
        proj_dim: projector hidden and output width P.
        reg_weight: λ (10: the ratio of the paper's λ_reg = 250 to λ_inv = 25).
        num_slices: projection directions S per step.
        rgg_p: shape p of the target (1 = rectified Laplace, the paper's default).
        masks: multi-block mask hyper-parameters.
    """

    name = "lpjepa"
    export_prefix = "encoder"

    def __init__(self, vit: ViTConfig, *, pred_dim: int = 64, pred_depth: int = 2, proj_dim: int = 256,
                 reg_weight: float = 10.0, num_slices: int = 256, rgg_p: float = 1.0,
                 masks: MaskConfig = MaskConfig()) -> None:
        super().__init__()
        self.reg_weight, self.num_slices, self.rgg_p, self.mask_config = reg_weight, num_slices, rgg_p, masks
        self.grid = (vit.grid_size, vit.grid_size)
        self.encoder = VisionTransformer(vit)
        self.predictor = Predictor(vit.embed_dim, pred_dim, pred_depth, vit.num_heads, vit.grid_size, vit.mlp_ratio)
        self.projector = MLPHead(vit.embed_dim, proj_dim, proj_dim, rectify=True)
        self.proj_dim = proj_dim
        self.last_terms: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, config) -> "LpJEPA":
        """Build from a :class:`sjalign.jepa.config.PretrainConfig`."""
        return cls(config.vit, pred_dim=config.pred_dim, pred_depth=config.pred_depth, proj_dim=config.proj_dim,
                   reg_weight=config.reg_weight, num_slices=config.num_slices, rgg_p=config.rgg_p)

    def sample_masks(self, batch_size: int, generator: torch.Generator) -> RDMMasks:
        """Multi-block masks, S unit directions in R^P and B RGG samples, drawn on the CPU."""
        m = sample_masks(batch_size, self.grid, self.mask_config, generator=generator)
        c = random_directions(self.proj_dim, self.num_slices, generator=generator)  # (P, S)
        y = sample_rgg(batch_size, self.proj_dim, self.rgg_p, generator=generator)  # (B, P)
        return RDMMasks(m.context, m.targets, batch_shared(c, batch_size), y)

    def forward(self, images: torch.Tensor, masks: RDMMasks) -> torch.Tensor:
        """Rectified LpJEPA loss of one batch.

        Args:
            images: (B, C, H, W) images.
            masks: :class:`RDMMasks` on the images' device.

        Returns:
            () scalar loss; ``self.last_terms`` keeps the detached ``pred`` and ``rdmreg`` terms.
        """
        pred, pooled = self_prediction(self.encoder, self.predictor, images, masks.context, masks.targets)
        r = self.projector(pooled)  # (B, P), non-negative
        reg = rdmreg(r, masks.rgg, masks.directions[0])
        self.last_terms = {"pred": pred.detach(), "rdmreg": reg.detach()}
        return pred + self.reg_weight * reg
