"""Linear centred kernel alignment (Kornblith et al. 2019, arXiv:1905.00414)."""

from __future__ import annotations

import numpy as np

from sjalign.errors import ShapeError

GRAM_BYTES = 512 * 2**20  # linear_cka_matrix keeps every (n, n) float64 Gram matrix below this in all


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


def linear_cka_matrix(xs: list[np.ndarray], ys: list[np.ndarray]) -> list[list[float]]:
    """Linear CKA of every x in ``xs`` with every y in ``ys`` (rows paired), e.g. layer × layer.

    The same estimator as :func:`linear_cka`, in its Gram form: with K̃ = X̃X̃ᵀ of column-centred
    X̃, CKA = ⟨K̃x, K̃y⟩_F / (‖K̃x‖_F ‖K̃y‖_F), which equals ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F). Each
    side's (n, n) Gram matrix is formed once, so L_x × L_y pairs cost L_x + L_y Gram products and
    L_x·L_y dot products of n² entries — cheaper than :func:`linear_cka` per pair for few rows and
    many wide layers. When the Gram matrices would pass ``GRAM_BYTES`` in all, each pair goes
    through :func:`linear_cka` instead (memory O(d²), not O(n²)).

    Args:
        xs: L_x arrays (n, d_i); ys: L_y arrays (n, d_j); the same n everywhere.

    Returns:
        (L_x, L_y) nested list of floats; NaN where a side has no variance.

    Raises:
        ShapeError: arrays that are not 2-D or whose row counts differ.
    """
    n = {len(x) for x in [*xs, *ys]}
    if len(n) > 1 or any(x.ndim != 2 for x in [*xs, *ys]):
        raise ShapeError(f"CKA needs (n, d) arrays with one n, got shapes {[x.shape for x in [*xs, *ys]]}")

    def unit_gram(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.mean(0)
        k = x @ x.T  # (n, n)
        norm = np.linalg.norm(k)
        return k / norm if norm > 0 else np.full_like(k, np.nan)

    rows = n.pop() if n else 0
    if rows * rows * 8 * (len(xs) + len(ys)) > GRAM_BYTES:
        return [[linear_cka(x, y) for y in ys] for x in xs]
    kx, ky = [unit_gram(x) for x in xs], [unit_gram(y) for y in ys]
    return [[float(np.sum(a * b)) for b in ky] for a in kx]
