"""C-JEPA: I-JEPA + β_vicreg·VICReg on pooled, projected context embeddings.

Train step (Mo & Tong 2024, NeurIPS, "Connecting Joint-Embedding Predictive Architecture
with Contrastive Self-supervised Learning", Eqs. 13-14)::

    x        = resized_crop(image, box)                      # I-JEPA's RandomResizedCrop(scale=(0.3, 1))
    s        = LN(f_target(x))[targets]                      # EMA target, stop-gradient
    z_v      = f(x[context_v]),  v = 1, 2                    # two context blocks per image
    L_pred   = mean_v mean smooth-L1(g(z_v) − sg(s))         # I-JEPA, per element
    h_v      = head(mean_p z_v)                              # (B, P) projected pooled contexts
    L        = L_pred + β_vicreg·(β_sim·inv(h_1, h_2) + β_std·var + β_cov·cov)

C-JEPA computes VICReg on the context embeddings of several mask blocks of one image, the
invariance term between different blocks. Our I-JEPA draws one context block per image, so
the second view is a **second context block**, drawn like the first (its own size and
place, the same targets removed): both predict the same targets (I-JEPA with two encoder
masks) and VICReg ties their pooled embeddings together (invariance) while keeping every
projected dimension spread (variance) and decorrelated (covariance).

The prediction term is I-JEPA's loss (the per-element smooth-L1 mean of the reference code): C-JEPA's
I-JEPA term is a per-element average, and the β's (0.001, 25, 25, 1) are balanced against
that. The EMA target encoder is the exported encoder, as for ``ijepa``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sjalign.jepa.masks import MaskConfig, _place_blocks, keep_k_indices, sample_block_size, sample_masks
from sjalign.jepa.objectives.common import MLPHead, ObjectiveOption, at_least
from sjalign.jepa.objectives.ijepa import IJEPA, crop_batch, crop_scale_option, ijepa_loss
from sjalign.jepa.objectives.losses import vicreg_terms
from sjalign.jepa.vit import ViTConfig


class TwoContextMasks(NamedTuple):
    """I-JEPA masks with a second context block per sample (all batch-first, CPU).

    Attributes:
        context: (B, Kc) int64 first context block.
        targets: (B, M, Kt) int64 target blocks.
        context2: (B, Kc2) int64 second context block, the same targets removed.
        boxes: (B, 4, 2) float32 crop corners of each image, or (B, 0) when the run does not crop.
    """

    context: torch.Tensor
    targets: torch.Tensor
    context2: torch.Tensor
    boxes: torch.Tensor


def second_context(targets: torch.Tensor, grid: tuple[int, int], config: MaskConfig, *,
                   generator: torch.Generator) -> torch.Tensor:
    """Draw one more context block per sample, with the targets removed as :func:`sample_masks` does.

    Args:
        targets: (B, M, Kt) int64 target-block patch indices.
        grid: (gh, gw).
        config: mask hyper-parameters (context scale and aspect, ``min_keep``).
        generator: CPU generator.

    Returns:
        (B, Kc2) int64 sorted indices (cut to the batch's smallest count, a random subset).
    """
    B, M, _ = targets.shape
    n = grid[0] * grid[1]
    size = sample_block_size(grid, config.context_scale, config.context_aspect, generator=generator)
    block = _place_blocks((B,), grid, size, generator).reshape(B, n)  # (B, N)
    tmask = torch.zeros(B, M, n, dtype=torch.bool).scatter_(2, targets, True)  # (B, M, N)
    covered = torch.cat([torch.zeros(B, 1, n, dtype=torch.bool), tmask.cumsum(1) > 0], 1)  # (B, M+1, N)
    candidates = block[:, None] & ~covered  # (B, M+1, N)
    ok = candidates.sum(-1) > config.min_keep
    ok[:, 0] = True
    best = torch.where(ok, torch.arange(M + 1), -1).amax(1)  # (B,)
    context = candidates[torch.arange(B), best]  # (B, N)
    return keep_k_indices(context, int(context.sum(-1).min()), generator=generator)


class CJEPA(IJEPA):
    """I-JEPA (context encoder, EMA target encoder, predictor) plus a VICReg projection head.

    Submodules (checkpoint prefixes): ``encoder.*``, ``target_encoder.*`` (EMA, exported),
    ``predictor.*``, ``vicreg_head.*``.

    Args:
        vit: encoder architecture.
        pred_dim: predictor width.
        pred_depth: predictor blocks.
        ema: (start, end) EMA momentum.
        proj_dim: projection head hidden and output width P.
        vicreg_weight: β_vicreg (C-JEPA: 0.001).
        vicreg_coeffs: (β_sim, β_std, β_cov) (C-JEPA: 25, 25, 1).
        masks: multi-block mask hyper-parameters.
        crop_scale: area range of each image's random resized crop, as :class:`IJEPA`'s
            ((1, 1), the constructor's default, feeds whole images; the option's default is the
            I-JEPA reference's (0.3, 1)).
    """

    name = "cjepa"
    export_prefix = "target_encoder"
    summary = "ijepa from two context blocks + β·VICReg on their pooled, projected embeddings"
    # ~15 min for 8,572 images on two CPU cores; like ijepa it needs the longer schedule to get past the
    # positional shortcut (README: Does it learn?)
    recipe = {"epochs": 16}
    options = {
        # the I-JEPA reference's crop: at 10,000 states it raised RankMe 14.8 -> 17.2 (docs/results.md)
        "crop_scale": crop_scale_option((0.3, 1.0)),
        "vicreg_weight": ObjectiveOption(0.001, "β_vicreg: weight of VICReg beside the prediction", at_least(0)),
        "vicreg_coeffs": ObjectiveOption((25.0, 25.0, 1.0), "β_sim,β_std,β_cov of VICReg",
                                         lambda c: None if len(c) == 3 and min(c) >= 0 else f"must be three numbers >= 0 (sim, std, cov), got {c}"),
        "proj_dim": ObjectiveOption(256, "VICReg projection head width", at_least(1, integer=True), architecture=True),
    }

    def __init__(self, vit: ViTConfig, *, pred_dim: int = 64, pred_depth: int = 2,
                 ema: tuple[float, float] = (0.996, 1.0), proj_dim: int, vicreg_weight: float,
                 vicreg_coeffs: tuple[float, float, float], masks: MaskConfig = MaskConfig(),
                 crop_scale: tuple[float, float] = (1.0, 1.0)) -> None:
        super().__init__(vit, pred_dim=pred_dim, pred_depth=pred_depth, ema=ema, masks=masks, crop_scale=crop_scale)
        self.vicreg_weight, self.vicreg_coeffs = vicreg_weight, tuple(vicreg_coeffs)
        self.vicreg_head = MLPHead(vit.embed_dim, proj_dim, proj_dim)

    @classmethod
    def from_config(cls, config) -> "CJEPA":
        """Build from a :class:`sjalign.jepa.config.PretrainConfig`."""
        return cls(config.vit, pred_dim=config.pred_dim, pred_depth=config.pred_depth, ema=config.ema,
                   proj_dim=config.proj_dim, vicreg_weight=config.vicreg_weight,
                   vicreg_coeffs=config.vicreg_coeffs, crop_scale=config.crop_scale)

    def sample_masks(self, batch_size: int, generator: torch.Generator) -> TwoContextMasks:
        """Multi-block masks, a second context block per sample, then each image's crop box (drawn on the CPU)."""
        m = sample_masks(batch_size, self.grid, self.mask_config, generator=generator)
        c2 = second_context(m.targets, self.grid, self.mask_config, generator=generator)
        return TwoContextMasks(m.context, m.targets, c2, self.sample_boxes(batch_size, generator))

    def forward(self, images: torch.Tensor, masks: TwoContextMasks) -> torch.Tensor:
        """C-JEPA loss of one batch.

        Args:
            images: (B, C, H, W) images.
            masks: :class:`TwoContextMasks` on the images' device.

        Returns:
            () scalar loss; ``self.last_terms`` keeps the detached ``pred``, ``inv``, ``var``
            and ``cov`` terms.
        """
        images = crop_batch(images, masks)
        s = self.target_tokens(images, masks.targets)  # (M*B, T, D)
        preds, pooled = [], []
        for ctx in (masks.context, masks.context2):
            z = self.encoder(images, keep=ctx)  # (B, K, D)
            preds.append(ijepa_loss(self.predict(z, ctx, masks.targets), s))
            pooled.append(z.mean(1))  # (B, D)
        pred_loss = (preds[0] + preds[1]) / 2
        inv, var, cov = vicreg_terms(torch.stack([self.vicreg_head(v) for v in pooled]))  # views (2, B, P)
        b_sim, b_std, b_cov = self.vicreg_coeffs
        self.last_terms = {"pred": pred_loss.detach(), "inv": inv.detach(), "var": var.detach(), "cov": cov.detach()}
        return pred_loss + self.vicreg_weight * (b_sim * inv + b_std * var + b_cov * cov)
