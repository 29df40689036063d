"""Diagnostics of a map and of the latents it joins (SPEC §4)."""

from __future__ import annotations

import numpy as np


def _singular_values(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Singular values of w (largest first) and the numerical-zero threshold σ_max·max(d_a, d_b)·ε (numpy's)."""
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    tol = (s[0] if s.size else 0.0) * max(w.shape) * np.finfo(np.float64).eps
    return s, tol


def kappa(w: np.ndarray) -> float:
    """Condition number σ_max / σ_min over all min(d_a, d_b) singular values of w (d_b, d_a).

    Exact: inf when w is numerically singular (σ_min ≤ σ_max·max(d_a, d_b)·ε, see :func:`numerical_rank`),
    NaN for an all-zero map. (JSON outputs write inf as null; the rank beside it says why.)
    """
    s, tol = _singular_values(w)
    if s.size == 0 or s[0] <= 0:
        return float("nan")
    return float("inf") if s[-1] <= tol else float(s[0] / s[-1])


def numerical_rank(w: np.ndarray) -> int:
    """Singular values of w above σ_max·max(d_a, d_b)·ε (``numpy.linalg.matrix_rank``'s rule); ≤ min(d_a, d_b)."""
    s, tol = _singular_values(w)
    return int(np.sum(s > tol)) if s.size and s[0] > 0 else 0


def orth_dev(w: np.ndarray) -> float:
    """‖G − I‖_F / ‖I‖_F with G the smaller Gram matrix (WᵀW if d_a ≤ d_b, else WWᵀ); 0 for (semi-)orthogonal W."""
    w = w.astype(np.float64)
    gram = w.T @ w if w.shape[1] <= w.shape[0] else w @ w.T
    eye = np.eye(len(gram))
    return float(np.linalg.norm(gram - eye) / np.linalg.norm(eye))


def procrustes_error(target: np.ndarray, source: np.ndarray, q: np.ndarray) -> float:
    """‖Ẑb − Ẑa Qᵀ‖²_F / ‖Ẑb‖²_F for an orthogonal Procrustes map Q (d_b, d_a) fitted on train."""
    t = target.astype(np.float64)
    return float(np.sum((t - source @ q.T) ** 2) / np.sum(t**2))


def effective_rank(cov: np.ndarray) -> float:
    """Participation ratio (Σλ)² / Σλ² of the eigenvalues of a symmetric covariance (d, d).

    Equals trace(C)² / ‖C‖²_F; ranges from 1 (one factor) to d (isotropic).
    """
    cov = np.asarray(cov, dtype=np.float64)
    denom = float(np.sum(cov * cov))
    return float(np.trace(cov) ** 2 / denom) if denom > 0 else float("nan")
