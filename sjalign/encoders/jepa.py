"""sjalign's own JEPA checkpoints as encoders: ``jepa:RUN_DIR`` or ``jepa:CHECKPOINT.safetensors``."""

from __future__ import annotations

import dataclasses

import torch

from sjalign.encoders.base import EncoderOptions, check_pooling, pool_tokens
from sjalign.errors import SjalignError
from sjalign.device import autocast, resolve_device


class JepaEncoder:
    """The (EMA target) ViT encoder of a ``sjalign pretrain`` run, pooled over patch tokens.

    ``embed_batch``: (B, C, H, W) -> (B, D): the final-normed tokens, or the raw hidden state
    after block N (1..depth) with ``--layer N``, mean-pooled (or flattened with
    ``--pooling tokens``; there is no CLS token). ``embed_batch_layers`` gives every block's.
    """

    spec = "jepa"
    modality = "image"
    syntax = "jepa:RUN_DIR"

    def __init__(self, model, config, options: EncoderOptions, path: str):
        self.model, self.config, self.options, self.path = model, config, options, path
        self.device = resolve_device(options.device)
        self.model.to(self.device)
        self.depth = len(model.blocks)
        self.num_features = int(model.num_features)

    @classmethod
    def from_spec(cls, arg: str, options: EncoderOptions) -> "JepaEncoder":
        from sjalign.jepa.checkpoint import load_encoder

        if not arg:
            raise SjalignError("encoder 'jepa' needs a run folder or checkpoint: jepa:PATH")
        check_pooling(options.pooling, num_prefix=0, where=f"jepa:{arg}")  # this ViT has no CLS token
        model, config = load_encoder(arg)
        depth = len(model.blocks)
        if options.layer not in (None, "all") and not (isinstance(options.layer, int) and 1 <= options.layer <= depth):
            raise SjalignError(f"jepa:{arg}: --layer {options.layer} out of range (blocks 1..{depth}, or all)")
        return cls(model, config, options, arg)

    def _autocast(self):
        return autocast(self.device, self.options.dtype)

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return pool_tokens(tokens.float(), self.options.pooling, where=f"jepa:{self.path}").cpu()

    @torch.no_grad()
    def embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        layer = None if self.options.layer == "all" else self.options.layer
        with self._autocast():
            tokens = self.model.forward_features(images.to(self.device), layer=layer)  # (B, N, D)
        return self._pool(tokens)

    @torch.no_grad()
    def embed_batch_layers(self, images: torch.Tensor) -> list[torch.Tensor]:
        """One (B, D) tensor per block 1..depth (raw hidden states, pooled)."""
        out = []
        with self._autocast():
            h = self.model.embed(images.to(self.device))  # (B, N, D)
            for blk in self.model.blocks:
                h = blk(h)
                out.append(self._pool(h))
        return out

    def describe(self) -> dict:
        layer = "final" if self.options.layer is None else str(self.options.layer)
        cfg = dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else dict(self.config)
        return {"layer": layer, "pooling": self.options.pooling, "config": cfg}
