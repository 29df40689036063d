"""Distance-structure consistency (Social-JEPA §3.6; Kossaifi et al. 2020)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from sjalign.device import resolve_device
from sjalign.errors import ShapeError

DEFAULT_DSC_POINTS = 2000
MAX_BLOCK_ELEMENTS = 1 << 24


def dsc(target: np.ndarray, pred: np.ndarray, *, max_points: int = DEFAULT_DSC_POINTS, seed: int = 0,
        device: str | torch.device = "auto") -> float:
    """Spearman rank correlation of pairwise Euclidean distances {‖Ẑbᵢ − Ẑbⱼ‖} vs {‖Pᵢ − Pⱼ‖}, i < j.

    Exact Spearman needs the ranks of all m(m−1)/2 distances, so DSC works on a seeded
    subsample of m ≤ ``max_points`` rows (never an n×n matrix for large n). On the CPU the
    distances are scipy's ``pdist`` (float64); on CUDA they are computed in float64 blocks of
    rows on the GPU and ranked there (average ranks for ties, as ``scipy.stats.spearmanr``).

    Args:
        target, pred: (n, d_b) rows paired.
        max_points: use a seeded subsample of at most this many rows (m(m−1)/2 distances).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ...

    Raises:
        ShapeError: shapes differ or fewer than 3 rows.
    """
    if target.shape != pred.shape or len(target) < 3:
        raise ShapeError(f"DSC needs two (n ≥ 3, d) arrays of one shape, got {target.shape} and {pred.shape}")
    idx = np.arange(len(target))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(len(target), max_points, replace=False))
    dev = resolve_device(device)
    if dev.type != "cpu":
        return dsc_torch(target[idx], pred[idx], device=dev)
    rho = spearmanr(pdist(target[idx].astype(np.float64)), pdist(pred[idx].astype(np.float64))).statistic
    return float(rho)


def condensed_distances(x: torch.Tensor, *, max_elements: int = MAX_BLOCK_ELEMENTS) -> torch.Tensor:
    """(m, d) -> (m(m−1)/2,) Euclidean distances ‖xᵢ − xⱼ‖ for i < j in ``pdist`` order, by blocks of rows.

    Differences are taken directly (not through ‖x‖² − 2x·y + ‖y‖²), so identical rows give 0.
    One block holds at most about ``max_elements`` distances besides the output.
    """
    m = len(x)
    out = torch.empty(m * (m - 1) // 2, dtype=x.dtype, device=x.device)
    pos, start = 0, 0
    while start < m - 1:
        rows = max(1, min(m - 1 - start, max_elements // max(m - start, 1)))
        stop = start + rows
        block = torch.cdist(x[start:stop], x[start:], compute_mode="donot_use_mm_for_euclid_dist")  # (r, m − start)
        keep = torch.ones_like(block, dtype=torch.bool).triu(1)  # j > i
        values = block[keep]
        out[pos:pos + len(values)] = values
        pos += len(values)
        start = stop
    return out


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, ties sharing their average rank (``scipy.stats.rankdata``)."""
    sorted_v, order = torch.sort(v, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1.0) / 2.0  # average of start+1 .. end
    ranks = torch.empty_like(mean_rank[inverse])
    ranks[order] = mean_rank[inverse]
    return ranks


def dsc_torch(target: np.ndarray, pred: np.ndarray, *, device: str | torch.device = "cpu") -> float:
    """DSC of all rows given (no subsampling) with torch on ``device``: Pearson correlation of average ranks."""
    dev = resolve_device(device)
    t = torch.as_tensor(np.asarray(target, dtype=np.float64), device=dev)
    p = torch.as_tensor(np.asarray(pred, dtype=np.float64), device=dev)
    rt, rp = average_ranks(condensed_distances(t)), average_ranks(condensed_distances(p))
    rt, rp = rt - rt.mean(), rp - rp.mean()
    denom = torch.sqrt((rt * rt).sum() * (rp * rp).sum())
    return float((rt * rp).sum() / denom) if float(denom) > 0 else float("nan")
