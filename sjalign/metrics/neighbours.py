"""Neighbourhood metrics, tiled with top-k so no n×n matrix is held (SPEC §4).

NOS@k: neighbourhood overlap shortfall (Social-JEPA §3.6), lower is better.
retrieval@1: cross-space nearest-neighbour identification, chance 1/n.

Distances are squared Euclidean, ‖q‖² − 2 q·x + ‖x‖², in float32 on the chosen device (CUDA
when available with ``device="auto"``), computed in tiles that hold at most ``max_elements``
entries (default 2²⁴, 64 MiB): memory is the data, one tile and the (n, k) answer, whatever n
is. The kNN of a set with itself uses square tiles of row blocks and the symmetry of the
distance matrix; retrieval (two different sets) uses tiles of query rows.

Ties: among equal distances the smaller index wins — in the k-nearest sets (also at the k-th
place) and in their order, and for retrieval@1 (``argmin`` returns the first minimum) — on
every device and for every tile size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sjalign.device import resolve_device
from sjalign.errors import ShapeError, SjalignError

DEFAULT_KS = (1, 5, 10, 20, 50)
MAX_TILE_ELEMENTS = 1 << 24
MIN_BLOCK = 32  # rows per kNN block unless max_elements forces fewer (tiny blocks cost Python overhead)


def tile_rows(n_cols: int, chunk: int, max_elements: int = MAX_TILE_ELEMENTS) -> int:
    """Rows per tile: at most ``chunk``, and a (rows, n_cols) tile holds at most ``max_elements`` entries."""
    return max(1, min(int(chunk), int(max_elements) // max(int(n_cols), 1)))


def _sq_dists(q: torch.Tensor, x: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    """(m, d), (n, d), (n,) -> (m, n) squared Euclidean distances (the mm form)."""
    d2 = torch.addmm(x_sq[None, :], q, x.T, alpha=-2.0)  # ‖x‖² − 2 q·x
    return d2.add_((q * q).sum(1, keepdim=True))


def _smallest_k(d2: torch.Tensor, k: int) -> torch.Tensor:
    """(m, n) distances -> (m, k) indices of the k smallest per row, nearest first, ties to the smaller index."""
    n = d2.shape[1]
    kk = min(k + 1, n)
    vals, idx = d2.topk(kk, dim=1, largest=False, sorted=True)
    if kk > k:
        tied = (vals[:, k] == vals[:, k - 1]).nonzero().squeeze(1)  # the k-th distance recurs outside the top k
        if len(tied):
            rows, kth = d2[tied], vals[tied, k - 1:k]
            below = rows < kth
            at = rows == kth
            need = k - below.sum(1, keepdim=True)
            take = below | (at & (at.cumsum(1) <= need))  # all closer ones, then the lowest-index ties
            pick = take.nonzero()[:, 1].view(len(tied), k)  # ascending index within each row
            idx[tied, :k] = pick
            vals[tied, :k] = torch.gather(rows, 1, pick)
    vals, idx = vals[:, :k], idx[:, :k]
    by_index = torch.argsort(idx, dim=1)
    vals, idx = torch.gather(vals, 1, by_index), torch.gather(idx, 1, by_index)
    by_value = torch.sort(vals, dim=1, stable=True).indices  # equal distances keep index order
    return torch.gather(idx, 1, by_value)


def _merge_smallest(v1: torch.Tensor, i1: torch.Tensor, v2: torch.Tensor, i2: torch.Tensor, k: int):
    """Per row, the k smallest (value, index) pairs of two candidate sets, lexicographically (ties to smaller index)."""
    v, i = torch.cat([v1, v2], 1), torch.cat([i1, i2], 1)
    by_index = torch.argsort(i, dim=1)
    v, i = torch.gather(v, 1, by_index), torch.gather(i, 1, by_index)
    keep = torch.sort(v, dim=1, stable=True).indices[:, :k]
    return torch.gather(v, 1, keep), torch.gather(i, 1, keep)


def _tile_candidates(d2: torch.Tensor, k: int, offset: int):
    """(m, c) tile -> its (m, min(k, c)) smallest values and their column indices + offset, ties to smaller index."""
    kk = min(k, d2.shape[1])
    j = _smallest_k(d2, kk) if kk < d2.shape[1] else torch.sort(d2, dim=1, stable=True).indices
    return torch.gather(d2, 1, j), j + offset


def knn_indices(x: np.ndarray, k: int, *, chunk: int = 2048, device: str | torch.device = "auto",
                max_elements: int = MAX_TILE_ELEMENTS) -> np.ndarray:
    """Indices of the k nearest other rows of x (Euclidean), nearest first.

    The distance matrix of a set with itself is symmetric, so it is computed once per pair of
    row blocks I ≤ J: the (b, b) tile D_IJ updates the running k nearest of the rows of I, and
    its transpose those of J, halving the matrix products of a row-by-row scan. A running list
    keeps, per row, the k smallest (distance, index) pairs seen so far, merged exactly
    (lexicographically), so the answer does not depend on the tiling.

    Args:
        x: (n, d). k: 1 ≤ k < n.
        chunk: most rows per block (b ≤ max(chunk, 32)).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ...
        max_elements: most distance entries held at once (a tile and its transpose: 2b² ≤ max_elements).

    Returns:
        (n, k) int64 on the CPU; row i never contains i; ties go to the smaller index.

    Raises:
        SjalignError: k out of range, or an unavailable device.
    """
    n = len(x)
    if not 1 <= k < n:
        raise SjalignError(f"k = {k} must be between 1 and n_test - 1 = {n - 1}")
    dev = resolve_device(device)
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=dev)  # (n, d)
    x_sq = (xt * xt).sum(1)  # (n,)
    b = max(1, min(max(int(chunk), MIN_BLOCK), math.isqrt(max(int(max_elements) // 2, 1)), n))
    vals = torch.full((n, k), float("inf"), device=dev)  # running k nearest: (n, k) distances
    idx = torch.full((n, k), n, dtype=torch.int64, device=dev)  # and indices (n = none yet, sorts last)
    for s in range(0, n, b):
        e = min(s + b, n)
        for t in range(s, n, b):
            f = min(t + b, n)
            d2 = _sq_dists(xt[s:e], xt[t:f], x_sq[t:f])  # (e − s, f − t)
            if t == s:
                r = torch.arange(e - s, device=dev)
                d2[r, r] = float("inf")  # exclude i itself
            vals[s:e], idx[s:e] = _merge_smallest(vals[s:e], idx[s:e], *_tile_candidates(d2, k, t), k)
            if t != s:
                d2 = d2.T.contiguous()  # (f − t, e − s): the same distances seen from the rows of J
                vals[t:f], idx[t:f] = _merge_smallest(vals[t:f], idx[t:f], *_tile_candidates(d2, k, s), k)
            del d2
    return idx.cpu().numpy()


def nos_at_k(target: np.ndarray, pred: np.ndarray, ks=DEFAULT_KS, *, chunk: int = 2048,
             device: str | torch.device = "auto", max_elements: int = MAX_TILE_ELEMENTS) -> dict[int, float]:
    """NOS@k = 1 − (1/n) Σᵢ |N_k(Ẑbᵢ) ∩ N_k(Pᵢ)| / k for each k.

    N_k are k-nearest test neighbours (excluding i) within each space (:func:`knn_indices`,
    one pass per space for the largest k). 0 = identical neighbourhoods; about
    1 − k/(n−1) for unrelated spaces.

    Args:
        target: (n, d_b) Ẑb.  pred: (n, d_b) P = Ẑa Wᵀ (any width works; spaces are separate).
        chunk, device, max_elements: see :func:`knn_indices`.

    Raises:
        ShapeError: different numbers of rows.  SjalignError: a k outside 1..n−1.
    """
    if len(target) != len(pred):
        raise ShapeError(f"NOS@k needs paired rows, got {len(target)} and {len(pred)}")
    ks = sorted(set(int(k) for k in ks))
    kmax = ks[-1]
    kw = dict(chunk=chunk, device=device, max_elements=max_elements)
    nb_t = torch.from_numpy(knn_indices(target, kmax, **kw))  # (n, kmax)
    nb_p = torch.from_numpy(knn_indices(pred, kmax, **kw))
    step = tile_rows(kmax * kmax, chunk, max_elements)
    out = {}
    for k in ks:
        hits = 0
        for start in range(0, len(target), step):
            a, b = nb_t[start:start + step, :k], nb_p[start:start + step, :k]
            hits += int((a[:, :, None] == b[:, None, :]).any(-1).sum())
        out[k] = 1.0 - hits / (len(target) * k)
    return out


def retrieval_at_1(target: np.ndarray, pred: np.ndarray, *, chunk: int = 2048,
                   device: str | torch.device = "auto", max_elements: int = MAX_TILE_ELEMENTS) -> float:
    """Fraction of i whose nearest Ẑb (Euclidean) to Pᵢ is Ẑbᵢ; target, pred (n, d_b).

    Among equidistant targets the smaller index is the one retrieved.

    Raises:
        ShapeError: target and pred differ in shape.
    """
    if target.shape != pred.shape:
        raise ShapeError(f"retrieval needs two arrays of one shape, got {target.shape} and {pred.shape}")
    dev = resolve_device(device)
    t = torch.as_tensor(np.ascontiguousarray(target), dtype=torch.float32, device=dev)  # (n, d)
    p = torch.as_tensor(np.ascontiguousarray(pred), dtype=torch.float32, device=dev)
    t_sq = (t * t).sum(1)
    step = tile_rows(len(t), chunk, max_elements)
    hits = 0
    for start in range(0, len(p), step):
        nearest = _sq_dists(p[start:start + step], t, t_sq).argmin(1)  # (m,), first minimum on ties
        hits += int((nearest == torch.arange(start, start + len(nearest), device=dev)).sum())
    return hits / len(p)
