"""Tests of sjalign.protocol: split choice, evaluation beside the shuffled-pair null (SPEC §3-§4)."""

from __future__ import annotations

import warnings

import json

import numpy as np
import pytest
from sklearn.metrics import r2_score

from sjalign.align import fit_map, shuffled_map
from sjalign.align.pairing import Pairs
from sjalign.cli.common import FLAGS
from sjalign.errors import OptionError, SjalignError
from sjalign.protocol import choose_split, evaluate_pairs, fit_on_split, null_r2_distribution

CPU = "cpu"


def _pairs(n=300, d_a=8, d_b=6, *, noise=0.05, seed=0, split=None, ids=None, rank=None):
    rng = np.random.default_rng(seed)
    if rank is None:
        x = rng.normal(size=(n, d_a)) * rng.uniform(0.5, 3, d_a) + rng.uniform(-5, 5, d_a)
    else:  # nearly rank-deficient latents
        x = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d_a)) + 1e-3 * rng.normal(size=(n, d_a))
    y = x @ rng.normal(size=(d_a, d_b)) + noise * rng.normal(size=(n, d_b)) * 3 + 2.0
    ids = np.arange(500, 500 + n, dtype=np.int64) if ids is None else ids
    return Pairs(x.astype(np.float32), y.astype(np.float32), ids, None, split, 0, 0)


# ---------------------------------------------------------------- split choice

def test_choose_split_priority_map_ids_then_file_split_then_random():
    n = 100
    file_split = np.zeros(n, dtype=np.uint8)
    file_split[::4] = 1  # 25 test rows
    pairs = _pairs(n, split=file_split)
    ids = pairs.state_ids
    map_ids = ids[np.r_[0:30, 50:90]]
    s = choose_split(pairs, train_state_ids=map_ids, test_fraction=0.5, seed=3)
    np.testing.assert_array_equal(s.train, np.isin(ids, map_ids))
    np.testing.assert_array_equal(s.test, ~np.isin(ids, map_ids))
    assert "map" in s.how
    s = choose_split(pairs, test_fraction=0.5, seed=3)
    np.testing.assert_array_equal(s.train, file_split == 0)
    assert "split" in s.how
    no_split = Pairs(pairs.x, pairs.y, ids, None, None, 0, 0)
    s = choose_split(no_split, test_fraction=0.2, seed=3)
    assert s.test.sum() == 20 and np.array_equal(s.test, ~s.train)
    assert not np.array_equal(s.train, file_split == 0)


def test_random_split_is_seeded_and_by_state_id():
    n = 200
    pairs = _pairs(n, ids=np.arange(n, dtype=np.int64) * 7 + 3)
    a = choose_split(pairs, test_fraction=0.25, seed=1)
    b = choose_split(pairs, test_fraction=0.25, seed=1)
    c = choose_split(pairs, test_fraction=0.25, seed=2)
    np.testing.assert_array_equal(a.train, b.train)
    assert not np.array_equal(a.train, c.train)
    assert a.test.sum() == 50
    # the split follows the state ids, not the row order
    order = np.random.default_rng(0).permutation(n)
    shuffled = Pairs(pairs.x[order], pairs.y[order], pairs.state_ids[order], None, None, 0, 0)
    s = choose_split(shuffled, test_fraction=0.25, seed=1)
    assert set(shuffled.state_ids[s.test]) == set(pairs.state_ids[a.test])


def test_choose_split_errors():
    pairs = _pairs(50)
    with pytest.raises(SjalignError, match="missing"):
        choose_split(pairs, train_state_ids=np.r_[pairs.state_ids[:10], 99999])
    # a file split holding only train states (embed --split train) gives way to the seeded draw, with a warning
    all_train = Pairs(pairs.x, pairs.y, pairs.state_ids, None, np.zeros(50, dtype=np.uint8), 0, 0)
    with pytest.warns(UserWarning, match="mark all 50 paired states as train"):
        fallback = choose_split(all_train, test_fraction=0.2, seed=3)
    assert fallback.test.sum() == 10 and "seeded" in fallback.how
    with pytest.raises(SjalignError):
        choose_split(pairs, train_state_ids=pairs.state_ids)  # no test pairs left
    with pytest.raises(SjalignError):
        choose_split(pairs, test_fraction=0.0)


