"""I-JEPA: predict the target encoder's patch tokens of masked blocks from a context block.

Train step (Assran et al. 2023, arXiv:2301.08243)::

    s   = LN(f_target(x))[targets]            # stop-gradient, EMA weights
    z   = f_context(x[context])
    ŝ   = g(z, context positions, target positions)
    L   = mean over target elements smooth-L1(ŝ − sg(s))   # the reference's F.smooth_l1_loss
    θ̄  ← m θ̄ + (1 − m) θ,  m linear from ema[0] to ema[1] over training
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from sjalign.jepa.masks import MaskConfig, Masks, sample_masks
from sjalign.jepa.objectives.common import Objective, block_major
from sjalign.jepa.vit import Predictor, VisionTransformer, ViTConfig, gather_tokens


def ijepa_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Latent prediction loss with stop-gradient on the target, as the I-JEPA reference code.

    L = mean over the B·T·D elements of smooth-L1(ŝ − sg(s)) with β = 1: ½e² where |e| < 1,
    |e| − ½ elsewhere (``F.smooth_l1_loss(z, h)`` in facebookresearch/ijepa ``train.py``;
    the paper's Eq. (1) writes the squared L2 distance).

    Args:
        pred: (B, T, D) predicted target tokens ŝ.
        target: (B, T, D) target tokens s; no gradient flows into it.

    Returns:
        () scalar float32 loss.

    Raises:
        ValueError: inputs are not 3-D or their shapes differ.

    References:
        Assran et al. 2023 (I-JEPA), arXiv:2301.08243, Eq. (1), and its reference ``train.py``.
    """
    if pred.ndim != 3 or target.ndim != 3:
        raise ValueError(f"ijepa_loss expects (B, T, D) tensors, got pred {tuple(pred.shape)} "
                         f"and target {tuple(target.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"ijepa_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return F.smooth_l1_loss(pred.float(), target.detach().float())


def ema_momentum(step: int, total_steps: int, ema: tuple[float, float]) -> float:
    """Momentum of optimizer step ``step`` (0-based): m = m0 + (m1 − m0) · step / total_steps."""
    start, end = ema
    return start + (end - start) * min(step, total_steps) / max(total_steps, 1)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place, for every parameter pair: θ̄ ← m θ̄ + (1 − m) θ.

    Args:
        target: EMA copy (same architecture as ``online``).
        online: the module trained by gradient descent.
        momentum: m in [0, 1]; 1 freezes the target.
    """
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)


class IJEPA(Objective):
    """Context encoder, EMA target encoder and narrow predictor of I-JEPA.

    Submodule names are the checkpoint's tensor prefixes: ``encoder.*`` (context
    encoder), ``target_encoder.*`` (EMA, the exported encoder), ``predictor.*``.

    Args:
        vit: encoder architecture.
        pred_dim: predictor width.
        pred_depth: predictor blocks.
        ema: (start, end) EMA momentum.
        masks: multi-block mask hyper-parameters.
    """

    name = "ijepa"
    export_prefix = "target_encoder"
    summary = "predict the EMA target's tokens of 4 masked blocks from a context block"
    # ~16 min for 8,572 images on two CPU cores. Its first ~6 epochs learn the positional shortcut
    # (the loss falls to 0.02, probe and rank fall); content follows (README: Does it learn?)
    recipe = {"epochs": 30}

    def __init__(self, vit: ViTConfig, *, pred_dim: int = 64, pred_depth: int = 2,
                 ema: tuple[float, float] = (0.996, 1.0), masks: MaskConfig = MaskConfig()) -> None:
        super().__init__()
        self.ema = ema
        self.mask_config = masks
        self.grid = (vit.grid_size, vit.grid_size)
        self.encoder = VisionTransformer(vit)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_encoder.requires_grad_(False)
        self.predictor = Predictor(vit.embed_dim, pred_dim, pred_depth, vit.num_heads, vit.grid_size,
                                   vit.mlp_ratio)

    @classmethod
    def from_config(cls, config) -> "IJEPA":
        """Build from a :class:`sjalign.jepa.config.PretrainConfig`."""
        return cls(config.vit, pred_dim=config.pred_dim, pred_depth=config.pred_depth, ema=config.ema)

    def sample_masks(self, batch_size: int, generator: torch.Generator) -> Masks:
        """Multi-block masks for one batch (drawn on the CPU)."""
        return sample_masks(batch_size, self.grid, self.mask_config, generator=generator)

    @torch.no_grad()
    def target_tokens(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The stop-gradient targets s = LN(f_target(x))[targets], block-major.

        Args:
            images: (B, C, H, W) images.
            targets: (B, M, T) target-block patch indices.

        Returns:
            (M·B, T, D) layer-normed EMA target tokens, block m of every image before block m + 1.
        """
        B, M, T = targets.shape
        s = self.target_encoder.forward_features(images)  # (B, N, D)
        s = F.layer_norm(s, s.shape[-1:])
        return block_major(gather_tokens(s, targets.reshape(B, M * T)), M)  # (M*B, T, D)

    def predict(self, z: torch.Tensor, context: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The predictor's tokens ŝ = g(z, context positions, target positions), block-major.

        Args:
            z: (B, Kc, D) context-encoder tokens of the context patches.
            context: (B, Kc) their patch indices.
            targets: (B, M, T) target-block patch indices.

        Returns:
            (M·B, T, D), in the order of :meth:`target_tokens`.
        """
        B, M, T = targets.shape
        flat = targets.transpose(0, 1).reshape(M * B, T)  # (M*B, T), block-major
        return self.predictor(z.repeat(M, 1, 1), context.repeat(M, 1), flat)

    def forward(self, images: torch.Tensor, masks: Masks) -> torch.Tensor:
        """I-JEPA loss of one batch.

        Args:
            images: (B, C, H, W) images.
            masks: context (B, Kc) and targets (B, M, Kt) patch indices, on the images' device.

        Returns:
            () scalar loss; ``self.last_terms`` keeps it as the detached ``pred`` term.
        """
        s = self.target_tokens(images, masks.targets)  # (M*B, T, D)
        z = self.encoder(images, keep=masks.context)  # (B, Kc, D)
        loss = ijepa_loss(self.predict(z, masks.context, masks.targets), s)
        self.last_terms = {"pred": loss.detach()}
        return loss

    def after_step(self, step: int, total_steps: int) -> float:
        """EMA update after optimizer step ``step`` (0-based); returns the momentum used."""
        m = ema_momentum(step, total_steps, self.ema)
        ema_update(self.target_encoder, self.encoder, m)
        return m
