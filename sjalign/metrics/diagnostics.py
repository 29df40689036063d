"""Diagnostics of a map and of the latents it joins (SPEC §4)."""

from __future__ import annotations

import numpy as np


def kappa(w: np.ndarray, *, rel_tol: float = 1e-6) -> float:
    """Condition number σ_max / σ_min over the min(d_a, d_b) singular values > rel_tol·σ_max.

    w: (d_b, d_a). NaN for an all-zero map.
    """
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    if s.size == 0 or s[0] <= 0:
        return float("nan")
    kept = s[s > rel_tol * s[0]]
    return float(kept[0] / kept[-1])


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
