"""LeJEPA on a ViT: no-EMA latent prediction + λ·SIGReg on the pooled embeddings.

Train step (Balestriero & LeCun 2025, arXiv:2511.08544, here with I-JEPA's masked
prediction as the predictive term)::

    t   = f(x)                                  # full image, gradients on (no EMA, no stop-grad)
    ŝ   = g(f(x[context]), positions)           # I-JEPA multi-block masks
    L   = mean (ŝ − t[targets])²  +  λ · SIGReg(mean_p t, C)

SIGReg acts on the mean-pooled full-image embeddings (B, D), one per image — the vectors
``sjalign embed`` exports — so they are pushed towards N(0, I_D). The S directions C are
re-drawn every step in :meth:`LeJEPA.sample_masks` from the trainer's seeded CPU generator,
hence identical on every rank and on ``--resume``. Under DDP each rank computes the statistic
on its own batch (LeJEPA all-reduces the empirical characteristic function instead).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sjalign.jepa.masks import MaskConfig, sample_masks
from sjalign.jepa.objectives.common import Objective, batch_shared, self_prediction
from sjalign.jepa.objectives.losses import random_directions, sigreg
from sjalign.jepa.vit import Predictor, VisionTransformer, ViTConfig


class SlicedMasks(NamedTuple):
    """Masks of one batch plus the step's projection directions (all batch-first, CPU).

    Attributes:
        context: (B, Kc) int64 context patch indices.
        targets: (B, M, Kt) int64 target-block patch indices.
        directions: (B, d, S) float32: one (d, S) set of unit directions, expanded over the batch.
    """

    context: torch.Tensor
    targets: torch.Tensor
    directions: torch.Tensor


class LeJEPA(Objective):
    """ViT encoder and narrow predictor trained with latent prediction + λ·SIGReg.

    Submodules (checkpoint prefixes): ``encoder.*`` (the exported encoder), ``predictor.*``.

    Args:
        vit: encoder architecture.
        pred_dim: predictor width.
        pred_depth: predictor blocks.
        reg_weight: λ (LeJEPA: 0.05).
        num_slices: projection directions S per step.
        masks: multi-block mask hyper-parameters.
    """

    name = "lejepa"
    export_prefix = "encoder"

    def __init__(self, vit: ViTConfig, *, pred_dim: int = 64, pred_depth: int = 2, reg_weight: float = 0.05,
                 num_slices: int = 256, masks: MaskConfig = MaskConfig()) -> None:
        super().__init__()
        self.reg_weight, self.num_slices, self.mask_config = reg_weight, num_slices, masks
        self.grid = (vit.grid_size, vit.grid_size)
        self.encoder = VisionTransformer(vit)
        self.predictor = Predictor(vit.embed_dim, pred_dim, pred_depth, vit.num_heads, vit.grid_size, vit.mlp_ratio)
        self.last_terms: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, config) -> "LeJEPA":
        """Build from a :class:`sjalign.jepa.config.PretrainConfig`."""
        return cls(config.vit, pred_dim=config.pred_dim, pred_depth=config.pred_depth,
                   reg_weight=config.reg_weight, num_slices=config.num_slices)

    def sample_masks(self, batch_size: int, generator: torch.Generator) -> SlicedMasks:
        """Multi-block masks and S fresh unit directions in R^D, drawn on the CPU."""
        m = sample_masks(batch_size, self.grid, self.mask_config, generator=generator)
        c = random_directions(self.encoder.embed_dim, self.num_slices, generator=generator)  # (D, S)
        return SlicedMasks(m.context, m.targets, batch_shared(c, batch_size))

    def forward(self, images: torch.Tensor, masks: SlicedMasks) -> torch.Tensor:
        """LeJEPA loss of one batch.

        Args:
            images: (B, C, H, W) images.
            masks: :class:`SlicedMasks` on the images' device.

        Returns:
            () scalar loss; ``self.last_terms`` keeps the detached ``pred`` and ``sigreg`` terms.
        """
        pred, pooled = self_prediction(self.encoder, self.predictor, images, masks.context, masks.targets)
        reg = sigreg(pooled, masks.directions[0])  # pooled: (B, D)
        self.last_terms = {"pred": pred.detach(), "sigreg": reg.detach()}
        return pred + self.reg_weight * reg
