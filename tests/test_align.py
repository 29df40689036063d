"""Tests of sjalign.align: streaming moments, ridge / lstsq / Procrustes maps (SPEC §2-§3).

Every expectation is built independently of the code under test: scikit-learn's Ridge,
numpy's lstsq, scipy's orthogonal_procrustes / polar, or planted ground truth.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
from sklearn.linear_model import Ridge

from sjalign.align import (
    AlignmentMap,
    IllConditionedWarning,
    Moments,
    accumulate,
    choose_lambda,
    fit_map,
    pseudo_inverse,
)
from sjalign.errors import ShapeError, SjalignError


# ---------------------------------------------------------------- helpers (independent references)

def _pop_standardise(x: np.ndarray) -> np.ndarray:
    """Standardise with the population (ddof 0) mean/std of x itself, written out."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.sum(0) / len(x)
    sd = np.sqrt(((x - mu) ** 2).sum(0) / len(x))
    return (x - mu) / sd


def _random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _whiten(z: np.ndarray) -> np.ndarray:
    """Centre z and make its population covariance exactly the identity."""
    z = z - z.mean(0)
    cov = z.T @ z / len(z)
    return z @ np.linalg.inv(np.linalg.cholesky(cov)).T


def _heteroscedastic(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Correlated features with different means and scales, so standardisation matters."""
    mix = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ mix * rng.uniform(0.2, 5.0, size=d) + rng.uniform(-10, 10, size=d)


# ---------------------------------------------------------------- standardisation statistics

def test_train_statistics_are_population_mean_and_std():
    rng = np.random.default_rng(0)
    n = 20  # small n: ddof 0 and ddof 1 differ by ~2.5%
    x, y = _heteroscedastic(rng, n, 5), _heteroscedastic(rng, n, 3)
    amap = fit_map(x, y, np.arange(n))
    np.testing.assert_allclose(amap.a_mean, x.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(amap.b_mean, y.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(amap.a_std, np.std(x, axis=0, ddof=0), rtol=1e-5)
    np.testing.assert_allclose(amap.b_std, np.std(y, axis=0, ddof=0), rtol=1e-5)
    assert not np.allclose(amap.a_std, np.std(x, axis=0, ddof=1), rtol=1e-3)
    assert amap.W.shape == (3, 5) and amap.W.dtype == np.float32
    np.testing.assert_array_equal(amap.train_state_ids, np.arange(n))


def test_standardised_moments_match_direct_computation():
    rng = np.random.default_rng(1)
    x, y = _heteroscedastic(rng, 150, 6), _heteroscedastic(rng, 150, 4)
    std = accumulate(x, y, chunk=17).standardised()
    za, zb = _pop_standardise(x), _pop_standardise(y)
    np.testing.assert_allclose(std.c_aa, za.T @ za / len(za), atol=1e-10)
    np.testing.assert_allclose(std.c_ab, za.T @ zb / len(za), atol=1e-10)
    assert std.n == 150


# ---------------------------------------------------------------- ridge

@pytest.mark.parametrize("lam", [1e-3, 0.1, 2.0])
@pytest.mark.parametrize("shape", [(60, 7, 4), (40, 5, 9), (15, 12, 3)])
def test_ridge_matches_sklearn_on_standardised_data(lam, shape):
    n, d_a, d_b = shape
    rng = np.random.default_rng(2)
    x = _heteroscedastic(rng, n, d_a)
    y = x @ rng.normal(size=(d_a, d_b)) + rng.normal(size=(n, d_b)) * 3.0 + 7.0
    amap = fit_map(x, y, np.arange(n), method="ridge", lam=lam)
    za, zb = _pop_standardise(x), _pop_standardise(y)
    ref = Ridge(alpha=n * lam, fit_intercept=False, solver="svd").fit(za, zb).coef_  # (d_b, d_a)
    assert amap.W.shape == ref.shape == (d_b, d_a)
    np.testing.assert_allclose(amap.W, ref, rtol=1e-4, atol=1e-5)
    assert amap.method == "ridge" and amap.lam == pytest.approx(lam)


def test_ridge_is_not_fitted_on_unstandardised_data():
    """Guard: the same sklearn Ridge on raw (centred, unscaled) data gives a different W."""
    rng = np.random.default_rng(3)
    n = 80
    x = _heteroscedastic(rng, n, 4)
    y = x @ rng.normal(size=(4, 3)) + 5.0
    amap = fit_map(x, y, np.arange(n), lam=0.1)
    raw = Ridge(alpha=n * 0.1, fit_intercept=True).fit(x, y).coef_
    assert not np.allclose(amap.W, raw, atol=1e-2)


# ---------------------------------------------------------------- lstsq

def _record_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, caught


def test_lstsq_full_rank_matches_numpy_and_does_not_warn():
    rng = np.random.default_rng(4)
    n, d_a, d_b = 200, 6, 4
    x, y = _heteroscedastic(rng, n, d_a), _heteroscedastic(rng, n, d_b)
    amap, caught = _record_warnings(lambda: fit_map(x, y, np.arange(n), method="lstsq"))
    assert not [w for w in caught if issubclass(w.category, IllConditionedWarning)]
    ref = np.linalg.lstsq(_pop_standardise(x), _pop_standardise(y), rcond=None)[0].T
    np.testing.assert_allclose(amap.W, ref, rtol=1e-4, atol=1e-5)
    assert amap.lam == 0.0 and amap.method == "lstsq"
    assert np.isfinite(amap.info["kappa_caa"])


def test_lstsq_singular_n_less_than_d_is_minimum_norm_and_warns_with_kappa():
    rng = np.random.default_rng(5)
    n, d_a, d_b = 12, 30, 5
    x, y = _heteroscedastic(rng, n, d_a), _heteroscedastic(rng, n, d_b)
    amap, caught = _record_warnings(lambda: fit_map(x, y, np.arange(n), method="lstsq"))
    ill = [w for w in caught if issubclass(w.category, IllConditionedWarning)]
    assert len(ill) == 1
    assert "κ" in str(ill[0].message)
    za, zb = _pop_standardise(x), _pop_standardise(y)
    ref = np.linalg.lstsq(za, zb, rcond=None)[0].T  # minimum-norm solution
    assert np.all(np.isfinite(amap.W))
    np.testing.assert_allclose(amap.W, ref, rtol=1e-4, atol=1e-5)
    # n < d_a: the train pairs are interpolated exactly
    np.testing.assert_allclose(za @ amap.W.T, zb, atol=1e-4)


def test_lstsq_collinear_features_is_minimum_norm():
    rng = np.random.default_rng(6)
    n = 100
    x = rng.normal(size=(n, 5))
    x[:, 3] = 2.0 * x[:, 1] + 1.0  # identical after standardisation
    y = x[:, :3] @ rng.normal(size=(3, 2)) + 0.1 * rng.normal(size=(n, 2))
    amap, caught = _record_warnings(lambda: fit_map(x, y, np.arange(n), method="lstsq"))
    assert any(issubclass(w.category, IllConditionedWarning) for w in caught)
    ref = np.linalg.lstsq(_pop_standardise(x), _pop_standardise(y), rcond=None)[0].T
    np.testing.assert_allclose(amap.W, ref, rtol=1e-4, atol=1e-5)
    # minimum norm splits the weight equally between the two identical columns
    np.testing.assert_allclose(amap.W[:, 1], amap.W[:, 3], atol=1e-5)


def test_lstsq_fallback_to_ridge_when_fewer_pairs_than_dimensions():
    rng = np.random.default_rng(17)
    n, d_a, d_b = 12, 30, 5
    x, y = _heteroscedastic(rng, n, d_a), _heteroscedastic(rng, n, d_b)
    amap, caught = _record_warnings(lambda: fit_map(x, y, np.arange(n), method="lstsq", lstsq_fallback=True))
    ill = [w for w in caught if issubclass(w.category, IllConditionedWarning)]
    assert len(ill) == 1
    msg = str(ill[0].message)
    assert "κ(C_aa)" in msg and "falling back to ridge" in msg and "n_train = 12 < d_a = 30" in msg
    assert amap.method == "ridge" and amap.lam == pytest.approx(1e-3)
    assert amap.info["requested_method"] == "lstsq" and amap.info["kappa_caa"] > 1e8
    ref = Ridge(alpha=n * 1e-3, fit_intercept=False, solver="svd").fit(_pop_standardise(x), _pop_standardise(y))
    np.testing.assert_allclose(amap.W, ref.coef_, rtol=1e-4, atol=1e-5)
    # with at least as many pairs as dimensions the flag changes nothing
    x2, y2 = _heteroscedastic(rng, 200, 6), _heteroscedastic(rng, 200, 4)
    plain = fit_map(x2, y2, np.arange(200), method="lstsq")
    flagged = fit_map(x2, y2, np.arange(200), method="lstsq", lstsq_fallback=True)
    assert flagged.method == "lstsq" and np.array_equal(flagged.W, plain.W)


# ---------------------------------------------------------------- procrustes

def test_procrustes_square_matches_scipy():
    rng = np.random.default_rng(7)
    n, d = 120, 6
    x, y = _heteroscedastic(rng, n, d), _heteroscedastic(rng, n, d)
    amap = fit_map(x, y, np.arange(n), method="procrustes")
    za, zb = _pop_standardise(x), _pop_standardise(y)
    r, _ = scipy.linalg.orthogonal_procrustes(za, zb)  # za @ r ≈ zb, so z_b ≈ rᵀ z_a
    np.testing.assert_allclose(amap.W, r.T, atol=1e-5)
    np.testing.assert_allclose(amap.W @ amap.W.T, np.eye(d), atol=1e-5)
    assert amap.lam == 0.0


@pytest.mark.parametrize("d_a,d_b", [(7, 4), (4, 7)])
def test_procrustes_rectangular_is_semi_orthogonal_polar_factor_and_optimal(d_a, d_b):
    rng = np.random.default_rng(8)
    n = 150
    x, y = _heteroscedastic(rng, n, d_a), _heteroscedastic(rng, n, d_b)
    amap = fit_map(x, y, np.arange(n), method="procrustes")
    za, zb = _pop_standardise(x), _pop_standardise(y)
    w = amap.W.astype(np.float64)
    assert w.shape == (d_b, d_a)
    small = w.T @ w if d_a <= d_b else w @ w.T
    np.testing.assert_allclose(small, np.eye(min(d_a, d_b)), atol=1e-5)
    u, _ = scipy.linalg.polar(zb.T @ za)  # unitary polar factor of ẐbᵀẐa
    np.testing.assert_allclose(w, u, atol=1e-5)
    # W maximises the Procrustes objective tr(W ẐaᵀẐb) = <W, ẐbᵀẐa> among semi-orthogonal maps
    # (for d_a <= d_b that is the same as minimising ‖Ẑb − Ẑa Wᵀ‖, since ‖Ẑa Wᵀ‖ is then constant)
    cross = zb.T @ za
    best = np.sum(w * cross)
    best_resid = np.sum((zb - za @ w.T) ** 2)
    for _ in range(50):
        g = rng.normal(size=(d_b, d_a))
        q, _s, vt = np.linalg.svd(g, full_matrices=False)
        cand = q @ vt
        assert best >= np.sum(cand * cross) - 1e-6
        if d_a <= d_b:
            assert best_resid <= np.sum((zb - za @ cand.T) ** 2) + 1e-6


def test_procrustes_warns_when_the_cross_covariance_is_rank_deficient():
    """n_train < d: C_ab has rank < d, the orthogonal map is not unique there, and the fit says so."""
    import warnings

    from sjalign.align import IllConditionedWarning

    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(6, 10)), rng.normal(size=(6, 10))  # rank(C_ab) <= n - 1 = 5 after centring
    with pytest.warns(IllConditionedWarning, match="rank 5 < min"):
        amap = fit_map(x, y, np.arange(6), method="procrustes")
    assert amap.info["c_ab_rank"] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-posed fit is silent
        fit_map(rng.normal(size=(100, 4)), rng.normal(size=(100, 4)), np.arange(100), method="procrustes")


# ---------------------------------------------------------------- planted ground truth

@pytest.mark.parametrize("method", ["ridge", "lstsq", "procrustes"])
def test_planted_rotation_is_recovered(method):
    rng = np.random.default_rng(9)
    n, d = 4000, 6
    z = _whiten(rng.normal(size=(n, d)))
    q = _random_orthogonal(d, rng)
    sa, ma = rng.uniform(0.5, 4.0, d), rng.uniform(-5, 5, d)
    sb, mb = rng.uniform(0.5, 4.0, d), rng.uniform(-5, 5, d)
    x = z * sa + ma
    y = (z @ q.T + 0.01 * rng.normal(size=(n, d))) * sb + mb
    lam = 1e-4 if method == "ridge" else 0.0
    amap = fit_map(x, y, np.arange(n), method=method, lam=lam)
    np.testing.assert_allclose(amap.W, q, atol=5e-3)


# ---------------------------------------------------------------- streaming

def _assert_moments_close(m1: Moments, m2: Moments):
    assert m1.n == m2.n
    for name in ("sum_x", "sum_y", "sum_xx", "sum_xy", "sum_yy_diag"):
        np.testing.assert_allclose(getattr(m1, name), getattr(m2, name), rtol=1e-12, atol=1e-9, err_msg=name)


def test_moments_of_shards_add_up_to_the_whole():
    rng = np.random.default_rng(10)
    x, y = _heteroscedastic(rng, 301, 5), _heteroscedastic(rng, 301, 3)
    cuts = [0, 40, 41, 190, 301]
    shards = [accumulate(x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    total = shards[0] + shards[1] + shards[2] + shards[3]
    whole = accumulate(x, y)
    _assert_moments_close(total, whole)
    # and against sums written out
    np.testing.assert_allclose(whole.sum_xx, x.T @ x, rtol=1e-12)
    np.testing.assert_allclose(whole.sum_xy, x.T @ y, rtol=1e-12)
    np.testing.assert_allclose(whole.sum_yy_diag, (y**2).sum(0), rtol=1e-12)
    np.testing.assert_allclose(whole.sum_x, x.sum(0), rtol=1e-12)


def test_accumulate_small_chunks_equals_one_chunk_and_same_map():
    rng = np.random.default_rng(11)
    x, y = _heteroscedastic(rng, 257, 6), _heteroscedastic(rng, 257, 4)
    _assert_moments_close(accumulate(x, y, chunk=7), accumulate(x, y, chunk=10_000))
    w_small = fit_map(x, y, np.arange(257), chunk=5).W
    w_big = fit_map(x, y, np.arange(257)).W
    np.testing.assert_allclose(w_small, w_big, rtol=1e-5, atol=1e-6)


def test_moments_shape_errors():
    with pytest.raises(ShapeError):
        accumulate(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ShapeError):
        Moments.zeros(2, 3) + Moments.zeros(3, 3)
    with pytest.raises(ShapeError):
        Moments.zeros(2, 3).update(np.zeros((4, 2)), np.zeros((5, 3)))
    with pytest.raises(SjalignError):
        accumulate(np.zeros((1, 2)), np.zeros((1, 2))).standardised()


# ---------------------------------------------------------------- constant features

@pytest.mark.parametrize("method", ["ridge", "lstsq", "procrustes"])
def test_zero_constant_features_are_listed_and_give_no_nan(method):
    rng = np.random.default_rng(12)
    n = 100
    x, y = rng.normal(size=(n, 5)), rng.normal(size=(n, 4))
    y[:, :4] += x[:, :4]
    x[:, 2] = 0.0
    y[:, 1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedWarning)
        amap = fit_map(x, y, np.arange(n), method=method)
    assert amap.info["constant_a"] == [2]
    assert amap.info["constant_b"] == [1]
    assert np.all(np.isfinite(amap.W)) and np.all(np.isfinite(amap.a_std)) and np.all(np.isfinite(amap.b_std))
    assert amap.a_std[2] == 1.0 and amap.b_std[1] == 1.0
    if method != "procrustes":
        np.testing.assert_allclose(amap.W[:, 2], 0.0, atol=1e-7)  # a constant input carries no signal
        np.testing.assert_allclose(amap.W[1, :], 0.0, atol=1e-7)  # a constant output is predicted by its mean
    x_new = rng.normal(size=(10, 5))
    x_new[:, 2] = 0.0
    out = amap.apply(x_new.astype(np.float32))
    assert np.all(np.isfinite(out))
    if method != "procrustes":
        np.testing.assert_allclose(out[:, 1], 0.0, atol=1e-6)


@pytest.mark.parametrize("value,n", [(3.7, 50), (0.1, 1000), (-2.3, 50)])
def test_nonzero_constant_feature_is_listed(value, n):
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(n, 4)), rng.normal(size=(n, 3))
    x[:, 2] = value
    std = accumulate(x, y).standardised()
    assert std.constant_a.tolist() == [2]
    assert std.a_std[2] == 1.0
    assert abs(std.c_aa[2, 2]) < 1e-8  # a constant feature is 0 after centring, so its C_aa entry is 0


# ---------------------------------------------------------------- λ by cross-validation

def test_choose_lambda_prefers_more_shrinkage_for_noise():
    rng = np.random.default_rng(14)
    n, d_a, d_b = 200, 10, 4
    x = rng.normal(size=(n, d_a))
    clean = x @ rng.normal(size=(d_a, d_b)) + 0.01 * rng.normal(size=(n, d_b))
    noise = rng.normal(size=(n, d_b))
    lam_clean, scores_clean = choose_lambda(x, clean, seed=0)
    lam_noise, scores_noise = choose_lambda(x, noise, seed=0)
    assert lam_noise > lam_clean
    assert lam_clean <= 1e-2
    assert min(scores_clean.values()) < 0.01 < min(scores_noise.values())
    assert scores_clean[lam_clean] == min(scores_clean.values())
    amap = fit_map(x, noise, np.arange(n), lam="auto")
    assert amap.lam == pytest.approx(lam_noise)
    assert "lambda_cv_mse" in amap.info


def test_choose_lambda_and_fit_map_reject_bad_input():
    x = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(SjalignError):
        choose_lambda(x, x, folds=5)  # needs 2 * folds rows
    with pytest.raises(SjalignError):
        fit_map(x, x, np.arange(6), method="lstsq", lam="auto")
    with pytest.raises(SjalignError):
        fit_map(x, x, np.arange(6), method="nonsense")
    with pytest.raises(SjalignError):
        fit_map(x, x, np.arange(6), lam=-1.0)
    with pytest.raises(ShapeError):
        fit_map(x, x[:5], np.arange(6))


# ---------------------------------------------------------------- applying maps

def test_apply_matches_spec_formula():
    rng = np.random.default_rng(15)
    n, d_a, d_b = 90, 5, 3
    x, y = _heteroscedastic(rng, n, d_a), _heteroscedastic(rng, n, d_b)
    amap = fit_map(x, y, np.arange(n), lam=0.05)
    x_new = _heteroscedastic(rng, 11, d_a)
    a_mean, a_std = x.mean(0), x.std(0)
    b_mean, b_std = y.mean(0), y.std(0)
    expected = ((x_new - a_mean) / a_std) @ amap.W.astype(np.float64).T * b_std + b_mean
    out = amap.apply(x_new)
    assert out.shape == (11, d_b) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(amap.predict_standardised(x_new), ((x_new - a_mean) / a_std) @ amap.W.T,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ShapeError):
        amap.apply(x_new[:, :4])
    with pytest.raises(ShapeError):
        amap.apply(x_new[0])


@pytest.mark.parametrize("d_a,d_b", [(5, 5), (4, 6)])
def test_pseudo_inverse_undoes_a_well_conditioned_map(d_a, d_b):
    rng = np.random.default_rng(16)
    n = 500
    x = _heteroscedastic(rng, n, d_a)
    mix = rng.normal(size=(d_a, d_b)) + 2.0 * np.eye(d_a, d_b)
    y = x @ mix + rng.uniform(-3, 3, d_b)
    amap = fit_map(x, y, np.arange(n), method="lstsq")
    inv = pseudo_inverse(amap)
    assert inv.W.shape == (d_a, d_b)
    np.testing.assert_allclose(inv.W.astype(np.float64) @ amap.W, np.eye(d_a), atol=1e-4)
    np.testing.assert_allclose(inv.a_mean, amap.b_mean)
    np.testing.assert_allclose(inv.b_std, amap.a_std)
    x_new = _heteroscedastic(rng, 20, d_a)
    round_trip = inv.apply(amap.apply(x_new))
    np.testing.assert_allclose(round_trip, x_new, rtol=1e-3, atol=1e-3 * np.abs(x_new).max())


def test_alignment_map_dimensions():
    w = np.zeros((3, 5), dtype=np.float32)
    amap = AlignmentMap(w, np.zeros(5), np.ones(5), np.zeros(3), np.ones(3), np.arange(4), "ridge", 0.1)
    assert (amap.d_a, amap.d_b) == (5, 3)
