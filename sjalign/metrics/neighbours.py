"""Neighbourhood metrics, chunked with top-k so no n×n matrix is held (SPEC §4).

NOS@k: neighbourhood overlap shortfall (Social-JEPA §3.6), lower is better.
retrieval@1: cross-space nearest-neighbour identification, chance 1/n.
"""

from __future__ import annotations

import numpy as np
import torch

from sjalign.device import resolve_device
from sjalign.errors import ShapeError, SjalignError

DEFAULT_KS = (1, 5, 10, 20, 50)


def _sq_dists(q: torch.Tensor, x: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    return (q * q).sum(1, keepdim=True) - 2.0 * q @ x.T + x_sq[None, :]  # (m, n)


def knn_indices(x: np.ndarray, k: int, *, chunk: int = 2048, device: str | torch.device = "auto") -> np.ndarray:
    """Indices of the k nearest other rows of x (Euclidean), nearest first.

    Args:
        x: (n, d). k: 1 ≤ k < n.

    Returns:
        (n, k) int64; row i never contains i.

    Raises:
        SjalignError: k out of range.
    """
    n = len(x)
    if not 1 <= k < n:
        raise SjalignError(f"k = {k} must be between 1 and n_test - 1 = {n - 1}")
    dev = resolve_device(device)
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=dev)
    x_sq = (xt * xt).sum(1)
    out = torch.empty((n, k), dtype=torch.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d2 = _sq_dists(xt[start:stop], xt, x_sq)
        rows = torch.arange(stop - start, device=dev)
        d2[rows, rows + start] = float("inf")  # exclude i itself
        out[start:stop] = d2.topk(k, dim=1, largest=False, sorted=True).indices.cpu()
    return out.numpy()


def nos_at_k(target: np.ndarray, pred: np.ndarray, ks=DEFAULT_KS, *, chunk: int = 2048,
             device: str | torch.device = "auto") -> dict[int, float]:
    """NOS@k = 1 − (1/n) Σᵢ |N_k(Ẑbᵢ) ∩ N_k(Pᵢ)| / k for each k.

    N_k are k-nearest test neighbours (excluding i) within each space. 0 = identical
    neighbourhoods; about 1 − k/(n−1) for unrelated spaces.

    Args:
        target: (n, d_b) Ẑb.  pred: (n, d_b) P = Ẑa Wᵀ (any width works; spaces are separate).
    """
    if len(target) != len(pred):
        raise ShapeError(f"NOS@k needs paired rows, got {len(target)} and {len(pred)}")
    ks = sorted(set(int(k) for k in ks))
    kmax = ks[-1]
    nb_t = torch.from_numpy(knn_indices(target, kmax, chunk=chunk, device=device))
    nb_p = torch.from_numpy(knn_indices(pred, kmax, chunk=chunk, device=device))
    out = {}
    for k in ks:
        hits = 0
        for start in range(0, len(target), chunk):
            a, b = nb_t[start:start + chunk, :k], nb_p[start:start + chunk, :k]
            hits += int((a[:, :, None] == b[:, None, :]).any(-1).sum())
        out[k] = 1.0 - hits / (len(target) * k)
    return out


def retrieval_at_1(target: np.ndarray, pred: np.ndarray, *, chunk: int = 2048,
                   device: str | torch.device = "auto") -> float:
    """Fraction of i whose nearest Ẑb (Euclidean) to Pᵢ is Ẑbᵢ; target, pred (n, d_b)."""
    if target.shape != pred.shape:
        raise ShapeError(f"retrieval needs two arrays of one shape, got {target.shape} and {pred.shape}")
    dev = resolve_device(device)
    t = torch.as_tensor(np.ascontiguousarray(target), dtype=torch.float32, device=dev)
    p = torch.as_tensor(np.ascontiguousarray(pred), dtype=torch.float32, device=dev)
    t_sq = (t * t).sum(1)
    hits = 0
    for start in range(0, len(p), chunk):
        nearest = _sq_dists(p[start:start + chunk], t, t_sq).argmin(1)
        hits += int((nearest == torch.arange(start, start + len(nearest), device=dev)).sum())
    return hits / len(p)
