"""JEPA pretraining: ViT backbone, masks, objectives, trainer and checkpoints (SPEC §6).

Public entry points::

    from sjalign.jepa import PretrainConfig, pretrain, load_encoder
    summary = pretrain(PretrainConfig(view="crop:top", epochs=5), images, Path("runs/top"))
    encoder, config = load_encoder("runs/top")  # the EMA target encoder, eval mode
    tokens = encoder.forward_features(images[:8])  # (8, N, D)

This package imports neither typer nor rich; progress reaches the CLI through the
``on_step`` / ``on_epoch`` callbacks of :func:`pretrain`.
"""

from sjalign.jepa.checkpoint import (
    CHECKPOINT_FORMAT,
    TRAIN_STATE_FORMAT,
    load_checkpoint,
    load_encoder,
    read_log,
    save_checkpoint,
)
from sjalign.jepa.config import PretrainConfig
from sjalign.jepa.masks import MaskConfig, Masks, sample_masks
from sjalign.jepa.objectives import OBJECTIVES, IJEPA, build_objective, ijepa_loss
from sjalign.jepa.train import lr_at, pretrain
from sjalign.jepa.vit import PRESETS, Predictor, VisionTransformer, ViTConfig

__all__ = [
    "CHECKPOINT_FORMAT", "TRAIN_STATE_FORMAT", "IJEPA", "MaskConfig", "Masks", "OBJECTIVES", "PRESETS",
    "Predictor", "PretrainConfig", "ViTConfig", "VisionTransformer", "build_objective", "ijepa_loss",
    "load_checkpoint", "load_encoder", "lr_at", "pretrain", "read_log", "sample_masks",
    "save_checkpoint",
]