def test_fit_on_split_uses_train_statistics_only():
    pairs = _pairs(200)
    split = choose_split(pairs, seed=0)
    amap = fit_on_split(pairs, split, lam=0.01)
    x_tr = pairs.x[split.train].astype(np.float64)
    np.testing.assert_allclose(amap.a_mean, x_tr.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(amap.a_std, x_tr.std(0), rtol=1e-5)
    assert not np.allclose(amap.a_mean, pairs.x.astype(np.float64).mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.sort(amap.train_state_ids), np.sort(pairs.state_ids[split.train]))


# ---------------------------------------------------------------- evaluate

def test_evaluate_planted_linear_relation():
    pairs = _pairs(400)
    split = choose_split(pairs, seed=0)
    amap = fit_on_split(pairs, split)
    perms = 19
    res = evaluate_pairs(pairs, split, amap, ks=(1, 5, 10), permutations=perms, device=CPU)
    m, null = res["metrics"], res["null"]
    assert res["n_train"] == 320 and res["n_test"] == 80
    assert res["permutations"] == perms
    assert m["r2"] > 0.98
    assert res["r2_p_value"] == pytest.approx(1 / (perms + 1))
    assert null["r2"] <= 0.05
    assert m["retrieval@1"] >= 0.9 and null["retrieval@1"] < 0.2
    assert m["cka"] > 0.98 and m["dsc"] > 0.95
    assert m["nos@5"] < null["nos@5"]
    assert not {"cka_raw", "eff_rank_a", "eff_rank_b"} & set(null)  # figures of the latents alone: not the null's
    for key in ("mse", "r2", "cka", "cka_raw", "dsc", "nos@1", "nos@5", "nos@10", "retrieval@1",
                "procrustes_error", "kappa", "orth_dev", "eff_rank_a", "eff_rank_b"):
        assert key in m and (key in null) == (key not in ("cka_raw", "eff_rank_a", "eff_rank_b"))
    # r2 recomputed independently: test latents standardised with train statistics
    x_tr, y_tr = pairs.x[split.train].astype(np.float64), pairs.y[split.train].astype(np.float64)
    za = (pairs.x[split.test] - x_tr.mean(0)) / x_tr.std(0)
    zb = (pairs.y[split.test] - y_tr.mean(0)) / y_tr.std(0)
    ref = r2_score(zb, za @ amap.W.astype(np.float64).T, multioutput="variance_weighted")
    assert m["r2"] == pytest.approx(ref, abs=1e-5)
    # effective rank: participation ratio of the standardised train covariance
    za_tr = (x_tr - x_tr.mean(0)) / x_tr.std(0)
    lam = np.linalg.eigvalsh(za_tr.T @ za_tr / len(za_tr))
    assert m["eff_rank_a"] == pytest.approx(lam.sum() ** 2 / np.sum(lam**2), rel=1e-6)
    assert res["warnings"] == []


def test_evaluate_unrelated_latents_are_not_significant():
    rng = np.random.default_rng(5)
    n = 300
    pairs = Pairs(rng.normal(size=(n, 6)).astype(np.float32), rng.normal(size=(n, 4)).astype(np.float32),
                  np.arange(n, dtype=np.int64), None, None, 0, 0)
    split = choose_split(pairs, seed=0)
    res = evaluate_pairs(pairs, split, fit_on_split(pairs, split), ks=(1, 5), permutations=49, device=CPU)
    assert res["metrics"]["r2"] < 0.05
    assert res["r2_p_value"] > 0.05


def test_evaluate_warns_on_low_rank_and_constant_features():
    pairs = _pairs(300, d_a=40, d_b=6, rank=2)
    x = pairs.x.copy()
    x[:, 5] = 0.0
    pairs = Pairs(x, pairs.y, pairs.state_ids, None, None, 0, 0)
    split = choose_split(pairs, seed=0)
    res = evaluate_pairs(pairs, split, fit_on_split(pairs, split), ks=(1,), permutations=3, device=CPU)
    text = " ".join(res["warnings"])
    assert "rank" in text and "constant" in text
    assert res["metrics"]["eff_rank_a"] < 4


def test_evaluate_k_too_large_and_wrong_map_raise():
    pairs = _pairs(100)
    split = choose_split(pairs, seed=0)  # 20 test pairs
    amap = fit_on_split(pairs, split)
    for ks in ((1, 20), (25,), (0,)):
        with pytest.raises(SjalignError, match="k"):
            evaluate_pairs(pairs, split, amap, ks=ks, permutations=2, device=CPU)
    evaluate_pairs(pairs, split, amap, ks=(19,), permutations=2, device=CPU)  # n_test - 1 is fine
    other = fit_map(pairs.y[split.train], pairs.x[split.train], pairs.state_ids[split.train])  # b -> a
    with pytest.raises(SjalignError):
        evaluate_pairs(pairs, split, other, ks=(1,), permutations=2, device=CPU)


# ---------------------------------------------------------------- evaluate read in chunks (issue 15, part 6)

@pytest.mark.parametrize("method,lam", [("ridge", 1e-2), ("lstsq", 0.0), ("procrustes", 0.0)])
def test_evaluate_pairs_in_chunks_equals_the_whole_array_metrics(method, lam, monkeypatch):
    """The chunked evaluation gives score_map's figures on the whole standardised test arrays, for the
    map and for the shuffled-pair null refitted by shuffled_map (the in-memory definitions)."""
    import sjalign.protocol.gram as gram
    from sjalign.align import accumulate
    from sjalign.align.maps import solve_procrustes
    from sjalign.metrics import score_map
    from sjalign.protocol import neighbour_rows

    pairs = _pairs(600, d_a=9, d_b=7, noise=0.4, seed=3)
    split = choose_split(pairs, seed=1)
    amap = fit_on_split(pairs, split, method=method, lam=lam)
    monkeypatch.setattr(gram, "ROW_CHUNK", 37)  # many chunks, the last one partial
    kw = dict(ks=(1, 5), dsc_points=50, seed=0, device=CPU)
    res = evaluate_pairs(pairs, split, amap, permutations=3, max_test=60, **kw)
    n_test = int(split.test.sum())
    assert n_test > 60 and res["n_neighbour_test"] == 60
    x_tr, y_tr, x_te, y_te = pairs.x[split.train], pairs.y[split.train], pairs.x[split.test], pairs.y[split.test]
    q = solve_procrustes(accumulate(x_tr, y_tr).standardised().c_ab)
    rows = neighbour_rows(n_test, 60, 0)
    ref = score_map(amap.W, amap.standardise_a(x_te), amap.standardise_b(y_te), q=q, neighbour_rows=rows, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nmap = shuffled_map(x_tr, y_tr, amap.train_state_ids, seed=1, **amap.refit_options())
    ref_null = score_map(nmap.W, nmap.standardise_a(x_te), nmap.standardise_b(y_te), q=q, neighbour_rows=rows, **kw)
    assert set(res["metrics"]) == set(ref) | {"eff_rank_a", "eff_rank_b"}
    for key, value in ref.items():
        assert res["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        if key != "cka_raw":
            assert res["null"][key] == pytest.approx(ref_null[key], rel=1e-4, abs=1e-6), key


def test_evaluate_from_the_files_equals_in_memory(tmp_path):
    """FilePairs (rows read from two files in different row orders, ids only on one side dropped) give
    the in-memory figures: the same split, map, null and p-value."""
    from sjalign.align.pairing import pair_by_state_id
    from sjalign.align.streaming import FilePairs, pair_rows
    from sjalign.io import Latents, load_latents, save_latents
    from sjalign.lazy_io import open_latents_set

    base = _pairs(500, d_a=8, d_b=5, noise=0.5, seed=4)
    order = np.random.default_rng(0).permutation(500)
    a = save_latents(tmp_path / "a.safetensors", Latents(base.x, base.state_ids), {"encoder": "e"})
    b = save_latents(tmp_path / "b.safetensors", Latents(np.vstack([base.y[order], base.y[:3]]),
                                                         np.r_[base.state_ids[order], np.arange(3) + 9000]),
                     {"encoder": "e"})
    la, lb = open_latents_set([a]), open_latents_set([b])
    lazy = FilePairs(la, lb, pair_rows(la, lb))
    mem = pair_by_state_id(load_latents(a), load_latents(b))
    assert lazy.dropped_b == mem.dropped_b == 3
    np.testing.assert_array_equal(lazy.take_y(np.array([7, 2, 400])), mem.y[[7, 2, 400]])
    split = choose_split(mem, seed=2)
    np.testing.assert_array_equal(choose_split(lazy, seed=2).train, split.train)
    m_mem, m_lazy = fit_on_split(mem, split, lam="auto"), fit_on_split(lazy, split, lam="auto")
    assert m_lazy.lam == m_mem.lam
    np.testing.assert_allclose(m_lazy.W, m_mem.W, rtol=1e-5, atol=1e-6)
    kw = dict(ks=(1, 5), permutations=5, device=CPU, dsc_points=40, max_test=30)
    r_mem, r_lazy = evaluate_pairs(mem, split, m_mem, **kw), evaluate_pairs(lazy, split, m_mem, **kw)
    assert r_lazy["r2_p_value"] == r_mem["r2_p_value"] and r_lazy["warnings"] == r_mem["warnings"]
    for section in ("metrics", "null"):
        for key, value in r_mem[section].items():
            assert r_lazy[section][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (section, key)


# ---------------------------------------------------------------- null distribution fast path

def _null_r2(x_tr, y_tr, x_te, y_te, **kw):
    """null_r2_distribution on arrays: train rows first, then test rows, as one Pairs."""
    from sjalign.protocol.gram import PairGram

    n = len(x_tr)
    pairs = Pairs(np.vstack([x_tr, x_te]), np.vstack([y_tr, y_te]), np.arange(n + len(x_te)), None, None, 0, 0)
    train, test = np.arange(n), np.arange(n, n + len(x_te))
    std = PairGram.of(pairs, train).moments().standardised()
    return null_r2_distribution(pairs, train, PairGram.of(pairs, test), std, **kw)


@pytest.mark.parametrize("method,lam,shape", [
    ("ridge", 1e-3, (120, 6, 4)),
    ("ridge", 0.5, (120, 6, 4)),
    ("ridge", 0.1, (30, 40, 5)),   # n < d_a: only λ keeps it invertible
    ("lstsq", 0.0, (120, 6, 4)),
    ("lstsq", 0.0, (30, 40, 5)),   # singular C_aa: pseudoinverse
    ("procrustes", 0.0, (120, 5, 5)),
    ("procrustes", 0.0, (120, 7, 3)),
])
def test_null_r2_distribution_matches_bruteforce_refits(method, lam, shape):
    n, d_a, d_b = shape
    rng = np.random.default_rng(6)
    x = rng.normal(size=(n + 40, d_a)) * rng.uniform(0.5, 3, d_a) + rng.uniform(-3, 3, d_a)
    y = x @ rng.normal(size=(d_a, d_b)) * 0.3 + rng.normal(size=(n + 40, d_b)) + 1.0
    x_tr, y_tr, x_te, y_te = x[:n], y[:n], x[n:], y[n:]
    seed, perms = 11, 6
    fast = _null_r2(x_tr, y_tr, x_te, y_te, method=method, lam=lam, permutations=perms, seed=seed)
    assert len(fast) == perms
    slow = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the IllConditionedWarning of singular lstsq is tested elsewhere
        for i in range(perms):
            m = shuffled_map(x_tr, y_tr, np.arange(n), method=method, lam=lam, seed=seed + i)
            zb = (y_te - y_tr.mean(0)) / y_tr.std(0)
            p = ((x_te - x_tr.mean(0)) / x_tr.std(0)) @ m.W.astype(np.float64).T
            slow.append(r2_score(zb, p, multioutput="variance_weighted"))
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-4)
    assert len(set(np.round(fast, 8))) == perms  # distinct permutations, not one repeated


def test_null_r2_distribution_is_the_same_in_chunks_of_rows(monkeypatch):
    """The shuffled C_ab and the test Gram summed chunk by chunk equal the products of the whole arrays."""
    import sjalign.protocol.gram as gram

    rng = np.random.default_rng(8)
    x = rng.normal(size=(250, 6)) * 3 + 5
    y = x @ rng.normal(size=(6, 4)) + rng.normal(size=(250, 4))
    kw = dict(method="ridge", lam=1e-3, permutations=4, seed=2)
    whole = _null_r2(x[:200], y[:200], x[200:], y[200:], **kw)
    monkeypatch.setattr(gram, "ROW_CHUNK", 7)  # 29 chunks, the last one partial
    monkeypatch.setattr(gram, "NULL_BLOCK_BYTES", 0)  # the null in blocks of 7 rows (29 blocks)
    monkeypatch.setattr(gram, "NULL_GROUP_BYTES", 0)  # one permutation per pass
    np.testing.assert_allclose(_null_r2(x[:200], y[:200], x[200:], y[200:], **kw), whole, rtol=0, atol=1e-12)
    pairs = Pairs(x, y, np.arange(250), None, None, 0, 0)
    zx, zy = (x[:200] - x[:200].mean(0)) / x[:200].std(0), (y[:200] - 1.0) / 2.0
    rows = np.arange(200)
    monkeypatch.setattr(gram, "NULL_GROUP_BYTES", 2 * (4 * 200 + 8 * 24))  # two permutations per pass
    for block in (None, 1, 13, 64, 199, 200):  # 29 blocks of 7, one row each, uneven last block, one block
        grams = gram.shuffled_cross_grams(pairs, rows, [0, 5, 9], x[:200].mean(0), x[:200].std(0), 1.0, 2.0,
                                          block=block)
        for seed, c in zip([0, 5, 9], grams, strict=True):
            perm = np.random.default_rng(seed).permutation(200)
            np.testing.assert_allclose(c, zx.T @ zy[perm] / 200, rtol=0, atol=1e-12)
    g = gram.PairGram.of(pairs, rows)
    v = np.hstack([x[:200], y[:200]])
    mu, sd = v.mean(0) + 0.5, v.std(0) * 1.5  # any standardisation, not only the rows' own
    stats = (mu[:6], sd[:6], mu[6:], sd[6:])
    np.testing.assert_allclose(np.block(_square(g.standardised(*stats, centred=False))),
                               ((v - mu) / sd).T @ ((v - mu) / sd) / 200, rtol=1e-12, atol=1e-12)
    vc = (v - v.mean(0)) / sd
    np.testing.assert_allclose(np.block(_square(g.standardised(*stats, centred=True))), vc.T @ vc / 200,
                               rtol=1e-12, atol=1e-12)


def _square(blocks):
    """(C_aa, C_ab, C_bb) -> the nested list np.block makes the whole symmetric matrix from."""
    c_aa, c_ab, c_bb = blocks
    return [[c_aa, c_ab], [c_ab.T, c_bb]]


# ---------------------------------------------------------------- sweeps (paper App. B)

def _linear_pairs(n=400, d_a=10, d_b=6, noise=0.3, seed=7):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d_a))
    y = x @ rng.normal(size=(d_a, d_b)) + noise * rng.normal(size=(n, d_b))
    return Pairs(x.astype(np.float32), y.astype(np.float32), np.arange(n), None, None, 0, 0)


def test_pair_budget_sweep_improves_with_pairs():
    from sjalign.protocol import pair_budget_sweep

    pairs = _linear_pairs()
    split = choose_split(pairs, seed=0)
    rows = pair_budget_sweep(pairs, split, (12, 40, 320), ks=(5,), lam=1e-3)
    assert [r["n_train"] for r in rows] == [12, 40, 320]
    r2s = [r["metrics"]["r2"] for r in rows]
    assert r2s[0] < r2s[1] < r2s[2] and r2s[2] > 0.9
    # near n = d_a the map is ill-conditioned, with many pairs it is not
    assert rows[0]["metrics"]["kappa"] > rows[2]["metrics"]["kappa"]
    # the last point uses the whole train split: the same as a plain fit
    full = evaluate_pairs(pairs, split, fit_on_split(pairs, split), ks=(5,), permutations=1)
    assert rows[2]["metrics"]["r2"] == pytest.approx(full["metrics"]["r2"], rel=1e-6)
    with pytest.raises(OptionError, match="^budget 321"):
        pair_budget_sweep(pairs, split, (321,), ks=(5,))


def test_pair_noise_sweep_degrades_with_mismatch():
    from sjalign.protocol import pair_noise_sweep

    pairs = _linear_pairs()
    split = choose_split(pairs, seed=0)
    rows = pair_noise_sweep(pairs, split, (0.0, 0.3, 1.0), ks=(5,))
    assert [r["mismatched"] for r in rows] == [0, 96, 320]
    r2s = [r["metrics"]["r2"] for r in rows]
    assert r2s[0] > r2s[1] > r2s[2] and r2s[2] < 0.1
    nos = [r["metrics"]["nos@5"] for r in rows]
    assert nos[0] < nos[2]
    with pytest.raises(OptionError, match="^fraction 1.5"):
        pair_noise_sweep(pairs, split, (1.5,), ks=(5,))


# ---------------------------------------------------------------- shift, controls, seeds (issue 5)

def _labelled_pairs(n=600, d_a=6, d_b=5, seed=3, shifted=True):
    """Classes 0-2 follow one linear map, classes 3-5 another (when ``shifted``): a planted shift."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 6
    x = rng.normal(size=(n, d_a))
    w1, w2 = rng.normal(size=(d_a, d_b)), rng.normal(size=(d_a, d_b))
    y = np.where((labels < 3)[:, None] | (not shifted), x @ w1, x @ w2) + 0.05 * rng.normal(size=(n, d_b))
    return Pairs(x.astype(np.float32), y.astype(np.float32), np.arange(n, dtype=np.int64) * 3, labels, None, 0, 0)


def test_shift_split_subsets_and_matched_sizes():
    from sjalign.protocol import Shift, shift_split

    pairs = _labelled_pairs()
    base = choose_split(pairs, seed=0)
    sh, inside = shift_split(pairs, base, Shift((0, 1, 2)), seed=0)
    lab = pairs.labels
    assert set(lab[sh.train]) == {0, 1, 2} and set(lab[inside.train]) == {3, 4, 5} == set(lab[sh.test])
    np.testing.assert_array_equal(sh.test, inside.test)
    np.testing.assert_array_equal(sh.test, base.test & (lab >= 3))
    assert not (sh.train & sh.test).any() and not (inside.train & inside.test).any()
    assert (sh.train <= base.train).all() and (inside.train <= base.train).all()
    assert sh.train.sum() == inside.train.sum() == min((base.train & (lab < 3)).sum(), (base.train & (lab >= 3)).sum())
    assert sh.kind == "shift" and "0,1,2" in sh.how and "3,4,5" in sh.how
    no_labels = Pairs(pairs.x, pairs.y, pairs.state_ids, None, None, 0, 0)
    with pytest.raises(SjalignError, match="labels"):
        shift_split(no_labels, base, Shift((0,)))
    with pytest.raises(SjalignError, match="class"):
        shift_split(pairs, base, Shift((0,), (9,)))  # no state carries label 9
    with pytest.raises(SjalignError, match="no test classes"):
        shift_split(pairs, base, Shift(tuple(range(6))))
    few = Pairs(pairs.x, pairs.y, pairs.state_ids, np.where(np.arange(600) == 5, 7, lab), None, 0, 0)
    with pytest.raises(SjalignError, match="need at least 2"):  # class 7: one state, in train or test only
        shift_split(few, base, Shift((0,), (7,)))


def test_run_once_shift_is_worse_than_in_distribution_on_a_planted_shift():
    from sjalign.protocol import Shift
    from sjalign.protocol import EvalOptions, run_once

    opts = EvalOptions(ks=(5,), permutations=3, device=CPU)
    run = run_once(_labelled_pairs(), opts, shift=Shift((0, 1, 2), (3, 4, 5)))
    res = run.result
    assert res["in_distribution"]["metrics"]["r2"] > 0.95
    assert res["metrics"]["r2"] < res["in_distribution"]["metrics"]["r2"] - 0.3
    assert res["split"]["kind"] == "shift" and res["n_test"] == res["in_distribution"]["n_test"]
    same = run_once(_labelled_pairs(shifted=False), opts, shift=Shift((0, 1, 2), (3, 4, 5))).result
    assert same["metrics"]["r2"] > 0.95  # no shift planted: both maps are good


def test_transfer_split_and_control_on_the_same_ids():
    from sjalign.protocol import transfer_split
    from sjalign.protocol import EvalOptions, run_once

    pairs = _pairs(300)
    split = choose_split(pairs, seed=0)
    rng = np.random.default_rng(9)
    # noise latents that cover the test split and 200 of the 240 train states, rows in another order
    keep = rng.permutation(np.r_[pairs.state_ids[split.test], pairs.state_ids[split.train][:200]])
    covered = Pairs(rng.normal(size=(len(keep), 8)).astype(np.float32),
                    rng.normal(size=(len(keep), 6)).astype(np.float32), keep, None, None, 0, 0)
    c_split, lacking = transfer_split(split, pairs, covered)
    assert set(covered.state_ids[c_split.test]) == set(pairs.state_ids[split.test])
    assert set(covered.state_ids[c_split.train]) <= set(pairs.state_ids[split.train])
    assert lacking == 40 and c_split.train.sum() == 200
    drop = pairs.state_ids[split.test][:3]
    partial = Pairs(pairs.x, pairs.y, np.where(np.isin(pairs.state_ids, drop), -pairs.state_ids - 1,
                                               pairs.state_ids), None, None, 0, 0)
    with pytest.raises(SjalignError, match="ctl.safetensors: 3 of the 60 test .* cover the whole test split"):
        transfer_split(split, pairs, partial, name="ctl.safetensors")
    # the control is fitted the same way and judged on the same states; noise latents score near 0
    run = run_once(pairs, EvalOptions(ks=(5,), permutations=3, device=CPU), control=covered)
    res = run.result
    assert res["metrics"]["r2"] > 0.9 and res["control"]["metrics"]["r2"] < 0.2
    assert res["control"]["n_test"] == res["n_test"] and any("missing" in w for w in res["control"]["warnings"])
    np.testing.assert_array_equal(np.sort(run.control[2].train_state_ids),
                                  np.sort(covered.state_ids[run.control[1].train]))


def test_evaluate_runs_mean_std_over_seeds_and_models():
    from sjalign.protocol import EvalOptions, evaluate_runs, summarise_runs

    opts = EvalOptions(ks=(5,), permutations=3, device=CPU)
    models = [_pairs(200, seed=0, noise=0.5), _pairs(200, seed=1, noise=0.5)]
    runs = evaluate_runs(models, opts, seeds=(0, 1, 2))
    assert [(r.result["model"], r.result["split_seed"]) for r in runs] == [(m, s) for m in (0, 1) for s in (0, 1, 2)]
    test_sets = {tuple(r.pairs.state_ids[r.split.test]) for r in runs[:3]}
    assert len(test_sets) == 3  # each split seed draws another test set
    summary = summarise_runs(runs)
    r2s = np.array([r.result["metrics"]["r2"] for r in runs])
    assert summary["metrics"]["r2"]["mean"] == pytest.approx(r2s.mean())
    assert summary["metrics"]["r2"]["std"] == pytest.approx(r2s.std(ddof=1)) and summary["metrics"]["r2"]["n"] == 6
    assert summary["null"]["r2"]["n"] == 6 and summary["runs"] == 6 and summary["models"] == 2
    assert summary["split_seeds"] == [0, 1, 2] and len(summary["per_run"]) == 6
    # a fixed split makes split seeds meaningless; so does a map's train ids
    file_split = np.zeros(200, dtype=np.uint8)
    file_split[::5] = 1
    fixed = Pairs(models[0].x, models[0].y, models[0].state_ids, None, file_split, 0, 0)
    with pytest.raises(OptionError, match="^seeds: .*add use_file_split=False") as err:  # library: fields
        evaluate_runs([fixed], opts, seeds=(0, 1))
    assert err.value.render(FLAGS).startswith("--seeds: ") and "add --resplit" in err.value.render(FLAGS)  # CLI: flags
    resplit = evaluate_runs([fixed], EvalOptions(ks=(5,), permutations=3, device=CPU, use_file_split=False),
                            seeds=(0, 1))
    assert [r.split.kind for r in resplit] == ["seeded", "seeded"]
    amap = fit_on_split(fixed, choose_split(fixed))
    with pytest.raises(OptionError, match="drop amap"):
        evaluate_runs([fixed], opts, seeds=(0, 1), amap=amap)
    with pytest.raises(OptionError, match="^amap: a map belongs to one model pair"):
        evaluate_runs(models, opts, amap=amap)
    with pytest.raises(SjalignError, match="control"):
        evaluate_runs(models, opts, controls=[models[0]] * 3)


def test_mean_std_and_directions():
    from sjalign.metrics import higher_is_better
    from sjalign.protocol import mean_std

    assert mean_std([1.0, 3.0, None, float("nan")]) == {"mean": 2.0, "std": pytest.approx(np.sqrt(2)), "n": 2}
    assert mean_std([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}
    hib = higher_is_better(["r2", "nos@10", "kappa", "retrieval@1", "eff_rank_a", "mse"])
    assert hib == {"r2": True, "nos@10": False, "kappa": False, "retrieval@1": True, "mse": False}
    from sjalign.compare import METRICS

    assert set(higher_is_better(METRICS)) == set(METRICS)  # every compare measure has a direction in the one table


def test_layerwise_cka_matches_linear_cka_and_finds_planted_layers():
    from sjalign.io import Latents
    from sjalign.metrics import linear_cka
    from sjalign.protocol import layerwise_cka

    rng = np.random.default_rng(4)
    n = 150
    base = [rng.normal(size=(n, 5)) for _ in range(3)]
    ids = np.arange(n, dtype=np.int64) + 100
    layers_a = {str(i): b.astype(np.float32) for i, b in enumerate(base)}
    q = ortho_group_matrix(5, rng)
    # B's layer i = A's layer i rotated and scaled, rows stored in another order
    order = rng.permutation(n)
    layers_b = {str(i): (2.0 * base[i] @ q)[order].astype(np.float32) for i in range(3)}
    layers_b["10"] = rng.normal(size=(n, 4)).astype(np.float32)[order]
    a = Latents(base[0].astype(np.float32), ids, layers=layers_a)
    b = Latents(layers_b["0"], ids[order], layers=layers_b)
    out = layerwise_cka(a, b, ids[10:], max_points=1000)
    assert out["layers_a"] == ["0", "1", "2"] and out["layers_b"] == ["0", "1", "2", "10"]  # numeric order
    m = np.array(out["cka"])
    np.testing.assert_allclose(np.diag(m[:, :3]), 1.0, atol=1e-10)
    pos = {s: i for i, s in enumerate(ids[order])}
    rows_b = np.array([pos[s] for s in ids[10:]])
    ref = linear_cka(layers_a["1"][10:], layers_b["10"][rows_b])
    assert m[1, 3] == pytest.approx(ref, rel=1e-5)
    assert m[0, 1] < 0.5
    sub = layerwise_cka(a, b, ids, max_points=40, seed=1)
    assert sub["n"] == 40
    assert layerwise_cka(Latents(base[0], ids), b, ids) is None


def ortho_group_matrix(d, rng):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_a_run_keeps_the_null_it_was_judged_against_and_the_result_is_typed():
    from sjalign.metrics import score_map
    from sjalign.protocol import EvalOptions, EvaluateResult, build_result, evaluate_runs, null_map

    pairs = _pairs(200, seed=3, noise=0.5)
    runs = evaluate_runs([pairs], EvalOptions(ks=(5,), permutations=3, device=CPU), seeds=(0, 1))
    first = runs[0]
    refit = null_map(first.pairs, first.split, first.amap, seed=0)
    np.testing.assert_array_equal(first.null.W, refit.W)  # what a report draws is the null that was scored
    x_te, y_te = pairs.x[first.split.test], pairs.y[first.split.test]
    scored = score_map(first.null.W, first.null.standardise_a(x_te), first.null.standardise_b(y_te), ks=(5,),
                       seed=0, device=CPU)
    assert first.result["null"]["r2"] == pytest.approx(scored["r2"])

    result = build_result(runs, a_paths=["a.safetensors"], b_paths=["b.safetensors"], encoder_a="pixels",
                          encoder_b=None, map_path=None, ks=(5,), config={"seed": 0})
    assert isinstance(result, EvaluateResult) and result.runs == runs
    out = result.to_json()
    assert out["metrics"]["r2"] == pytest.approx(np.mean([r.result["metrics"]["r2"] for r in runs]))
    assert out["seeds"]["runs"] == 2 and out["r2_p_value"] == max(r.result["r2_p_value"] for r in runs)
    assert out["lambda"] == runs[0].amap.lam and "lam" not in out and "runs" not in out
    assert "control" not in out and "shift" not in out and "pair_budget" not in out  # absent sections are left out
    assert list(out)[:10] == ["metrics", "null", "r2_p_value", "permutations", "n_train", "n_test",
                              "n_neighbour_test", "split", "ks", "warnings"]
    assert out["higher_is_better"]["r2"] is True and out["higher_is_better"]["nos@5"] is False
    json.dumps(out)  # plain JSON types only


def test_sweeps_score_neighbours_on_the_same_subsample_above_max_test():
    """Each sweep point's NOS@k and retrieval@1 use the rows evaluate_pairs uses; the moment metrics all rows."""
    from sjalign.metrics import nos_at_k, retrieval_at_1
    from sjalign.protocol import neighbour_rows, pair_budget_sweep, pair_noise_sweep

    pairs = _pairs(400, seed=4, noise=0.8)
    split = choose_split(pairs, seed=0)  # 320 train, 80 test pairs
    n_train = int(split.train.sum())
    full = pair_budget_sweep(pairs, split, (n_train,), ks=(5,), seed=3, device=CPU, max_test=None)[0]["metrics"]
    sub = pair_budget_sweep(pairs, split, (n_train,), ks=(5,), seed=3, device=CPU, max_test=30)[0]["metrics"]
    rows = neighbour_rows(80, 30, 3)
    assert len(rows) == 30 and neighbour_rows(80, 80, 3) is None and neighbour_rows(80, None, 3) is None
    # the sweep's map at the full budget is the map of every train pair
    tr = np.flatnonzero(split.train)
    amap = fit_map(pairs.x[tr], pairs.y[tr], pairs.state_ids[tr])
    za, zb = amap.standardise_a(pairs.x[split.test]), amap.standardise_b(pairs.y[split.test])
    p = za @ amap.W.T
    assert sub["nos@5"] == pytest.approx(nos_at_k(zb[rows], p[rows], (5,), device=CPU)[5])
    assert sub["retrieval@1"] == pytest.approx(retrieval_at_1(zb[rows], p[rows], device=CPU))
    assert full["nos@5"] == pytest.approx(nos_at_k(zb, p, (5,), device=CPU)[5])
    for key in ("r2", "cka", "mse"):
        assert sub[key] == full[key]
    noisy = pair_noise_sweep(pairs, split, (0.0,), ks=(5,), seed=3, device=CPU, max_test=30)[0]["metrics"]
    assert noisy["nos@5"] == pytest.approx(sub["nos@5"])


def test_neighbour_metrics_run_on_a_seeded_reported_subsample_above_max_test():
    from sjalign.metrics import nos_at_k, retrieval_at_1

    pairs = _pairs(400, seed=4, noise=0.8)
    split = choose_split(pairs, seed=0)  # 80 test pairs
    amap = fit_on_split(pairs, split)
    full = evaluate_pairs(pairs, split, amap, ks=(5,), permutations=2, device=CPU)
    assert full["n_neighbour_test"] == full["n_test"] == 80 and not any("subsample" in w for w in full["warnings"])
    sub = evaluate_pairs(pairs, split, amap, ks=(5,), permutations=2, device=CPU, max_test=30, seed=0)
    assert sub["n_test"] == 80 and sub["n_neighbour_test"] == 30
    assert any("seeded subsample of 30 of the 80 test pairs" in w for w in sub["warnings"])
    for key in ("r2", "cka", "mse", "kappa"):  # moment metrics: every test pair, unchanged
        assert sub["metrics"][key] == full["metrics"][key]
    rows = np.sort(np.random.default_rng(0).choice(80, 30, replace=False))  # the documented draw
    za, zb = amap.standardise_a(pairs.x[split.test]), amap.standardise_b(pairs.y[split.test])
    p = za @ amap.W.T
    assert sub["metrics"]["nos@5"] == nos_at_k(zb[rows], p[rows], (5,), device=CPU)[5]
    assert sub["metrics"]["retrieval@1"] == retrieval_at_1(zb[rows], p[rows], device=CPU)
    assert sub == evaluate_pairs(pairs, split, amap, ks=(5,), permutations=2, device=CPU, max_test=30, seed=0)
    with pytest.raises(OptionError, match="^ks 30: each k must be between 1 and n_test - 1 = 29"):
        evaluate_pairs(pairs, split, amap, ks=(30,), permutations=2, device=CPU, max_test=30)
    with pytest.raises(OptionError, match="^max_test must be at least 2"):
        evaluate_pairs(pairs, split, amap, ks=(1,), permutations=2, device=CPU, max_test=1)
