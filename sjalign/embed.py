"""Run an encoder over observations in batches: images (n, C, H, W) or n strings -> latents (n, d)."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from sjalign.encoders.base import Encoder
from sjalign.errors import ShapeError


def _check(z: torch.Tensor, n: int, spec: str) -> np.ndarray:
    if z.ndim != 2 or len(z) != n:
        raise ShapeError(f"encoder {spec} returned shape {tuple(z.shape)} for a batch of {n}")
    return z.detach().float().cpu().numpy()


def embed_batches(encoder: Encoder, batches: Iterable, n: int, *, all_layers: bool = False,
                  on_batch: Callable[[int], None] | None = None):
    """Embed an iterable of batches (images (B, C, H, W) in [0, 1], or lists of B strings), in order.

    Args:
        encoder: any :class:`~sjalign.encoders.Encoder`.
        batches: the observations, batch by batch (a DataLoader, or slices of a tensor).
        n: total number of items (checked).
        all_layers: also collect ``encoder.embed_batch_layers`` (``--layer all``).
        on_batch: called with the number of items done after each batch (progress).

    Returns:
        (n, d) float32 latents, row i for item i; with ``all_layers`` a pair
        (latents of the last layer, list of (n, d_k) arrays, one per layer).

    Raises:
        ShapeError: the encoder returned something other than (B, d), or the batches held
            other than n items.
    """
    out: list[np.ndarray] = []
    layers: list[list[np.ndarray]] = []
    done = 0
    for batch in batches:
        if all_layers:
            per_layer = [_check(z, len(batch), encoder.spec) for z in encoder.embed_batch_layers(batch)]
            if not layers:
                layers = [[] for _ in per_layer]
            for acc, z in zip(layers, per_layer):
                acc.append(z)
            out.append(per_layer[-1])
        else:
            out.append(_check(encoder.embed_batch(batch), len(batch), encoder.spec))
        done += len(batch)
        if on_batch is not None:
            on_batch(done)
    if done != n:
        raise ShapeError(f"expected {n} observations, the data gave {done}")
    if not out:
        raise ShapeError("nothing to embed (no observations)")
    latents = np.concatenate(out).astype(np.float32, copy=False)
    if all_layers:
        return latents, [np.concatenate(acc).astype(np.float32, copy=False) for acc in layers]
    return latents


def embed_observations(encoder: Encoder, observations: torch.Tensor | Sequence[str], *, batch_size: int = 256,
                       all_layers: bool = False, on_batch: Callable[[int], None] | None = None):
    """Embed in-memory observations batch by batch.

    Args:
        encoder: any :class:`~sjalign.encoders.Encoder`.
        observations: (n, C, H, W) float32 images in [0, 1], or n strings for text encoders.
        batch_size: items per forward pass.
        all_layers, on_batch: as :func:`embed_batches`.

    Returns:
        As :func:`embed_batches`.

    Raises:
        ShapeError: the encoder returned something other than (B, d).
    """
    n = len(observations)
    batches = (observations[start:start + batch_size] for start in range(0, n, batch_size))
    return embed_batches(encoder, batches, n, all_layers=all_layers, on_batch=on_batch)


def embed_dataset(encoder: Encoder, dataset, *, batch_size: int = 256, num_workers: int = 0,
                  all_layers: bool = False, on_batch: Callable[[int], None] | None = None):
    """Embed a lazy :class:`~sjalign.data.lazy.ViewDataset` through a DataLoader.

    Images are read (and the view applied, once per batch) by ``num_workers`` worker
    processes while the encoder runs; rows come back in dataset order.

    Returns:
        As :func:`embed_batches`.

    Raises:
        DataError: an unreadable image (one line naming it).
        ShapeError: the encoder returned something other than (B, d).
    """
    return embed_batches(encoder, dataset.loader(batch_size, num_workers), len(dataset), all_layers=all_layers,
                         on_batch=on_batch)
