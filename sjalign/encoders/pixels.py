"""The raw-pixel control: an observation flattened into a vector."""

from __future__ import annotations

import torch

from sjalign.encoders.base import EncoderOptions
from sjalign.errors import SjalignError


class PixelsEncoder:
    """Latents = pixels: (B, C, H, W) -> (B, C·H·W). The baseline every trained encoder must beat."""

    spec = "pixels"
    modality = "image"
    syntax = "pixels"
    num_features = 0  # known after the first batch

    @classmethod
    def from_spec(cls, arg: str, options: EncoderOptions) -> "PixelsEncoder":
        if arg:
            raise SjalignError(f"encoder 'pixels' takes no argument, got 'pixels:{arg}'")
        if options.layer is not None:
            raise SjalignError("encoder 'pixels' has no layers (drop --layer)")
        return cls()

    def embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        self.num_features = images[0].numel()
        return images.reshape(len(images), -1).float()

    def describe(self) -> dict:
        return {"layer": "input", "pooling": "none", "config": {}}
