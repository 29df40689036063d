"""Regression fit of a map on held-out pairs (SPEC §4)."""

from __future__ import annotations

import numpy as np

from sjalign.errors import ShapeError


def _check_pair(target: np.ndarray, pred: np.ndarray) -> None:
    if target.shape != pred.shape or target.ndim != 2:
        raise ShapeError(f"target and prediction must both be (n, d), got {target.shape} and {pred.shape}")


def mse(target: np.ndarray, pred: np.ndarray) -> float:
    """Mean over all entries of (Ẑb − P)²; target, pred (n, d_b) standardised units."""
    _check_pair(target, pred)
    return float(np.mean((target.astype(np.float64) - pred) ** 2))


def r2(target: np.ndarray, pred: np.ndarray) -> float:
    """Pooled coefficient of determination 1 − Σ‖Ẑb − P‖² / Σ‖Ẑb − mean(Ẑb)‖².

    Variance-weighted over dimensions: equal to scikit-learn's ``multioutput='variance_weighted'`` when
    every target dimension varies on the test rows. A dimension that is constant there differs:
    scikit-learn gives it weight 0 and ignores its error, here its squared error still counts in the
    numerator (a map that misses a constant is penalised). target, pred (n, d_b). 1 is a perfect map,
    0 no better than the test mean; NaN when the target does not vary at all.
    """
    _check_pair(target, pred)
    t = target.astype(np.float64)
    resid = float(np.sum((t - pred) ** 2))
    total = float(np.sum((t - t.mean(0)) ** 2))
    return 1.0 - resid / total if total > 0 else float("nan")
