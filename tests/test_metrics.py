"""Tests of sjalign.metrics against independent references (SPEC §4).

References: an HSIC-based CKA written here, scikit-learn's r2_score / mean_squared_error /
NearestNeighbors, scipy's spearmanr / pdist, eigenvalues, and planted ground truth.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.neighbors import NearestNeighbors

import sjalign.metrics.distances as distances_mod
from sjalign.errors import ShapeError, SjalignError
from sjalign.metrics import (
    dsc,
    effective_rank,
    kappa,
    numerical_rank,
    knn_indices,
    linear_cka,
    mse,
    nos_at_k,
    orth_dev,
    procrustes_error,
    r2,
    retrieval_at_1,
    score_map,
)

CPU = "cpu"


def _orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _semi_orthogonal(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    u, _, vt = np.linalg.svd(rng.normal(size=(rows, cols)), full_matrices=False)
    return u @ vt


# ---------------------------------------------------------------- CKA

def _hsic(k: np.ndarray, l: np.ndarray) -> float:
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def _cka_hsic(x: np.ndarray, y: np.ndarray) -> float:
    k, l = x @ x.T, y @ y.T
    return _hsic(k, l) / np.sqrt(_hsic(k, k) * _hsic(l, l))


@pytest.mark.parametrize("d_x,d_y,mix", [(5, 5, 0.5), (8, 3, 1.0), (3, 9, 0.1), (6, 6, 0.0)])
def test_linear_cka_matches_hsic_formula(d_x, d_y, mix):
    rng = np.random.default_rng(0)
    n = 70
    x = rng.normal(size=(n, d_x)) * rng.uniform(0.5, 3, d_x) + rng.normal(size=d_x) * 4
    y = mix * x @ rng.normal(size=(d_x, d_y)) + rng.normal(size=(n, d_y)) + 2.0
    assert linear_cka(x, y) == pytest.approx(_cka_hsic(x, y), rel=1e-9, abs=1e-12)


def test_linear_cka_invariances():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 7)) @ rng.normal(size=(7, 7))
    q = _orthogonal(7, rng)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    y = x @ rng.normal(size=(7, 4)) + rng.normal(size=(100, 4))
    base = linear_cka(x, y)
    assert 0.0 < base < 1.0
    assert linear_cka(3.5 * x, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, 0.01 * y + 5.0) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(y, x) == pytest.approx(base, rel=1e-10)
    # not invariant to anisotropic scaling
    assert abs(linear_cka(x * np.array([10, 1, 1, 1, 1, 1, 1.0]), y) - base) > 1e-3
    with pytest.raises(ShapeError):
        linear_cka(x, y[:50])


# ---------------------------------------------------------------- regression metrics

def test_r2_and_mse_match_sklearn():
    rng = np.random.default_rng(2)
    target = rng.normal(size=(80, 5)) * rng.uniform(0.3, 4, 5) + rng.normal(size=5)
    pred = target + rng.normal(size=(80, 5)) * rng.uniform(0.1, 2, 5)
    assert r2(target, pred) == pytest.approx(r2_score(target, pred, multioutput="variance_weighted"), rel=1e-10)
    assert mse(target, pred) == pytest.approx(mean_squared_error(target, pred), rel=1e-10)
    # variance weighting is not the plain average over outputs
    assert abs(r2(target, pred) - r2_score(target, pred, multioutput="uniform_average")) > 1e-3
    assert r2(target, target) == 1.0 and mse(target, target) == 0.0
    assert r2(target, np.broadcast_to(target.mean(0), target.shape)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ShapeError):
        r2(target, pred[:, :4])
    with pytest.raises(ShapeError):
        mse(target[:, 0], pred[:, 0])


# ---------------------------------------------------------------- DSC

def test_dsc_matches_spearman_over_pdist():
    rng = np.random.default_rng(3)
    target = rng.normal(size=(60, 5))
    pred = target @ rng.normal(size=(5, 5)) * 0.3 + rng.normal(size=(60, 5))
    ref = spearmanr(pdist(target), pdist(pred))[0]
    assert dsc(target, pred) == pytest.approx(ref, abs=1e-12)
    assert dsc(target, 2.0 * target @ _orthogonal(5, rng)) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ShapeError):
        dsc(target, pred[:, :3])
    with pytest.raises(ShapeError):
        dsc(target[:2], pred[:2])


def test_dsc_subsample_is_seeded_paired_and_bounded(monkeypatch):
    rng = np.random.default_rng(4)
    n, m = 400, 60
    target = rng.normal(size=(n, 4))
    pred = target + rng.normal(size=(n, 4))
    seen = []

    def recording_pdist(arr, *args, **kwargs):
        seen.append(np.array(arr))
        return pdist(arr, *args, **kwargs)

    monkeypatch.setattr(distances_mod, "pdist", recording_pdist)
    v1 = dsc(target, pred, max_points=m, seed=7)
    assert len(seen) == 2 and all(len(s) == m for s in seen)
    # the subsample picks the same rows on both sides (pairs stay paired), all distinct
    rows_t = [int(np.flatnonzero((target == r).all(1))[0]) for r in seen[0]]
    rows_p = [int(np.flatnonzero((pred == r).all(1))[0]) for r in seen[1]]
    assert rows_t == rows_p and len(set(rows_t)) == m
    assert v1 == pytest.approx(spearmanr(pdist(target[rows_t]), pdist(pred[rows_t]))[0], abs=1e-12)
    seen.clear()
    assert dsc(target, pred, max_points=m, seed=7) == v1
    assert dsc(target, pred, max_points=m, seed=8) != v1
    full = spearmanr(pdist(target), pdist(pred))[0]
    assert abs(v1 - full) < 0.15
    assert dsc(target, pred, max_points=n, seed=123) == pytest.approx(full, abs=1e-12)


# ---------------------------------------------------------------- kNN, NOS, retrieval

def _sklearn_knn(x: np.ndarray, k: int) -> np.ndarray:
    idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x).kneighbors(x, return_distance=False)
    out = np.empty((len(x), k), dtype=np.int64)
    for i, row in enumerate(idx):
        out[i] = [j for j in row if j != i][:k]
    return out


@pytest.mark.parametrize("chunk", [1, 16, 100, 257, 4096])
def test_knn_indices_match_sklearn_excluding_self(chunk):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(257, 6)).astype(np.float32) * 3 + 1
    k = 7
    got = knn_indices(x, k, chunk=chunk, device=CPU)
    assert got.shape == (257, k) and got.dtype == np.int64
    assert not (got == np.arange(257)[:, None]).any()
    np.testing.assert_array_equal(got, _sklearn_knn(x.astype(np.float64), k))


def test_knn_indices_k_out_of_range():
    x = np.random.default_rng(0).normal(size=(10, 3))
    for k in (0, 10, 11):
        with pytest.raises(SjalignError):
            knn_indices(x, k, device=CPU)
    assert knn_indices(x, 9, device=CPU).shape == (10, 9)


def _nos_reference(t: np.ndarray, p: np.ndarray, k: int) -> float:
    nt, np_ = _sklearn_knn(t, k), _sklearn_knn(p, k)
    return 1.0 - np.mean([len(set(a) & set(b)) / k for a, b in zip(nt, np_)])


def test_nos_identity_rotation_and_scaling_is_zero():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(200, 8))
    q = _orthogonal(8, rng)
    for other in (x, x @ q, 3.0 * x @ q + 1.5):
        res = nos_at_k(x, other, (1, 5, 10), device=CPU)
        assert set(res) == {1, 5, 10}
        assert all(v == pytest.approx(0.0, abs=1e-12) for v in res.values())


def test_nos_independent_spaces_is_near_chance():
    rng = np.random.default_rng(7)
    n = 600
    res = nos_at_k(rng.normal(size=(n, 10)), rng.normal(size=(n, 10)), (1, 10, 50), device=CPU)
    for k, v in res.items():
        assert v == pytest.approx(1 - k / (n - 1), abs=0.012)


@pytest.mark.parametrize("chunk", [13, 2048])
def test_nos_matches_bruteforce_reference_on_partial_overlap(chunk):
    rng = np.random.default_rng(8)
    t = rng.normal(size=(150, 5))
    p = t @ (np.eye(5, 4) + 0.3 * rng.normal(size=(5, 4))) + 0.2 * rng.normal(size=(150, 4))  # other width: fine
    res = nos_at_k(t, p, (1, 5, 10, 5), chunk=chunk, device=CPU)
    assert sorted(res) == [1, 5, 10]
    for k in (1, 5, 10):
        ref = _nos_reference(t, p, k)
        assert 0.05 < ref < 0.95  # a case where the answer is neither trivial end
        assert res[k] == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ShapeError):
        nos_at_k(t, p[:100], (1,), device=CPU)


@pytest.mark.parametrize("chunk", [7, 2048])
def test_retrieval_at_1_identity_and_planted_permutation(chunk):
    rng = np.random.default_rng(9)
    n = 200
    target = rng.normal(size=(n, 6))
    assert retrieval_at_1(target, target, chunk=chunk, device=CPU) == 1.0
    assert retrieval_at_1(target, target + 0.01 * rng.normal(size=(n, 6)), chunk=chunk, device=CPU) == 1.0
    # pred_i = target_perm[i]: the nearest target to pred_i is perm[i], a hit only where perm[i] == i
    moved = rng.choice(n, 150, replace=False)
    perm = np.arange(n)
    perm[moved] = np.roll(moved, 1)  # a single cycle over the moved rows: no fixed points among them
    assert (perm != np.arange(n)).sum() == 150
    pred = target[perm] + 1e-3 * rng.normal(size=(n, 6))
    assert retrieval_at_1(target, pred, chunk=chunk, device=CPU) == pytest.approx(50 / n)
    # the retrieved index is the permutation itself (independent nearest-neighbour search)
    nn = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(target)
    np.testing.assert_array_equal(nn.kneighbors(pred, return_distance=False)[:, 0], perm)
    with pytest.raises(ShapeError):
        retrieval_at_1(target, pred[:, :5], device=CPU)


def test_retrieval_of_unrelated_spaces_is_near_chance():
    rng = np.random.default_rng(10)
    n = 500
    assert retrieval_at_1(rng.normal(size=(n, 4)), rng.normal(size=(n, 4)), device=CPU) < 0.02


# ---------------------------------------------------------------- diagnostics

def test_kappa():
    rng = np.random.default_rng(11)
    assert kappa(np.diag([1.0, 2, 3, 4, 5])) == pytest.approx(5.0, rel=1e-12)
    assert kappa(_orthogonal(6, rng)) == pytest.approx(1.0, abs=1e-10)
    assert kappa(_semi_orthogonal(3, 7, rng)) == pytest.approx(1.0, abs=1e-10)
    assert kappa(_semi_orthogonal(7, 3, rng)) == pytest.approx(1.0, abs=1e-10)
    # exact: no ceiling (the old 1e-6·σmax cut-off capped κ near 1e6), inf when numerically singular
    assert kappa(np.diag([1.0, 2, 3, 1e-9 * 3])) == pytest.approx(1e9, rel=1e-10)
    assert kappa(np.diag([1.0, 2, 3, 1e-5 * 3])) == pytest.approx(1e5, rel=1e-6)
    assert kappa(np.diag([1.0, 2, 3, 0.0])) == np.inf and numerical_rank(np.diag([1.0, 2, 3, 0.0])) == 3
    assert numerical_rank(np.diag([1.0, 2, 3, 1e-9])) == 4 == np.linalg.matrix_rank(np.diag([1.0, 2, 3, 1e-9]))
    low = np.random.default_rng(12).normal(size=(6, 2)) @ np.random.default_rng(13).normal(size=(2, 9))
    assert kappa(low) == np.inf and numerical_rank(low) == 2 == np.linalg.matrix_rank(low)
    # invariant to orthogonal rotations on either side, rectangular too
    u, v = _orthogonal(4, rng), _orthogonal(6, rng)
    w = u @ np.diag([0.5, 1.0, 2.0, 4.0]) @ np.eye(4, 6) @ v
    assert kappa(w) == pytest.approx(8.0, rel=1e-8)
    assert kappa(w.T) == pytest.approx(8.0, rel=1e-8)
    assert np.isnan(kappa(np.zeros((3, 3))))


def test_orth_dev():
    rng = np.random.default_rng(12)
    assert orth_dev(_orthogonal(5, rng)) == pytest.approx(0.0, abs=1e-12)
    assert orth_dev(_semi_orthogonal(7, 3, rng)) == pytest.approx(0.0, abs=1e-12)  # d_b > d_a: WᵀW = I
    assert orth_dev(_semi_orthogonal(3, 7, rng)) == pytest.approx(0.0, abs=1e-12)  # d_b < d_a: WWᵀ = I
    # scaled identity: ‖c²I − I‖_F / ‖I‖_F = |c² − 1|
    for c in (0.5, 1.0, 2.0):
        assert orth_dev(c * np.eye(4)) == pytest.approx(abs(c * c - 1), rel=1e-12, abs=1e-15)
        # scaled semi-orthogonal: the smaller Gram is c²I, so the same value
        assert orth_dev(c * _semi_orthogonal(6, 2, rng)) == pytest.approx(abs(c * c - 1), rel=1e-10, abs=1e-12)
        assert orth_dev(c * _semi_orthogonal(2, 6, rng)) == pytest.approx(abs(c * c - 1), rel=1e-10, abs=1e-12)
    w = rng.normal(size=(5, 5))
    ref = np.sqrt(np.sum((w.T @ w - np.eye(5)) ** 2) / 5)
    assert orth_dev(w) == pytest.approx(ref, rel=1e-12)


def test_effective_rank():
    rng = np.random.default_rng(13)
    assert effective_rank(np.eye(9)) == pytest.approx(9.0, rel=1e-12)
    v = rng.normal(size=(9, 1))
    assert effective_rank(v @ v.T) == pytest.approx(1.0, rel=1e-10)
    a = rng.normal(size=(50, 9)) @ np.diag([5, 3, 2, 1, 1, 0.5, 0.1, 0.1, 0.01])
    cov = a.T @ a / 50
    lam = np.linalg.eigvalsh(cov)
    assert effective_rank(cov) == pytest.approx(lam.sum() ** 2 / np.sum(lam**2), rel=1e-10)


def test_procrustes_error():
    rng = np.random.default_rng(14)
    za = rng.normal(size=(100, 5))
    q = _orthogonal(5, rng)
    zb = za @ q.T
    assert procrustes_error(zb, za, q) == pytest.approx(0.0, abs=1e-20)
    noisy = zb + 0.5 * rng.normal(size=zb.shape)
    ref = np.linalg.norm(noisy - za @ q.T) ** 2 / np.linalg.norm(noisy) ** 2
    assert procrustes_error(noisy, za, q) == pytest.approx(ref, rel=1e-12)
    # rectangular Q (d_b, d_a)
    q2 = _semi_orthogonal(3, 5, rng)
    zb2 = za @ q2.T
    assert procrustes_error(zb2, za, q2) == pytest.approx(0.0, abs=1e-20)


# ---------------------------------------------------------------- score_map

def test_score_map_keys_and_values():
    rng = np.random.default_rng(15)
    n, d_a, d_b = 120, 6, 4
    za = rng.normal(size=(n, d_a))
    w = rng.normal(size=(d_b, d_a)) / np.sqrt(d_a)
    zb = za @ w.T + 0.2 * rng.normal(size=(n, d_b))
    q = _semi_orthogonal(d_b, d_a, rng)
    out = score_map(w, za, zb, ks=(1, 5), q=q, device=CPU)
    assert set(out) == {"mse", "r2", "cka", "cka_raw", "dsc", "nos@1", "nos@5", "retrieval@1",
                        "procrustes_error", "kappa", "rank", "orth_dev"}
    p = za @ w.T
    assert out["r2"] == pytest.approx(r2_score(zb, p, multioutput="variance_weighted"), rel=1e-10)
    assert out["mse"] == pytest.approx(mean_squared_error(zb, p), rel=1e-10)
    assert out["cka"] == pytest.approx(_cka_hsic(p, zb), rel=1e-9)
    assert out["cka_raw"] == pytest.approx(_cka_hsic(za, zb), rel=1e-9)
    assert out["dsc"] == pytest.approx(spearmanr(pdist(zb), pdist(p))[0], abs=1e-12)
    assert out["nos@5"] == pytest.approx(_nos_reference(zb, p, 5), abs=1e-12)
    assert out["procrustes_error"] == pytest.approx(np.sum((zb - za @ q.T) ** 2) / np.sum(zb**2), rel=1e-10)
    s = np.linalg.svd(w, compute_uv=False)
    assert out["kappa"] == pytest.approx(s[0] / s[-1], rel=1e-8)
    assert out["retrieval@1"] > 0.5
    assert "procrustes_error" not in score_map(w, za, zb, ks=(1,), device=CPU)


def test_r2_with_a_constant_target_dimension_differs_from_scikit_learn_as_documented():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(3)
    target = rng.normal(size=(50, 3))
    target[:, 2] = 1.5  # constant on the test rows
    pred = target + 0.1 * rng.normal(size=(50, 3))
    ours, sk = r2(target, pred), r2_score(target, pred, multioutput="variance_weighted")
    varying = r2(target[:, :2], pred[:, :2])
    assert sk == pytest.approx(varying, rel=1e-12)  # scikit-learn drops the constant dimension
    resid_const = np.sum((target[:, 2] - pred[:, 2]) ** 2)
    total = np.sum((target[:, :2] - target[:, :2].mean(0)) ** 2)
    assert ours == pytest.approx(varying - resid_const / total, rel=1e-12) and ours < sk  # here its error counts
