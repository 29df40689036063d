"""sjalign's own JEPA checkpoints as encoders: ``jepa:RUN_DIR`` or ``jepa:CHECKPOINT.safetensors``."""

from __future__ import annotations

import contextlib
import dataclasses

import torch

from sjalign.encoders.base import EncoderOptions
from sjalign.errors import SjalignError
from sjalign.metrics.neighbours import resolve_device


class JepaEncoder:
    """The (EMA target) ViT encoder of a ``sjalign pretrain`` run, pooled over patch tokens.

    ``embed_batch``: (B, C, H, W) -> (B, D), mean of the final-normed tokens, or of the raw
    hidden state after block N (1..depth) with ``--layer N``.
    """

    spec = "jepa"

    def __init__(self, model, config, options: EncoderOptions, path: str):
        self.model, self.config, self.options, self.path = model, config, options, path
        self.device = resolve_device(options.device)
        self.model.to(self.device)
        self.num_features = int(model.num_features)

    @classmethod
    def from_spec(cls, arg: str, options: EncoderOptions) -> "JepaEncoder":
        from sjalign.jepa.checkpoint import load_encoder

        if not arg:
            raise SjalignError("encoder 'jepa' needs a run folder or checkpoint: jepa:PATH")
        if options.pooling != "mean":
            raise SjalignError(f"jepa:{arg}: pooling '{options.pooling}' is not available (this ViT has no CLS "
                               "token); use --pooling mean")
        model, config = load_encoder(arg)
        depth = len(model.blocks)
        if options.layer is not None and not 1 <= options.layer <= depth:
            raise SjalignError(f"jepa:{arg}: --layer {options.layer} out of range (blocks 1..{depth})")
        return cls(model, config, options, arg)

    @torch.no_grad()
    def embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                    if self.options.dtype == "bf16" and self.device.type == "cuda" else contextlib.nullcontext())
        with autocast:
            tokens = self.model.forward_features(x, layer=self.options.layer)  # (B, N, D)
        return tokens.float().mean(1).cpu()

    def describe(self) -> dict:
        layer = "final" if self.options.layer is None else str(self.options.layer)
        cfg = dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else dict(self.config)
        return {"layer": layer, "pooling": "mean", "config": cfg}
