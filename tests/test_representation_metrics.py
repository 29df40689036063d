"""Tests of sjalign.metrics.representation against independent references and planted truth.

References: singular values from the eigenvalues of zᵀz, planted covariance spectra,
scikit-learn's KNeighborsClassifier (cosine, brute, exp(sim / T) weights) and a
StandardScaler + LogisticRegression pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from sjalign.metrics.representation import knn_accuracy, linear_probe_accuracy, participation_ratio, rankme


def _orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _rankme_reference(z: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe with σ = sqrt(eig(zᵀz)), the top min(n, d) of them."""
    lam = np.sort(np.linalg.eigvalsh(z.T @ z))[::-1][: min(z.shape)]
    s = np.sqrt(np.clip(lam, 0, None))
    p = s / s.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def _clusters(rng, n_per: int, labels, d: int = 8, spread: float = 1.0, centre_seed: int = 0):
    """Gaussian blobs around centres fixed by ``centre_seed``, one per label; returns z (n, d), y (n,)."""
    centres = np.random.default_rng(centre_seed).normal(size=(len(labels), d)) * 1.5
    z = np.concatenate([c + spread * rng.normal(size=(n_per, d)) for c in centres])
    y = np.repeat(np.asarray(labels, dtype=np.int64), n_per)
    perm = rng.permutation(len(y))
    return z[perm], y[perm]


# ----------------------------------------------------------------------------- rankme

@pytest.mark.parametrize("r", [1, 3, 7, 10])
def test_rankme_planted_equal_singular_values(r):
    rng = np.random.default_rng(r)
    n, d = 40, 10
    u = _orthogonal(n, rng)[:, :r]  # (n, r)
    z = 3.0 * u @ _orthogonal(d, rng)[:r]  # r singular values, all 3
    eps, m = 1e-7, min(n, d)
    p = np.r_[np.full(r, 1 / r + eps), np.full(m - r, eps)]
    planted = min(float(np.exp(-np.sum(p * np.log(p)))), m)  # r, up to the eps terms; clipped at m
    assert rankme(z, eps=eps) == pytest.approx(planted, rel=1e-9)
    assert abs(rankme(z) / r - 1) < m * eps * -np.log(eps)  # each zero σ adds ~eps·|log eps| to the entropy
    assert rankme(torch.from_numpy(z).float()) == pytest.approx(planted, rel=1e-6)


def test_rankme_matches_eigen_reference_and_is_not_centred():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(200, 12)) @ np.diag(np.linspace(0.1, 3, 12))
    assert rankme(z) == pytest.approx(_rankme_reference(z), rel=1e-6)
    shifted = z + 50.0  # a large common offset dominates the uncentred spectrum
    assert rankme(shifted) == pytest.approx(_rankme_reference(shifted), rel=1e-6)
    assert rankme(shifted) < rankme(z) - 1


def test_rankme_bounds_and_zero():
    rng = np.random.default_rng(2)
    assert 1.0 <= rankme(rng.normal(size=(5, 30))) <= 5.0
    assert rankme(np.outer(rng.normal(size=50), rng.normal(size=6))) == pytest.approx(1.0, abs=1e-4)
    assert rankme(np.eye(6)) == 6.0  # clipped: eps would push it a hair above 6
    assert rankme(np.zeros((4, 3))) == 1.0


# ----------------------------------------------------------------------------- participation ratio

def test_participation_ratio_isotropic():
    z = np.random.default_rng(3).normal(size=(20000, 16))
    assert participation_ratio(z) == pytest.approx(16.0, abs=0.5)


def test_participation_ratio_planted_spectrum():
    rng = np.random.default_rng(4)
    n, d = 500, 8
    g = rng.normal(size=(n, 3))
    q, _ = np.linalg.qr(g - g.mean(axis=0))  # (n, 3) orthonormal, centred columns
    z = np.sqrt(n) * q @ np.diag([2.0, 1.0, 1.0]) @ _orthogonal(d, rng)[:3] + rng.normal(size=d)
    assert participation_ratio(z) == pytest.approx(6.0**2 / 18.0, rel=1e-10)  # eigenvalues 4, 1, 1, 0...


def test_participation_ratio_rotation_scale_invariant():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(300, 10)) @ np.diag(np.linspace(0.2, 4, 10))
    ref = participation_ratio(z)
    assert participation_ratio(z @ _orthogonal(10, rng)) == pytest.approx(ref, rel=1e-10)
    assert participation_ratio(7.0 * z - 3.0) == pytest.approx(ref, rel=1e-10)
    assert participation_ratio(torch.from_numpy(z)) == pytest.approx(ref, rel=1e-12)


def test_participation_ratio_no_variance():
    assert participation_ratio(np.full((30, 5), 0.1)) == 0.0
    assert participation_ratio(np.tile([0.1, 0.7, -3.3], (17, 1))) == 0.0
    assert participation_ratio(np.ones((1, 4))) == 0.0


# ----------------------------------------------------------------------------- kNN

@pytest.mark.parametrize("k, temperature", [(1, 0.07), (5, 0.07), (20, 0.07), (20, 0.5)])
def test_knn_matches_sklearn(k, temperature):
    rng = np.random.default_rng(6)
    labels = [3, 7, 11]
    ztr, ytr = _clusters(rng, 150, labels, spread=1.6)
    zte, yte = _clusters(np.random.default_rng(60), 100, labels, spread=1.6)
    ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=lambda dist: np.exp((1 - dist) / temperature)).fit(ztr, ytr)
    expected = float(np.mean(ref.predict(zte) == yte))
    assert 0.4 < expected < 0.98  # a non-trivial problem, so agreement means something
    assert knn_accuracy(ztr, ytr, zte, yte, k=k, temperature=temperature) == expected


