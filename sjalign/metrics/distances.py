"""Distance-structure consistency (Social-JEPA §3.6; Kossaifi et al. 2020)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from sjalign.errors import ShapeError

DEFAULT_DSC_POINTS = 2000


def dsc(target: np.ndarray, pred: np.ndarray, *, max_points: int = DEFAULT_DSC_POINTS, seed: int = 0) -> float:
    """Spearman rank correlation of pairwise Euclidean distances {‖Ẑbᵢ − Ẑbⱼ‖} vs {‖Pᵢ − Pⱼ‖}, i < j.

    Args:
        target, pred: (n, d_b) rows paired.
        max_points: use a seeded subsample of at most this many rows (m(m−1)/2 distances).

    Raises:
        ShapeError: shapes differ or fewer than 3 rows.
    """
    if target.shape != pred.shape or len(target) < 3:
        raise ShapeError(f"DSC needs two (n ≥ 3, d) arrays of one shape, got {target.shape} and {pred.shape}")
    idx = np.arange(len(target))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(len(target), max_points, replace=False))
    rho = spearmanr(pdist(target[idx].astype(np.float64)), pdist(pred[idx].astype(np.float64))).statistic
    return float(rho)
