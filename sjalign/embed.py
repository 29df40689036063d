"""Run an encoder over observations in batches: (n, C, H, W) -> latents (n, d)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from sjalign.encoders.base import Encoder
from sjalign.errors import ShapeError


def embed_observations(encoder: Encoder, observations: torch.Tensor, *, batch_size: int = 256,
                       on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Embed observations batch by batch.

    Args:
        encoder: any :class:`~sjalign.encoders.Encoder`.
        observations: (n, C, H, W) float32 in [0, 1].
        batch_size: rows per forward pass.
        on_batch: called with the number of rows done after each batch (progress).

    Returns:
        (n, d) float32 latents, row i for observation i.

    Raises:
        ShapeError: the encoder returned something other than (B, d).
    """
    out = []
    for start in range(0, len(observations), batch_size):
        batch = observations[start:start + batch_size]
        z = encoder.embed_batch(batch)
        if z.ndim != 2 or len(z) != len(batch):
            raise ShapeError(f"encoder {encoder.spec} returned shape {tuple(z.shape)} for a batch of {len(batch)}")
        out.append(z.detach().float().cpu().numpy())
        if on_batch is not None:
            on_batch(min(start + batch_size, len(observations)))
    return np.concatenate(out).astype(np.float32, copy=False)
