"""Held-out metrics of an alignment map, one family per module (SPEC §4)."""

from __future__ import annotations

import numpy as np

from sjalign.metrics.cka import linear_cka
from sjalign.metrics.diagnostics import effective_rank, kappa, numerical_rank, orth_dev, procrustes_error
from sjalign.metrics.distances import DEFAULT_DSC_POINTS, dsc
from sjalign.metrics.neighbours import DEFAULT_KS, knn_indices, nos_at_k, retrieval_at_1
from sjalign.metrics.regression import mse, r2

# Which way each metric is better (SPEC §4): the one table that evaluate, compare and the reports read.
# NOS@k is lower-better; retrieval@k and csls@k higher-better; effective ranks have no direction.
HIGHER_IS_BETTER = {
    "mse": False, "r2": True, "cka": True, "cka_raw": True, "cka_debiased": True, "dsc": True,
    "procrustes_error": False, "kappa": False, "orth_dev": False,
    "mutual_knn": True, "cknna": True, "svcca": True, "pwcca": True, "rsa": True,
}


def higher_is_better(keys) -> dict[str, bool]:
    """{metric: True if higher is better} for the metric names in ``keys`` (NOS@k: False;
    retrieval@k, csls@k: True; names without a direction, such as the effective ranks, left out)."""
    out = {}
    for key in keys:
        if key.startswith("nos@"):
            out[key] = False
        elif key.startswith(("retrieval@", "csls@")):
            out[key] = True
        elif key in HIGHER_IS_BETTER:
            out[key] = HIGHER_IS_BETTER[key]
    return out


def score_map(w: np.ndarray, za: np.ndarray, zb: np.ndarray, *, ks=DEFAULT_KS, q: np.ndarray | None = None,
              dsc_points: int = DEFAULT_DSC_POINTS, seed: int = 0, device="auto",
              neighbour_rows: np.ndarray | None = None) -> dict[str, float]:
    """Every single-map metric of SPEC §4 on standardised held-out pairs.

    Args:
        w: (d_b, d_a) map in standardised coordinates.
        za: (n, d_a) test source latents standardised with train statistics.
        zb: (n, d_b) test target latents standardised with train statistics.
        ks: neighbourhood sizes for NOS@k (each < n).
        q: (d_b, d_a) orthogonal Procrustes map fitted on train, for ``procrustes_error``.
        neighbour_rows: (m,) indices of the rows NOS@k and retrieval@1 are computed on (exact kNN
            among those m); None: all n. The other metrics always use every row.

    Returns:
        {"mse", "r2", "cka", "cka_raw", "dsc", "nos@K"..., "retrieval@1", "procrustes_error",
        "kappa", "rank", "orth_dev"}: κ exact (inf when W is singular), rank its numerical rank.
    """
    p = za @ w.T  # (n, d_b)
    out = {
        "mse": mse(zb, p),
        "r2": r2(zb, p),
        "cka": linear_cka(p, zb),
        "cka_raw": linear_cka(za, zb),
        "dsc": dsc(zb, p, max_points=dsc_points, seed=seed, device=device),
    }
    nb, np_ = (zb, p) if neighbour_rows is None else (zb[neighbour_rows], p[neighbour_rows])
    out.update({f"nos@{k}": v for k, v in nos_at_k(nb, np_, ks, device=device).items()})
    out["retrieval@1"] = retrieval_at_1(nb, np_, device=device)
    if q is not None:
        out["procrustes_error"] = procrustes_error(zb, za, q)
    out["kappa"] = kappa(w)
    out["rank"] = numerical_rank(w)
    out["orth_dev"] = orth_dev(w)
    return out


__all__ = [
    "HIGHER_IS_BETTER", "higher_is_better",
    "DEFAULT_DSC_POINTS", "DEFAULT_KS", "dsc", "effective_rank", "kappa", "knn_indices",
    "linear_cka", "mse", "nos_at_k", "numerical_rank", "orth_dev", "procrustes_error", "r2",
    "retrieval_at_1", "score_map",
]
