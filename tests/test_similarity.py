"""Map-free similarity measures (issue 14) against peer formulas, scipy/scikit-learn and planted cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from scipy.spatial.distance import pdist

from sjalign.errors import ShapeError, SjalignError
from sjalign.metrics.cka import linear_cka
from sjalign.metrics.similarity import cknna, debiased_cka, mutual_knn, pwcca, rsa, svcca


def _gram_hsic_unbiased(k, l):
    """Song et al. (2012) eq. 5 on explicit kernel matrices, written out term by term."""
    n = len(k)
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3))


def _orthogonal(d, seed):
    return scipy.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


def test_debiased_cka_matches_the_kernel_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 7))
    y = x[:, :5] @ rng.normal(size=(5, 9)) + rng.normal(size=(60, 9))
    xc, yc = x - x.mean(0), y - y.mean(0)
    k, l = xc @ xc.T, yc @ yc.T
    ref = _gram_hsic_unbiased(k, l) / np.sqrt(_gram_hsic_unbiased(k, k) * _gram_hsic_unbiased(l, l))
    assert debiased_cka(x, y) == pytest.approx(ref, rel=1e-10)


def test_debiased_cka_of_independent_spaces_is_near_zero_where_the_biased_one_is_not():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(285, 784)), rng.normal(size=(285, 784))  # the shape of a small test split
    assert linear_cka(x, y) > 0.6
    assert abs(debiased_cka(x, y)) < 0.02


def test_debiased_cka_is_one_under_rotation_and_scaling():
    x = np.random.default_rng(2).normal(size=(200, 16)) @ np.diag(np.linspace(0.1, 3, 16))
    assert debiased_cka(x, 2.5 * x @ _orthogonal(16, 3) + 7.0) == pytest.approx(1.0, abs=1e-10)


def test_mutual_knn_matches_scikit_learn():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(4)
    x = rng.normal(size=(150, 6))
    y = x @ rng.normal(size=(6, 4)) + 0.5 * rng.normal(size=(150, 4))
    for metric in ("cosine", "euclidean"):
        nn = [NearestNeighbors(n_neighbors=11, metric=metric, algorithm="brute").fit(z).kneighbors(z)[1][:, 1:]
              for z in (x, y)]
        ref = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(*nn)])
        assert mutual_knn(x, y, 10, metric=metric, device="cpu") == pytest.approx(ref)


def test_mutual_knn_planted():
    x = np.random.default_rng(5).normal(size=(100, 8))
    assert mutual_knn(x, x @ _orthogonal(8, 6), 5, metric="euclidean", device="cpu") == 1.0
    assert mutual_knn(x, 3 * x, 5, metric="cosine", device="cpu") == 1.0
    far = mutual_knn(x, np.random.default_rng(7).normal(size=(100, 8)), 5, device="cpu")
    assert far < 0.2  # about k/(n-1) = 0.05 for unrelated spaces


def _cknna_reference(x, y, k):
    """CKNNA written out with explicit loops over rows (Huh et al. 2024)."""
    def unit(z):
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    kx, ly = unit(x) @ unit(x).T, unit(y) @ unit(y).T
    n = len(x)

    def mask(s):
        m = np.zeros((n, n))
        for i in range(n):
            others = [j for j in sorted(range(n), key=lambda j: (-s[i, j], j)) if j != i]
            m[i, others[:k]] = 1.0
        return m

    mx, my = mask(kx), mask(ly)

    hsic = _gram_hsic_unbiased  # the masked kernels are not symmetric: trace(K̃L̃), as eq. 5 is written
    both = mx * my
    return hsic(both * kx, both * ly) / np.sqrt(hsic(mx * kx, mx * kx) * hsic(my * ly, my * ly))


def test_cknna_matches_the_written_out_formula_and_planted_cases():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(40, 5))
    y = x @ rng.normal(size=(5, 3)) + 0.3 * rng.normal(size=(40, 3))
    assert cknna(x, y, 6) == pytest.approx(_cknna_reference(x, y, 6), rel=1e-9)
    assert cknna(x, x @ _orthogonal(5, 9), 6) == pytest.approx(1.0, abs=1e-9)
    assert abs(cknna(x, rng.normal(size=(40, 5)), 6)) < 0.3


def _canonical_correlations_reference(x, y):
    """√eig(Σxx⁻¹ Σxy Σyy⁻¹ Σyx): the textbook canonical correlations."""
    x, y = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = x.T @ x, y.T @ y, x.T @ y
    m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    return np.sqrt(np.clip(np.sort(np.linalg.eigvals(m).real)[::-1], 0, 1))


def test_svcca_with_no_reduction_is_the_mean_canonical_correlation():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(300, 4))
    y = x[:, :2] @ rng.normal(size=(2, 6)) + rng.normal(size=(300, 6))
    ref = _canonical_correlations_reference(x, y)[:4]
    assert svcca(x, y, keep=1.0) == pytest.approx(ref.mean(), rel=1e-9)


def test_svcca_and_pwcca_planted():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(500, 6)) @ np.diag([5, 4, 3, 2, 1, 0.5])
    a = rng.normal(size=(6, 6))  # invertible
    assert svcca(x, x @ a, keep=1.0) == pytest.approx(1.0, abs=1e-9)
    assert pwcca(x, x @ a) == pytest.approx(1.0, abs=1e-9)
    noise = rng.normal(size=(500, 6))
    assert pwcca(x, noise) < 0.2 and svcca(x, noise, keep=1.0) < 0.2


def test_pwcca_weights_the_directions_that_carry_the_representation():
    """x's large-variance direction is shared with y, its small one is not: PWCCA > the plain mean."""
    rng = np.random.default_rng(12)
    shared, own = rng.normal(size=(2000, 1)), rng.normal(size=(2000, 1))
    x = np.hstack([10 * shared, 0.1 * own])
    y = np.hstack([shared + 0.01 * rng.normal(size=(2000, 1)), rng.normal(size=(2000, 1))])
    assert pwcca(x, y) > 0.95 > 0.6 > svcca(x, y, keep=1.0)


