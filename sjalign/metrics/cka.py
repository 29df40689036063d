"""Linear centred kernel alignment (Kornblith et al. 2019, arXiv:1905.00414)."""

from __future__ import annotations

import numpy as np

from sjalign.errors import ShapeError


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between x (n, d_x) and y (n, d_y), rows paired.

    With column-centred X, Y: CKA = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F). Invariant to orthogonal
    transforms and isotropic scaling of either side; 1 for X and XQ, Q orthogonal.

    Raises:
        ShapeError: different numbers of rows.
    """
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ShapeError(f"CKA needs (n, d_x) and (n, d_y) with the same n, got {x.shape} and {y.shape}")
    x = x.astype(np.float64) - x.mean(0)
    y = y.astype(np.float64) - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / denom) if denom > 0 else float("nan")
