"""Run an encoder over observations in batches: images (n, C, H, W) or n strings -> latents (n, d)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from sjalign.encoders.base import Encoder
from sjalign.errors import ShapeError


def _check(z: torch.Tensor, n: int, spec: str) -> np.ndarray:
    if z.ndim != 2 or len(z) != n:
        raise ShapeError(f"encoder {spec} returned shape {tuple(z.shape)} for a batch of {n}")
    return z.detach().float().cpu().numpy()


def embed_observations(encoder: Encoder, observations: torch.Tensor | Sequence[str], *, batch_size: int = 256,
                       all_layers: bool = False, on_batch: Callable[[int], None] | None = None):
    """Embed observations batch by batch.

    Args:
        encoder: any :class:`~sjalign.encoders.Encoder`.
        observations: (n, C, H, W) float32 images in [0, 1], or n strings for text encoders.
        batch_size: items per forward pass.
        all_layers: also collect ``encoder.embed_batch_layers`` (``--layer all``).
        on_batch: called with the number of items done after each batch (progress).

    Returns:
        (n, d) float32 latents, row i for observation i; with ``all_layers`` a pair
        (latents of the last layer, list of (n, d_k) arrays, one per layer).

    Raises:
        ShapeError: the encoder returned something other than (B, d).
    """
    out: list[np.ndarray] = []
    layers: list[list[np.ndarray]] = []
    n = len(observations)
    for start in range(0, n, batch_size):
        batch = observations[start:start + batch_size]
        if all_layers:
            per_layer = [_check(z, len(batch), encoder.spec) for z in encoder.embed_batch_layers(batch)]
            if not layers:
                layers = [[] for _ in per_layer]
            for acc, z in zip(layers, per_layer):
                acc.append(z)
            out.append(per_layer[-1])
        else:
            out.append(_check(encoder.embed_batch(batch), len(batch), encoder.spec))
        if on_batch is not None:
            on_batch(min(start + batch_size, n))
    latents = np.concatenate(out).astype(np.float32, copy=False)
    if all_layers:
        return latents, [np.concatenate(acc).astype(np.float32, copy=False) for acc in layers]
    return latents