def test_rsa_matches_scipy():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(80, 5))
    y = np.tanh(x @ rng.normal(size=(5, 7))) + 0.2 * rng.normal(size=(80, 7))
    ref = scipy.stats.spearmanr(pdist(x, "correlation"), pdist(y, "correlation")).statistic
    assert rsa(x, y) == pytest.approx(ref, rel=1e-10)
    assert rsa(x, 3 * x + 1) == pytest.approx(1.0)


@pytest.mark.parametrize("fn", [debiased_cka, mutual_knn, cknna, svcca, pwcca, rsa])
def test_unpaired_rows_are_refused(fn):
    with pytest.raises(ShapeError):
        fn(np.zeros((10, 3)), np.zeros((11, 3)))


def test_bad_arguments():
    x = np.random.default_rng(14).normal(size=(20, 3))
    with pytest.raises(SjalignError, match="^metric must be one of cosine, euclidean"):
        mutual_knn(x, x, 3, metric="manhattan")
    with pytest.raises(SjalignError, match="k = "):
        cknna(x, x, 1)
    with pytest.raises(SjalignError, match="keep"):
        svcca(x, x, keep=0.0)
    with pytest.raises(SjalignError, match="at least 4"):
        debiased_cka(x[:3], x[:3])


def test_retrieval_at_k_and_csls_against_a_dense_reference():
    from sjalign.metrics.similarity import retrieval_at_k

    rng = np.random.default_rng(15)
    t = rng.normal(size=(90, 6))
    p = t + 0.9 * rng.normal(size=(90, 6))
    p[:10] = t[50] + 0.01 * rng.normal(size=(10, 6))  # a hub: ten predictions near one target

    def unit(z):
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    cos = unit(p) @ unit(t).T
    r_t = np.sort(cos, axis=1)[:, -5:].mean(1)
    r_p = np.sort(cos.T, axis=1)[:, -5:].mean(1)
    for scores, csls_k in ((cos, None), (2 * cos - r_t[:, None] - r_p[None, :], 5)):
        order = np.argsort(-scores, axis=1, kind="stable")
        ref = {k: np.mean([i in order[i, :k] for i in range(90)]) for k in (1, 5, 10)}
        got = retrieval_at_k(t, p, (1, 5, 10), csls_k=csls_k, chunk=7)
        assert got == pytest.approx(ref)
    assert retrieval_at_k(t, t, (1,))[1] == 1.0


def test_retrieval_ties_go_to_the_smaller_index():
    from sjalign.metrics.similarity import retrieval_at_k

    t = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # targets 0 and 1 identical
    p = t.copy()
    assert retrieval_at_k(t, p, (1, 2)) == {1: 2 / 3, 2: 1.0}  # state 1 loses its tie to state 0 at k = 1
