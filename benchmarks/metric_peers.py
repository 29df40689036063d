"""Each representation-similarity metric of ``sjalign compare`` beside an independent computation of it.

    python benchmarks/metric_peers.py [A.safetensors B.safetensors] [--n 400]

On two latents files (their first ``--n`` shared states; without files, two related Gaussian spaces),
each metric is computed by sjalign and by a peer: a library where one exists (scikit-learn's
nearest neighbours and ``r2_score``, scipy's ``spearmanr`` and ``pdist``) and otherwise the formula
written out with dense matrices (unbiased HSIC with explicit n x n kernels, canonical correlations as the
singular values of Qxᵀ Qy (Björck & Golub), retrieval by a full argsort). Prints a Markdown table: metric,
sjalign's value, the peer's, |difference|. Run by hand; the tests hold the same checks as assertions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741 - the kernel's usual name
    """Song et al. 2012, Eq. 5, with explicit (n, n) kernels."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return float((np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                  - 2 * (one @ k @ l @ one) / (n - 2)) / (n * (n - 3)))


def canonical_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Björck & Golub (1973): the singular values of Qxᵀ Qy, Q an orthonormal basis (``scipy.linalg.orth``)
    of each side's centred columns after dropping the singular directions that together carry less than
    1e-12 of its variance (SVCCA's keep = 1: a LayerNorm'd encoder's pooled tokens have one such direction)."""
    from scipy.linalg import orth

    def reduced(z: np.ndarray) -> np.ndarray:
        u, s, _ = np.linalg.svd(z - z.mean(0), full_matrices=False)
        tail = np.cumsum((s ** 2)[::-1])[::-1] / np.sum(s ** 2)  # variance share of directions i..end
        return orth(u[:, tail >= 1e-12] * s[tail >= 1e-12])

    return np.clip(np.linalg.svd(reduced(x).T @ reduced(y), compute_uv=False), 0, 1)


def knn_sets(z: np.ndarray, k: int, metric: str) -> list[set]:
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1, metric=metric, algorithm="brute").fit(z).kneighbors(z)[1]
    return [set(row[row != i][:k]) for i, row in enumerate(idx)]


def retrieval_dense(target: np.ndarray, pred: np.ndarray, k: int) -> float:
    t = target / np.linalg.norm(target, axis=1, keepdims=True)
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    s = p @ t.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return float(np.mean([i in row for i, row in enumerate(order)]))


def main() -> None:
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr
    from sklearn.metrics import r2_score

    from sjalign.metrics.cka import linear_cka
    from sjalign.metrics.regression import r2
    from sjalign.metrics.similarity import cknna, debiased_cka, mutual_knn, pwcca, retrieval_at_k, rsa, svcca

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="two latents files (default: synthetic spaces)")
    ap.add_argument("--n", type=int, default=400, help="shared states used")
    args = ap.parse_args()
    if args.files:
        from sjalign.align.pairing import pair_by_state_id
        from sjalign.io import load_latents

        pairs = pair_by_state_id(load_latents(args.files[0]), load_latents(args.files[1]))
        x, y = pairs.x[:args.n].astype(np.float64), pairs.y[:args.n].astype(np.float64)
        source = f"{args.files[0]} ({x.shape[1]} dims) and {args.files[1]} ({y.shape[1]} dims), {len(x)} states"
    else:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(args.n, 24))
        y = x[:, :12] @ rng.normal(size=(12, 16)) + 0.5 * rng.normal(size=(args.n, 16))
        source = f"synthetic: x (n, 24) Gaussian, y = x[:, :12] B + noise (n, 16), n = {args.n}"
    xc, yc = x - x.mean(0), y - y.mean(0)
    k = 10
    rows = []

    kx, ly = xc @ xc.T, yc @ yc.T
    gram_cka = float(np.sum(kx * ly) / (np.linalg.norm(kx) * np.linalg.norm(ly)))
    rows.append(("linear CKA", linear_cka(x, y), gram_cka, "Gram form ⟨K̃, L̃⟩ / (‖K̃‖‖L̃‖), dense"))
    rows.append(("debiased CKA", debiased_cka(x, y),
                 unbiased_hsic(kx, ly) / np.sqrt(unbiased_hsic(kx, kx) * unbiased_hsic(ly, ly)),
                 "unbiased HSIC (Song et al. 2012) with explicit n × n kernels"))
    for metric in ("cosine", "euclidean"):
        sets_x, sets_y = knn_sets(x, k, metric), knn_sets(y, k, metric)
        rows.append((f"mutual kNN, {metric}, k = {k}", mutual_knn(x, y, k, metric=metric, device="cpu"),
                     float(np.mean([len(a & b) / k for a, b in zip(sets_x, sets_y)])),
                     "scikit-learn NearestNeighbors (brute)"))
    ux, uy = x / np.linalg.norm(x, axis=1, keepdims=True), y / np.linalg.norm(y, axis=1, keepdims=True)
    cx, cy = ux @ ux.T, uy @ uy.T
    n = len(x)

    def mask(s: np.ndarray) -> np.ndarray:
        m = np.zeros((n, n))
        for i in range(n):
            order = [j for j in np.lexsort((np.arange(n), -s[i])) if j != i]
            m[i, order[:k]] = 1.0
        return m

    mx, my = mask(cx), mask(cy)
    both = mx * my
    rows.append((f"CKNNA, k = {k}", cknna(x, y, k),
                 unbiased_hsic(both * cx, both * cy) / np.sqrt(unbiased_hsic(mx * cx, mx * cx)
                                                                * unbiased_hsic(my * cy, my * cy)),
                 "masked cosine kernels and unbiased HSIC, written out (Huh et al. 2024)"))
    rows.append(("SVCCA, all directions kept", svcca(x, y, keep=1.0), float(canonical_correlations(x, y).mean()),
                 "mean canonical correlation, Björck–Golub on scipy.linalg.orth bases"))
    rows.append(("RSA (correlation distance, Spearman)", rsa(x, y),
                 float(spearmanr(pdist(x, "correlation"), pdist(y, "correlation"))[0]),
                 "scipy pdist + spearmanr"))
    w = np.linalg.lstsq(np.c_[xc, np.ones(n)], y, rcond=None)[0]
    pred = np.c_[xc, np.ones(n)] @ w
    rows.append(("R² (variance-weighted)", r2(y, pred), float(r2_score(y, pred, multioutput="variance_weighted")),
                 "scikit-learn r2_score(multioutput='variance_weighted')"))
    noisy = pred + np.random.default_rng(1).normal(size=pred.shape) * 2 * y.std(0)  # so retrieval is not 1
    for kk in (1, 5):
        rows.append((f"retrieval@{kk} (cosine, noisy prediction)", retrieval_at_k(y, noisy, (kk,))[kk],
                     retrieval_dense(y, noisy, kk), "full similarity matrix, stable argsort"))
    a = np.random.default_rng(2).normal(size=(x.shape[1], x.shape[1]))  # invertible
    rows.append(("PWCCA of X and XA (planted: 1)", pwcca(x, x @ a), 1.0,
                 "no independent implementation here: the planted value for an invertible A"))

    print(f"{source}\n")
    print("| metric | sjalign | peer | abs. difference | peer computation |")
    print("|---|---|---|---|---|")
    for name, ours, peer, how in rows:
        print(f"| {name} | {ours:.12g} | {peer:.12g} | {abs(ours - peer):.1e} | {how} |")


if __name__ == "__main__":
    main()
