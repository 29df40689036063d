"""Tests of sjalign.probe: composing a probe with a map, zero-gradient transfer (SPEC §5)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from sjalign.align import fit_map, pseudo_inverse
from sjalign.align.pairing import Pairs
from sjalign.errors import SjalignError
from sjalign.probe import LinearHead, compose_head, train_probe, transfer_probe


def _orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _planted(n_classes: int, *, seed: int = 0, n: int = 900, d: int = 6):
    """Source latents with class clusters; target b = a A + c with A invertible and mixing.

    Returns (pairs, train mask, A).
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    centres = rng.normal(size=(n_classes, d)) * 1.2
    a = rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, d) + centres[labels] + rng.uniform(-4, 4, d)
    # mixing: rotation · diag · rotation with condition number 4
    mix = _orthogonal(d, rng) @ np.diag(np.linspace(0.5, 2.0, d)) @ _orthogonal(d, rng)
    b = a @ mix + rng.uniform(-10, 10, d)
    pairs = Pairs(a.astype(np.float32), b.astype(np.float32), np.arange(100, 100 + n, dtype=np.int64),
                  labels.astype(np.int64), None, 0, 0)
    train = np.zeros(n, dtype=bool)
    train[rng.permutation(n)[: int(0.75 * n)]] = True
    return pairs, train, mix


def test_compose_head_equals_step_by_step_logits():
    rng = np.random.default_rng(1)
    n, d_a, d_b, c = 300, 4, 6, 3
    a = rng.normal(size=(n, d_a)) * 2 + 1
    b = np.hstack([a, rng.normal(size=(n, 2))]) @ rng.normal(size=(d_b, d_b)) + rng.uniform(-5, 5, d_b)
    m = fit_map(b, a, np.arange(n), lam=0.01)  # target -> source, W (d_a, d_b)
    assert m.W.shape == (d_a, d_b)
    head = LinearHead(rng.normal(size=(c, d_a)).astype(np.float32), rng.normal(size=c).astype(np.float32),
                      np.array([3, 7, 9], dtype=np.int64))
    moved = compose_head(head, m)
    assert moved.weight.shape == (c, d_b) and moved.bias.shape == (c,)
    np.testing.assert_array_equal(moved.classes, head.classes)
    b_new = rng.normal(size=(25, d_b)) * 3
    # step by step: standardise b with train statistics, map to source coordinates, apply the head
    zb = (b_new - b.mean(0)) / b.std(0)
    za_hat = zb @ m.W.astype(np.float64).T
    expected = za_hat @ head.weight.astype(np.float64).T + head.bias
    got = b_new @ moved.weight.astype(np.float64).T + moved.bias
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(moved.predict(b_new), head.classes[np.argmax(expected, 1)])


def test_linear_head_predict_and_accuracy():
    head = LinearHead(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), np.zeros(2, dtype=np.float32),
                      np.array([5, 8]))
    x = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5]])
    np.testing.assert_array_equal(head.predict(x), [5, 8, 5])
    assert head.accuracy(x, np.array([5, 8, 8])) == pytest.approx(2 / 3)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_train_probe_agrees_with_sklearn(n_classes):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, n_classes, 300) * 10  # non-contiguous class labels
    z = rng.normal(size=(300, 5)) + rng.normal(size=(n_classes, 5))[labels // 10] * 1.5
    head = train_probe(z, labels, seed=0)
    assert head.weight.shape == (n_classes, 5) and head.bias.shape == (n_classes,)
    np.testing.assert_array_equal(head.classes, np.arange(n_classes) * 10)
    ref = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(z, labels)
    np.testing.assert_array_equal(head.predict(z), ref.predict(z))
    with pytest.raises(SjalignError):
        train_probe(z, np.zeros(300, dtype=np.int64))


@pytest.mark.parametrize("n_classes", [2, 4])
def test_transfer_through_planted_linear_relation(n_classes):
    pairs, train, _ = _planted(n_classes)
    test = ~train
    m = fit_map(pairs.y[train], pairs.x[train], pairs.state_ids[train], method="lstsq")  # target -> source
    res = transfer_probe(pairs, train, m)
    assert res["source_acc"] > 0.8
    assert abs(res["transferred_acc"] - res["source_acc"]) <= 0.01  # exact relation: same predictions
    assert abs(res["target_acc"] - res["source_acc"]) <= 0.05
    assert res["a_probe_acc"] is not None and res["a_probe_acc"] < res["source_acc"] - 0.1
    assert res["target_gradient_steps"] == 0
    assert res["n_classes"] == n_classes
    assert res["n_train"] == train.sum() and res["n_test"] == test.sum()
    counts = np.bincount(pairs.labels[test])
    assert res["chance"] == pytest.approx(counts.max() / counts.sum())
    # the returned head works on raw target latents and gives the transferred accuracy
    head = res["head"]
    assert head.weight.shape == (n_classes, pairs.y.shape[1])
    assert head.accuracy(pairs.y[test], pairs.labels[test]) == pytest.approx(res["transferred_acc"])
    # the source accuracy is that of a probe trained independently on train-standardised source latents
    xa = pairs.x.astype(np.float64)
    za = (xa - xa[train].mean(0)) / xa[train].std(0)
    ref = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(za[train], pairs.labels[train])
    assert res["source_acc"] == pytest.approx(np.mean(ref.predict(za[test]) == pairs.labels[test]), abs=0.01)


def test_transfer_through_pseudo_inverse_of_forward_map():
    pairs, train, _ = _planted(3, seed=3)
    fwd = fit_map(pairs.x[train], pairs.y[train], pairs.state_ids[train], method="lstsq")  # source -> target
    res = transfer_probe(pairs, train, pseudo_inverse(fwd))
    assert abs(res["transferred_acc"] - res["source_acc"]) <= 0.02


def test_transfer_with_other_maps_and_rectangular_target():
    rng = np.random.default_rng(4)
    pairs, train, _ = _planted(3, seed=4)
    # a wider target: the planted target plus 3 pure-noise features
    y = np.hstack([pairs.y, rng.normal(size=(len(pairs.y), 3)).astype(np.float32)])
    wide = Pairs(pairs.x, y, pairs.state_ids, pairs.labels, None, 0, 0)
    m = fit_map(y[train], pairs.x[train], pairs.state_ids[train], lam=1e-4)
    bad = fit_map(rng.normal(size=(int(train.sum()), 9)), pairs.x[train], pairs.state_ids[train])
    res = transfer_probe(wide, train, m, other_maps={"noise": bad})
    assert res["a_probe_acc"] is None  # d_a != d_b
    assert abs(res["transferred_acc"] - res["source_acc"]) <= 0.02
    assert res["transferred_acc_noise"] < res["source_acc"] - 0.2


def test_transfer_errors():
    pairs, train, _ = _planted(3, n=120)
    m = fit_map(pairs.y[train], pairs.x[train], pairs.state_ids[train])
    unlabelled = Pairs(pairs.x, pairs.y, pairs.state_ids, None, None, 0, 0)
    with pytest.raises(SjalignError, match="labels"):
        transfer_probe(unlabelled, train, m)
    forward = fit_map(pairs.x[train], pairs.y[train][:, :4], pairs.state_ids[train])  # wrong shape (4, 6)
    narrow = Pairs(pairs.x, pairs.y[:, :4], pairs.state_ids, pairs.labels, None, 0, 0)
    with pytest.raises(SjalignError):
        transfer_probe(narrow, train, forward)