def test_knn_weights_decide_between_near_few_and_far_many():
    # two close train rows of label 5, three farther ones of label 9
    train = np.array([[1.0, 0.05], [1.0, -0.05], [1.0, 0.9], [1.0, -0.9], [1.0, 1.0]])
    y = np.array([5, 5, 9, 9, 9])
    test, yt = np.array([[1.0, 0.0]]), np.array([5])
    assert knn_accuracy(train, y, test, yt, k=5, temperature=0.07) == 1.0  # sharp weights: near ones win
    assert knn_accuracy(train, y, test, yt, k=5, temperature=100.0) == 0.0  # ~uniform: majority wins


def test_knn_k_clipped_and_chunk_invariant():
    rng = np.random.default_rng(7)
    ztr, ytr = _clusters(rng, 10, [0, -4], spread=2.0)
    zte, yte = _clusters(rng, 40, [0, -4], spread=2.0)
    assert knn_accuracy(ztr, ytr, zte, yte, k=1000) == knn_accuracy(ztr, ytr, zte, yte, k=len(ytr))
    big = _clusters(rng, 200, [1, 2, 3], spread=1.5)
    test = _clusters(rng, 50, [1, 2, 3], spread=1.5)
    accs = {knn_accuracy(*big, *test, chunk=c) for c in (1, 7, 64, 1024)}
    assert len(accs) == 1


def test_knn_torch_inputs_and_unseen_test_label():
    rng = np.random.default_rng(8)
    ztr, ytr = _clusters(rng, 50, [1, 2], spread=0.1)
    zte, yte = _clusters(rng, 20, [1, 2], spread=0.1)
    acc = knn_accuracy(torch.from_numpy(ztr), torch.from_numpy(ytr), torch.from_numpy(zte), torch.from_numpy(yte))
    assert acc == knn_accuracy(ztr, ytr, zte, yte) == 1.0
    assert knn_accuracy(ztr, ytr, zte, np.full(len(yte), 99)) == 0.0


# ----------------------------------------------------------------------------- linear probe

def test_linear_probe_matches_sklearn_pipeline():
    rng = np.random.default_rng(9)
    labels = [10, 20, 30, 40]
    ztr, ytr = _clusters(rng, 80, labels, d=6, spread=1.8)
    zte, yte = _clusters(rng, 60, labels, d=6, spread=1.8)
    ztr[:, 2], zte[:, 2] = 4.0, 4.0  # a constant feature: std 0 -> 1 on both sides
    ztr *= np.array([1, 100, 1, 0.01, 5, 1])  # scales that standardisation must undo
    zte *= np.array([1, 100, 1, 0.01, 5, 1])
    scaler = StandardScaler().fit(ztr)
    clf = LogisticRegression(C=0.5, max_iter=1000, random_state=3).fit(scaler.transform(ztr), ytr)
    expected = float(np.mean(clf.predict(scaler.transform(zte)) == yte))
    assert 0.4 < expected < 0.98
    assert linear_probe_accuracy(ztr, ytr, zte, yte, c=0.5, seed=3) == expected


def test_linear_probe_separable():
    rng = np.random.default_rng(10)
    ztr, ytr = _clusters(rng, 40, [-1, 6], d=4, spread=0.05)
    zte, yte = _clusters(np.random.default_rng(10), 40, [-1, 6], d=4, spread=0.05)
    assert linear_probe_accuracy(ztr, ytr, zte, yte) == 1.0


# ----------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("z", [np.zeros(5), np.zeros((0, 3)), np.zeros((3, 0)), np.zeros((2, 2, 2)),
                               np.array([[1.0, np.nan]])])
def test_spectral_bad_inputs(z):
    with pytest.raises(ValueError):
        rankme(z)
    with pytest.raises(ValueError):
        participation_ratio(z)


@pytest.mark.parametrize("fn", [knn_accuracy, linear_probe_accuracy])
def test_labelled_bad_inputs(fn):
    rng = np.random.default_rng(11)
    z, y = rng.normal(size=(10, 3)), np.arange(10) % 2
    with pytest.raises(ValueError):  # widths differ
        fn(z, y, rng.normal(size=(10, 4)), y)
    with pytest.raises(ValueError):  # labels do not match rows
        fn(z, y[:9], z, y)
    with pytest.raises(ValueError):
        fn(z, y, z, y.reshape(5, 2))
    with pytest.raises(ValueError):  # empty
        fn(z[:0], y[:0], z, y)
    with pytest.raises(ValueError):
        fn(z, y, z[:0], y[:0])
    with pytest.raises(ValueError):  # non-finite
        fn(np.where(z > 1, np.inf, z), y, z, y)


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"temperature": 0.0}, {"temperature": -1.0}, {"chunk": 0}])
def test_knn_bad_options(kwargs):
    z, y = np.random.default_rng(12).normal(size=(10, 3)), np.arange(10) % 2
    with pytest.raises(ValueError):
        knn_accuracy(z, y, z, y, **kwargs)


def test_linear_probe_one_class():
    z = np.random.default_rng(13).normal(size=(10, 3))
    with pytest.raises(ValueError):
        linear_probe_accuracy(z, np.zeros(10, dtype=np.int64), z, np.zeros(10, dtype=np.int64))
