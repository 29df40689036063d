"""I-JEPA: predict the target encoder's patch tokens of masked blocks from a context block.

Train step (Assran et al. 2023, arXiv:2301.08243)::

    x   = resized_crop(image, box)                 # --crop-scale; the reference's RandomResizedCrop(scale=(0.3, 1))
    s   = LN(f_target(x))[targets]            # stop-gradient, EMA weights
    z   = f_context(x[context])
    ŝ   = g(z, context positions, target positions)
    L   = mean over target elements smooth-L1(ŝ − sg(s))   # the reference's F.smooth_l1_loss
    θ̄  ← m θ̄ + (1 − m) θ,  m linear from ema[0] to ema[1] over training
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sjalign.jepa.masks import MaskConfig, Masks, sample_masks
from sjalign.jepa.objectives.augment import crop_boxes, resized_crop
from sjalign.jepa.objectives.common import Objective, ObjectiveOption, block_major
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


class IJEPAMasks(NamedTuple):
    """Multi-block masks plus each image's crop box (all batch-first, CPU).

    Attributes:
        context: (B, Kc) int64 context patch indices.
        targets: (B, M, Kt) int64 target-block patch indices.
        boxes: (B, 4, 2) float32 crop corners (:func:`~sjalign.jepa.objectives.augment.crop_boxes`),
            or (B, 0) when the run does not crop.
    """

    context: torch.Tensor
    targets: torch.Tensor
    boxes: torch.Tensor


def check_crop_scale(scale: tuple[float, ...]) -> str | None:
    """A problem with a crop-area range (min, max), or None when 0 < min <= max <= 1."""
    if len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1:
        return None
    return f"must be two numbers min,max with 0 < min <= max <= 1, got {','.join(f'{v:g}' for v in scale)}"


def crop_scale_option(default: tuple[float, float]) -> ObjectiveOption:
    """The ``crop_scale`` option of the I-JEPA family with its objective's default."""
    return ObjectiveOption(default, "area range of the random resized crop of each image (the I-JEPA "
                           "reference's crop_scale is 0.3,1; 1,1: no crop)", check_crop_scale)


def crop_batch(images: torch.Tensor, masks: NamedTuple) -> torch.Tensor:
    """The batch's images cut to their boxes when the masks carry them (``masks.boxes``), else as given.

    Args:
        images: (B, C, H, W).
        masks: masks NamedTuple; a ``boxes`` field (B, 4, 2) is applied; (B, 0) or no such field: no crop.
    """
    boxes = getattr(masks, "boxes", None)
    return images if boxes is None or boxes.numel() == 0 else resized_crop(images, boxes)


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
        crop_scale: (min, max) area of each image's random resized crop (aspect 3/4–4/3, no
            flip, no colour change: the reference's ``make_transforms``, whose ImageNet configs
            use ``crop_scale: [0.3, 1.0]``); (1, 1), the default, feeds whole images — a
            departure from the reference, measured: see ``options``.
    """

    name = "ijepa"
    export_prefix = "target_encoder"
    summary = "predict the EMA target's tokens of 4 masked blocks from a context block"
    # ~16 min for 8,572 images on two CPU cores. Its first ~6 epochs learn the positional shortcut
    # (the loss falls to 0.02, probe and rank fall); content follows (README: Does it learn?)
    recipe = {"epochs": 30}
    # No crop by default: at 10,000 states and 30 epochs the reference's 0.3-1 crop cost 1.8 points of
    # probe and 2.4 of RankMe (docs/results.md, "On a lent GPU", fifth session); cjepa keeps it.
    options = {"crop_scale": crop_scale_option((1.0, 1.0))}

    def __init__(self, vit: ViTConfig, *, pred_dim: int = 64, pred_depth: int = 2,
                 ema: tuple[float, float] = (0.996, 1.0), masks: MaskConfig = MaskConfig(),
                 crop_scale: tuple[float, float] = (1.0, 1.0)) -> None:
        super().__init__()
        self.ema = ema
        self.crop_scale = tuple(crop_scale)
        self.img_size = (vit.img_size, vit.img_size)
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
        return cls(config.vit, pred_dim=config.pred_dim, pred_depth=config.pred_depth, ema=config.ema,
                   crop_scale=config.crop_scale)

    def sample_masks(self, batch_size: int, generator: torch.Generator) -> IJEPAMasks:
        """Multi-block masks for one batch, then each image's crop box (drawn on the CPU)."""
        m = sample_masks(batch_size, self.grid, self.mask_config, generator=generator)
        return IJEPAMasks(m.context, m.targets, self.sample_boxes(batch_size, generator))

    def sample_boxes(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B, 4, 2) crop corners, or (B, 0) without drawing when ``crop_scale`` is (1, 1)."""
        if self.crop_scale == (1.0, 1.0):
            return torch.zeros(batch_size, 0)
        return crop_boxes((batch_size,), self.img_size, generator=generator, scale=self.crop_scale)

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
            masks: context (B, Kc) and targets (B, M, Kt) patch indices and, in an
                :class:`IJEPAMasks`, the crop boxes applied to the images first; on the images' device.

        Returns:
            () scalar loss; ``self.last_terms`` keeps it as the detached ``pred`` term.
        """
        images = crop_batch(images, masks)
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
