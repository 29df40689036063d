"""I-JEPA multi-block masking on a gh x gw patch grid.

For each batch one target-block size and one context-block size are drawn (so all
targets of the batch have the same number of patches); then, per sample, ``num_targets``
target blocks and one context block are placed uniformly on the grid and the target
patches are removed from the context. All samples' contexts are cut to the batch's
smallest context count so the index tensors are rectangular, as in I-JEPA's collator.

Patch indices are raster order over the grid: ``idx = row * gw + col``.

Differences from the reference collator (Assran et al. 2023, ``src/masks/multiblock.py``):
blocks may touch the last row/column and the context block may cover the whole grid
(the reference draws corners with an exclusive upper bound and caps sides at g - 1);
scale and aspect ratio are drawn from independent uniforms (the reference reuses one);
when a context would keep ``min_keep`` patches or fewer, target constraints are dropped
last-first until it keeps more (the reference first retries 20 positions); contexts are
cut to the batch minimum by keeping a random subset of their patches rather than the
first ones in raster order, which would always drop the bottom of the image (on a 7 x 7
grid about a third of an average context is cut).

Example::

    >>> gen = torch.Generator().manual_seed(0)
    >>> m = sample_masks(8, (7, 7), MaskConfig(), generator=gen)
    >>> m.context.shape, m.targets.shape  # (B, Kc), (B, M, Kt)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class MaskConfig:
    """Multi-block mask hyper-parameters (I-JEPA defaults).

    Attributes:
        num_targets: target blocks per sample (M).
        target_scale: (min, max) fraction of the grid covered by one target block.
        target_aspect: (min, max) height / width ratio of target blocks.
        context_scale: (min, max) fraction of the grid covered by the context block.
        context_aspect: (min, max) height / width ratio of the context block.
        min_keep: a context must keep more than this many patches.
    """

    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect: tuple[float, float] = (1.0, 1.0)
    min_keep: int = 4


class Masks(NamedTuple):
    """Patch indices of one batch.

    Attributes:
        context: (B, Kc) int64 context patch indices, sorted, disjoint from every target
            of the same sample unless the ``min_keep`` fallback had to relax it.
        targets: (B, M, Kt) int64 patch indices of the M target blocks, each sorted.
    """

    context: torch.Tensor
    targets: torch.Tensor


def _uniform(lo_hi: tuple[float, float], generator: torch.Generator) -> float:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


def sample_block_size(grid: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float], *,
                      generator: torch.Generator) -> tuple[int, int]:
    """Draw one block's (height, width) in patches.

    With s ~ U(scale), a ~ U(aspect) and area = floor(gh·gw·s):
    h = round(sqrt(area·a)), w = round(sqrt(area / a)), clipped to [1, gh] x [1, gw].
    """
    gh, gw = grid
    area = int(gh * gw * _uniform(scale, generator))
    ratio = _uniform(aspect, generator)
    h = min(max(1, round(math.sqrt(area * ratio))), gh)
    w = min(max(1, round(math.sqrt(area / ratio))), gw)
    return h, w


def _place_blocks(shape: tuple[int, ...], grid: tuple[int, int], size: tuple[int, int],
                  generator: torch.Generator) -> torch.Tensor:
    """Boolean masks (*shape, gh, gw) of h x w blocks with uniformly drawn top-left corners."""
    (gh, gw), (h, w) = grid, size
    top = torch.randint(0, gh - h + 1, shape, generator=generator)[..., None, None]  # (*shape, 1, 1)
    left = torch.randint(0, gw - w + 1, shape, generator=generator)[..., None, None]
    rows = torch.arange(gh)[:, None]  # (gh, 1)
    cols = torch.arange(gw)[None, :]  # (1, gw)
    return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)  # (*shape, gh, gw)


def keep_k_indices(mask: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of ``k`` True entries of each row, in increasing order.

    Args:
        mask: (R, N) bool; every row holds at least ``k`` True entries.
        k: how many to keep.
        generator: None keeps the first ``k`` in raster order (I-JEPA's truncation);
            a generator keeps a uniformly random subset of ``k``.

    Returns:
        (R, k) int64, sorted along each row.
    """
    n = mask.shape[-1]
    if generator is None:
        tie = torch.arange(n, dtype=torch.float32) / n  # raster order
    else:
        tie = torch.rand(mask.shape, generator=generator)  # random order
    key = (~mask).float() * 2.0 + tie  # True entries sort first
    return key.argsort(dim=-1)[:, :k].sort(dim=-1).values


def sample_masks(batch_size: int, grid: tuple[int, int], config: MaskConfig = MaskConfig(), *,
                 generator: torch.Generator) -> Masks:
    """Sample I-JEPA multi-block masks for one batch.

    Args:
        batch_size: B.
        grid: (gh, gw) patches per column and row.
        config: block hyper-parameters.
        generator: CPU generator; the same state gives the same masks.

    Returns:
        :class:`Masks` with context (B, Kc) and targets (B, M, Kt), on the CPU.

    References:
        Assran et al. 2023 (I-JEPA), arXiv:2301.08243, §3 and ``MaskCollator``.
    """
    gh, gw = grid
    n, m = gh * gw, config.num_targets
    t_size = sample_block_size(grid, config.target_scale, config.target_aspect, generator=generator)
    c_size = sample_block_size(grid, config.context_scale, config.context_aspect, generator=generator)
    targets = _place_blocks((batch_size, m), grid, t_size, generator).reshape(batch_size, m, n)  # (B, M, N)
    context = _place_blocks((batch_size,), grid, c_size, generator).reshape(batch_size, n)  # (B, N)

    # Remove targets 0..c-1 from the context for c = M, M-1, ..., 0; keep the largest c
    # whose context still holds more than min_keep patches.
    covered = torch.cat([torch.zeros(batch_size, 1, n, dtype=torch.bool), targets.cumsum(1) > 0], 1)  # (B, M+1, N)
    candidates = context[:, None] & ~covered  # (B, M+1, N)
    ok = candidates.sum(-1) > config.min_keep  # (B, M+1)
    ok[:, 0] = True  # never drop the block itself
    best = torch.where(ok, torch.arange(m + 1), -1).amax(1)  # (B,)
    context = candidates[torch.arange(batch_size), best]  # (B, N)

    k_ctx = int(context.sum(-1).min())
    k_tgt = t_size[0] * t_size[1]
    return Masks(
        context=keep_k_indices(context, k_ctx, generator=generator),  # (B, Kc)
        targets=keep_k_indices(targets.reshape(-1, n), k_tgt).reshape(batch_size, m, k_tgt),  # (B, M, Kt)
    )
