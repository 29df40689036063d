"""Scale (issue 5): lazy latents reads, sharded streaming fit-map, tiled neighbours, fit-map bad input.

References are independent of the streamed code: the in-memory float64 path
(``load_latents`` + ``pair_by_state_id`` + ``choose_split`` + ``fit_map``), numpy brute force
over full distance matrices, scipy's ``pdist`` / ``spearmanr``, and planted ties.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

import sjalign.metrics.neighbours as nbmod
from sjalign.align import IllConditionedWarning, accumulate, fit_map, load_map
from sjalign.align.moments import Moments
from sjalign.align.streaming import fit_map_streaming, pair_rows, stream_moments
from sjalign.align.pairing import pair_by_state_id
from sjalign.errors import FileFormatError, ShapeError, SjalignError
from sjalign.io import Latents, load_latents, read_safetensors, save_latents, write_safetensors
from sjalign.lazy_io import open_latents, open_latents_set, write_latents_stream
from sjalign.metrics import knn_indices, nos_at_k, retrieval_at_1
from sjalign.metrics.distances import dsc, dsc_torch
from sjalign.protocol import choose_split

from conftest import make_latents, one_error_line, run

CPU = "cpu"


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def _planted(n=900, d_a=10, d_b=6, seed=0, offset=40.0):
    """Well-conditioned sources with large means (so the shift matters) and a planted linear target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d_a)) * rng.uniform(0.5, 3.0, d_a) + offset * rng.uniform(-1, 1, d_a)
    y = x @ rng.normal(size=(d_a, d_b)) + 0.3 * rng.normal(size=(n, d_b)) - 25.0
    ids = rng.permutation(10 * n)[:n]
    labels = rng.integers(0, 4, n)
    return x.astype(np.float32), y.astype(np.float32), ids, labels


@pytest.fixture
def sharded(tmp_path):
    """A in 3 shards (file order = id order shuffled), B in 2 shards in another order, plus whole files."""
    x, y, ids, labels = _planted()
    rng = np.random.default_rng(1)
    n = len(ids)
    oa, ob = rng.permutation(n), rng.permutation(n)
    cuts_a, cuts_b = [0, 250, 251, 700, n], [0, 420, n]
    a_shards = [make_latents(tmp_path / f"a{i}.safetensors", x[oa[s:e]], ids[oa[s:e]], labels=labels[oa[s:e]])
                for i, (s, e) in enumerate(zip(cuts_a[:-1], cuts_a[1:]))]
    b_shards = [make_latents(tmp_path / f"b{i}.safetensors", y[ob[s:e]], ids[ob[s:e]], labels=labels[ob[s:e]])
                for i, (s, e) in enumerate(zip(cuts_b[:-1], cuts_b[1:]))]
    a_whole = make_latents(tmp_path / "a.safetensors", x, ids, labels=labels)
    b_whole = make_latents(tmp_path / "b.safetensors", y[ob], ids[ob], labels=labels[ob])
    return a_shards, b_shards, a_whole, b_whole


def _reference(a_path, b_path, *, method="ridge", lam=1e-3, seed=0, test_fraction=0.2):
    """The in-memory float64 path: whole files, pair, split, fit."""
    pairs = pair_by_state_id(load_latents(a_path), load_latents(b_path))
    split = choose_split(pairs, test_fraction=test_fraction, seed=seed)
    tr = split.train
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IllConditionedWarning)
        amap = fit_map(pairs.x[tr], pairs.y[tr], pairs.state_ids[tr], method=method, lam=lam, seed=seed)
    return amap, split, pairs


# ---------------------------------------------------------------- lazy reading

def test_open_latents_reads_small_tensors_and_rows_on_demand(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    ids = rng.permutation(100)[:40]
    path = make_latents(tmp_path / "l.safetensors", x, ids, labels=np.arange(40) % 3, split=np.arange(40) % 2)

    import safetensors

    real, asked = safetensors.safe_open, []

    class Spy:  # records every whole-tensor read and every slice
        def __init__(self, *a, **k):
            self.f = real(*a, **k)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def get_tensor(self, name):
            asked.append(("tensor", name))
            return self.f.get_tensor(name)

        def get_slice(self, name):
            sl = self.f.get_slice(name)

            class S:
                def __getitem__(_, key):
                    asked.append(("slice", name, key.start, key.stop))
                    return sl[key]

            return S()

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    lat = open_latents(path)
    assert ("tensor", "latents") not in asked and lat.shape == (40, 5) and lat.dtype == "F32"
    np.testing.assert_array_equal(lat.state_ids, ids)
    np.testing.assert_array_equal(lat.split, np.arange(40) % 2)
    np.testing.assert_array_equal(lat.read_rows(10, 17), x[10:17])  # a mapping of those rows' bytes
    rows = np.array([0, 3, 4, 21, 39])
    out = np.empty((5, 5), np.float64)
    lat.take_rows(rows, out=out, shift=np.full(5, 2.0))
    np.testing.assert_allclose(out, x[rows].astype(np.float64) - 2.0, rtol=0, atol=1e-6)
    assert ("tensor", "latents") not in asked
    # a gather maps at most GATHER_SPAN_BYTES of the file at a time (here 3 rows of 5 float32)
    import sjalign.lazy_io as lazy_io

    spans = []
    real_memmap = np.memmap
    monkeypatch.setattr(lazy_io, "GATHER_SPAN_BYTES", 3 * 5 * 4)
    monkeypatch.setattr(lazy_io.np, "memmap", lambda *a, **k: (spans.append(k["shape"][0]), real_memmap(*a, **k))[1])
    np.testing.assert_array_equal(lat.take_rows(rows), x[rows])
    assert spans == [1, 2, 1, 1] and max(spans) <= 3  # rows 0 | 3, 4 | 21 | 39


def test_write_latents_stream_round_trip_and_no_partial_file(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    ids, labels, split = rng.permutation(50) + 7, np.arange(50) % 5, np.arange(50) % 2
    ref = save_latents(tmp_path / "ref.safetensors", Latents(x, ids, labels, split), {"encoder": "e"})
    out = write_latents_stream(tmp_path / "s.safetensors", (x[i:i + 7] for i in range(0, 50, 7)), n=50, dim=4,
                               state_ids=ids, labels=labels, split=split, metadata={"encoder": "e"})
    a, b = load_latents(ref), load_latents(out)
    for key in ("latents", "state_ids", "labels", "split"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert b.metadata == {"encoder": "e", "sjalign.format": "latents/1"}

    def failing():
        yield x[:10]
        raise SjalignError("producer failed")

    with pytest.raises(SjalignError, match="producer failed"):
        write_latents_stream(tmp_path / "f.safetensors", failing(), n=50, dim=4, state_ids=ids)
    with pytest.raises(ShapeError, match="40 latents rows"):
        write_latents_stream(tmp_path / "g.safetensors", iter([x[:40]]), n=50, dim=4, state_ids=ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.safetensors", "s.safetensors"]


def test_latents_set_errors_name_the_files(tmp_path):
    rng = np.random.default_rng(4)
    a1 = make_latents(tmp_path / "a1.safetensors", rng.normal(size=(10, 3)), np.arange(10))
    a2 = make_latents(tmp_path / "a2.safetensors", rng.normal(size=(10, 3)), np.arange(8, 18))
    a3 = make_latents(tmp_path / "a3.safetensors", rng.normal(size=(10, 4)), np.arange(20, 30))
    a4 = tmp_path / "a4.safetensors"
    write_safetensors(a4, {"latents": rng.normal(size=(10, 3)), "state_ids": np.arange(40, 50)},
                      {"sjalign.format": "latents/1"})  # float64 latents
    with pytest.raises(SjalignError, match=r"a1.safetensors and .*a2.safetensors: 2 state id\(s\) appear in both"):
        open_latents_set([a1, a2])
    with pytest.raises(ShapeError, match=r"a1.safetensors \(3-d\) and .*a3.safetensors \(4-d\)"):
        open_latents_set([a1, a3])
    with pytest.raises(SjalignError, match=r"a1.safetensors \(F32\) and .*a4.safetensors \(F64\)"):
        open_latents_set([a1, a4])
    with pytest.raises(FileFormatError, match="not a valid safetensors"):
        (tmp_path / "x.safetensors").write_text("not safetensors")
        open_latents_set([a1, tmp_path / "x.safetensors"])
    lset = open_latents_set([a1, make_latents(tmp_path / "a5.safetensors", rng.normal(size=(5, 3)),
                                              np.arange(60, 65))])
    assert lset.n == 15 and lset.labels is None
    out = np.empty((3, 3), np.float32)
    lset.read_into(np.array([9, 10, 14]), out)
    np.testing.assert_array_equal(out[0], load_latents(a1).latents[9])


# ---------------------------------------------------------------- moments algebra

def test_moments_reshift_add_subtract_match_direct_sums():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(120, 4)) * 3 + 50, rng.normal(size=(120, 3)) - 7
    whole = accumulate(x, y)  # shift 0
    s1 = Moments.zeros(4, 3, shift_x=x[:5].mean(0), shift_y=y[:5].mean(0)).update(x[:70], y[:70])
    s2 = Moments.zeros(4, 3, shift_x=np.full(4, 49.0), shift_y=np.full(3, -6.0)).update(x[70:], y[70:])
    total = s1 + s2
    back = total.reshift(np.zeros(4), np.zeros(3))
    for key in ("sum_x", "sum_y", "sum_xx", "sum_xy", "sum_yy_diag"):
        np.testing.assert_allclose(getattr(back, key), getattr(whole, key), rtol=1e-10, err_msg=key)
    a, b = total.standardised(), whole.standardised()
    np.testing.assert_allclose(a.c_aa, b.c_aa, atol=1e-10)
    np.testing.assert_allclose(a.c_ab, b.c_ab, atol=1e-10)
    np.testing.assert_allclose(a.a_mean, x.mean(0), rtol=1e-12)
    rest = total - s1.reshift(np.zeros(4), np.zeros(3))
    np.testing.assert_allclose(rest.standardised().c_aa, accumulate(x[70:], y[70:]).standardised().c_aa, atol=1e-10)


def test_heldout_sse_equals_direct_residuals():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(200, 5)) + 3, rng.normal(size=(200, 2)) * 2
    train = accumulate(x[:150], y[:150]).standardised()
    fold = Moments.zeros(5, 2, shift_x=np.full(5, 2.5), shift_y=np.ones(2)).update(x[150:], y[150:])
    w = rng.normal(size=(2, 5))
    za = (x[150:] - train.a_mean) / train.a_std
    zb = (y[150:] - train.b_mean) / train.b_std
    assert fold.heldout_sse(train, {"w": w})["w"] == pytest.approx(np.sum((zb - za @ w.T) ** 2), rel=1e-10)


def test_float32_products_need_the_shift():
    """With |mean| = 1e4·std, float32 products of shifted rows stay accurate; unshifted ones do not."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4000, 3)) + 1e4
    y = x @ rng.normal(size=(3, 2)) * 1e-4 + rng.normal(size=(4000, 2))
    ref = accumulate(x, y).standardised()
    shift_x, shift_y = x[:100].mean(0), y[:100].mean(0)
    shifted = Moments.zeros(3, 2, shift_x=shift_x, shift_y=shift_y)
    raw = Moments.zeros(3, 2)
    for s in range(0, 4000, 1000):
        shifted.add_centred((x[s:s + 1000] - shift_x).astype(np.float32), (y[s:s + 1000] - shift_y).astype(np.float32))
        raw.add_centred(x[s:s + 1000].astype(np.float32), y[s:s + 1000].astype(np.float32))
    assert np.abs(shifted.standardised().c_aa - ref.c_aa).max() < 1e-4
    assert np.abs(raw.standardised().c_aa - ref.c_aa).max() > 1e-2


# ---------------------------------------------------------------- pairing and streaming fit

def test_pair_rows_matches_pair_by_state_id(sharded):
    a_shards, b_shards, a_whole, b_whole = sharded
    a, b = open_latents_set(a_shards), open_latents_set(b_shards)
    got = pair_rows(a, b)
    ref = pair_by_state_id(load_latents(a_whole), load_latents(b_whole))
    np.testing.assert_array_equal(got.state_ids, ref.state_ids)
    np.testing.assert_array_equal(got.labels, ref.labels)
    xs = np.concatenate([load_latents(p).latents for p in a_shards])
    ys = np.concatenate([load_latents(p).latents for p in b_shards])
    np.testing.assert_array_equal(xs[got.rows_a], ref.x)
    np.testing.assert_array_equal(ys[got.rows_b], ref.y)


@pytest.mark.parametrize("method,lam", [("ridge", 1e-3), ("lstsq", 0.0), ("procrustes", 0.0), ("ridge", "auto")])
def test_streamed_sharded_fit_equals_in_memory_fit(sharded, method, lam):
    a_shards, b_shards, a_whole, b_whole = sharded
    ref, ref_split, ref_pairs = _reference(a_whole, b_whole, method=method, lam=lam, seed=3)
    a, b = open_latents_set(a_shards), open_latents_set(b_shards)
    paired = pair_rows(a, b)
    split = choose_split(paired.as_pairs(), test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(split.train, ref_split.train)  # the same split by state id
    for precision, tol in (("float64", 1e-9), ("float32", 1e-5)):
        amap = fit_map_streaming(a, b, paired, split.train, method=method, lam=lam, seed=3, chunk=97,
                                 precision=precision)
        np.testing.assert_array_equal(amap.train_state_ids, ref.train_state_ids)
        assert _rel(amap.W, ref.W) < tol, (precision, _rel(amap.W, ref.W))
        for key in ("a_mean", "a_std", "b_mean", "b_std"):
            assert _rel(getattr(amap, key), getattr(ref, key)) < 1e-6, key
        assert amap.method == ref.method and amap.lam == pytest.approx(ref.lam)
        assert amap.info["precision"] == precision
    if lam == "auto":
        for key, v in ref.info["lambda_cv_mse"].items():
            assert amap.info["lambda_cv_mse"][key] == pytest.approx(v, rel=1e-4)



def _collapsed(n=3000, d_a=12, d_b=5, seed=0):
    """Nearly collapsed sources, as trained JEPA latents often are: rank 2 plus noise 1e-4 (κ(C_aa) ~ 1e8)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    x = z @ rng.normal(size=(2, d_a)) + 1e-4 * rng.normal(size=(n, d_a)) + 3.0
    y = z @ rng.normal(size=(2, d_b)) + 0.1 * rng.normal(size=(n, d_b))
    return x.astype(np.float32), y.astype(np.float32), np.arange(n)


@pytest.mark.parametrize("method, lam", [("ridge", 1e-3), ("ridge", "auto"), ("lstsq", 0.0), ("procrustes", 0.0)])
def test_auto_precision_is_float32_only_where_the_fit_is_well_conditioned(tmp_path, method, lam):
    """auto gives bit for bit the float32 fit on well-conditioned latents and the float64 fit on collapsed ones."""
    from sjalign.align.streaming import U32, conditioning

    xg, yg, ids, _ = _planted(n=600, d_b=10)
    xc, yc, idc = _collapsed(d_a=10, d_b=10)
    for name, (x, y, i), want in (("good", (xg, yg, ids), "float32"), ("collapsed", (xc, yc, idc), "float64")):
        a = open_latents_set([make_latents(tmp_path / f"{name}_a.safetensors", x, i)])
        b = open_latents_set([make_latents(tmp_path / f"{name}_b.safetensors", y, i)])
        paired = pair_rows(a, b)
        train = choose_split(paired.as_pairs(), seed=0).train
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IllConditionedWarning)
            auto = fit_map_streaming(a, b, paired, train, method=method, lam=lam, chunk=256)
            fixed = fit_map_streaming(a, b, paired, train, method=method, lam=lam, chunk=256, precision=want)
        assert auto.info["precision"] == want, (name, auto.info)
        np.testing.assert_array_equal(auto.W, fixed.W)
        assert auto.info["precision_auto"]["pilot_pairs"] == min(int(train.sum()), 4096)
        std = accumulate(x[paired.rows_a[train]], y[paired.rows_b[train]]).standardised()
        full = conditioning(std, method, lam)  # the pilot holds every pair here: its κ is the full one
        assert auto.info["precision_auto"]["kappa_pilot"] == pytest.approx(full, rel=1e-3)
        assert (full * U32 <= 1e-4) == (want == "float32")
        assert auto.info["precision_auto"]["refit"] is False
        assert ("kappa" in auto.info["precision_auto"]) == (want == "float32")  # the full moments' κ, checked


def test_auto_precision_refits_in_float64_when_the_pilot_was_wrong(sharded, monkeypatch):
    import sjalign.align.streaming as streaming

    a_shards, b_shards, *_ = sharded
    a, b = open_latents_set(a_shards), open_latents_set(b_shards)
    paired = pair_rows(a, b)
    train = choose_split(paired.as_pairs(), seed=0).train
    answers = iter([10.0, 1e9])  # the pilot's κ, then the full moments'
    monkeypatch.setattr(streaming, "conditioning", lambda *args: next(answers))
    amap = fit_map_streaming(a, b, paired, train)
    assert amap.info["precision"] == "float64"
    assert amap.info["precision_auto"] == {"kappa_pilot": 10.0, "pilot_pairs": int(train.sum()), "kappa": 1e9,
                                           "refit": True}
    np.testing.assert_array_equal(amap.W, fit_map_streaming(a, b, paired, train, precision="float64").W)


def test_shards_equal_one_file(sharded):
    a_shards, b_shards, a_whole, b_whole = sharded
    fits = []
    for a_paths, b_paths in (([a_whole], [b_whole]), (a_shards, b_shards)):
        a, b = open_latents_set(a_paths), open_latents_set(b_paths)
        paired = pair_rows(a, b)
        split = choose_split(paired.as_pairs(), seed=0)
        fits.append(fit_map_streaming(a, b, paired, split.train, chunk=64, precision="float32"))
    np.testing.assert_array_equal(fits[0].train_state_ids, fits[1].train_state_ids)
    assert _rel(fits[1].W, fits[0].W) < 1e-5


@pytest.mark.parametrize("groups", [False, True])
def test_streaming_holds_one_chunk(sharded, monkeypatch, groups):
    """Whatever the threads, the row buffers hold one chunk and the moments are the same."""
    import sjalign.align.streaming as streaming

    a_shards, b_shards, *_ = sharded
    a, b = open_latents_set(a_shards), open_latents_set(b_shards)
    paired = pair_rows(a, b)
    folds = np.arange(len(paired.state_ids)) % 3 if groups else None
    sizes = []
    real = streaming.chunk_sums
    monkeypatch.setattr(streaming, "chunk_sums",
                        lambda u, v, out=None: (sizes.append((u.shape, v.shape)), real(u, v, out))[1])
    moms = {}
    # (workers, prefetch) -> rows per piece: one chunk of 50 rows split over the buffers
    for (workers, prefetch), rows in {(1, False): 50, (1, True): 25, (2, True): 25, (3, False): 17}.items():
        sizes.clear()
        moms[workers, prefetch] = parts = stream_moments(a, b, paired.rows_a, paired.rows_b, chunk=50,
                                                         workers=workers, prefetch=prefetch, groups=folds,
                                                         n_groups=3 if groups else 1)
        assert sum(m.n for m in parts) == len(paired.state_ids) == sum(s[0][0] for s in sizes)
        assert all(s[0][0] == s[1][0] for s in sizes)
        if not groups:
            assert max(s[0][0] for s in sizes) == rows
    one = moms[1, False]
    for key, parts in moms.items():
        for m, ref in zip(parts, one):
            got, want = m.standardised(), ref.standardised()
            assert m.n == ref.n, key
            np.testing.assert_allclose(got.c_aa, want.c_aa, atol=1e-12, err_msg=str(key))
            np.testing.assert_allclose(got.c_ab, want.c_ab, atol=1e-12, err_msg=str(key))
            np.testing.assert_allclose(got.a_mean, want.a_mean, rtol=1e-12, err_msg=str(key))


def test_streaming_threads_give_the_same_bits_every_time(sharded):
    """Pieces are added in order, so two threaded runs agree exactly (not just to rounding)."""
    a_shards, b_shards, *_ = sharded
    a, b = open_latents_set(a_shards), open_latents_set(b_shards)
    paired = pair_rows(a, b)
    runs = [stream_moments(a, b, paired.rows_a, paired.rows_b, chunk=40, workers=3, precision="float32")[0]
            for _ in range(3)]
    for m in runs[1:]:
        np.testing.assert_array_equal(m.sum_xx, runs[0].sum_xx)
        np.testing.assert_array_equal(m.sum_xy, runs[0].sum_xy)
        np.testing.assert_array_equal(m.sum_x, runs[0].sum_x)


def test_streaming_reader_error_reaches_the_caller(sharded, monkeypatch):
    """A read that fails in a worker or the prefetch thread raises in the caller, not in the background."""
    a_shards, b_shards, *_ = sharded
    a, b = open_latents_set(a_shards), open_latents_set(b_shards)
    paired = pair_rows(a, b)
    real, calls = type(b).read_into, []

    def flaky(self, rows, out, shift=None):
        calls.append(len(rows))
        if len(calls) == 3:
            raise FileFormatError("b.safetensors: truncated")
        return real(self, rows, out, shift)

    monkeypatch.setattr(type(b), "read_into", flaky)
    for workers in (1, 2):
        calls.clear()
        with pytest.raises(FileFormatError, match="truncated"):
            stream_moments(a, b, paired.rows_a, paired.rows_b, chunk=100, workers=workers)


def test_non_finite_train_row_names_the_file(tmp_path):
    x, y, ids, _ = _planted(n=100)
    x[17, 2] = np.nan
    a = tmp_path / "nan.safetensors"
    write_safetensors(a, {"latents": x, "state_ids": ids}, {"sjalign.format": "latents/1"})
    b = make_latents(tmp_path / "b.safetensors", y, ids)
    a_set, b_set = open_latents_set([a]), open_latents_set([b])
    paired = pair_rows(a_set, b_set)
    with pytest.raises(SjalignError, match=r"nan.safetensors: 'latents' contains NaN or Inf in 1 of 100 rows"):
        stream_moments(a_set, b_set, paired.rows_a, paired.rows_b, chunk=30)



@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_hash_and_scan_is_the_files_sha256_and_counts_non_finite_rows(tmp_path, dtype):
    """One read gives sha256_file's digest and check_finite's count, whatever the dtype and tensor order."""
    import hashlib

    from safetensors.torch import save_file as save_torch

    from sjalign.lazy_io import hash_and_scan

    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1000, 7)).astype(np.float32))
    x[[3, 500, 999], [0, 6, 2]] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    x[500, 1] = float("nan")  # a second bad value in a bad row
    path = tmp_path / f"{dtype}.safetensors"
    save_torch({"latents": x.to(getattr(torch, dtype)), "state_ids": torch.arange(1000), "a_extra": torch.ones(3)},
               str(path), metadata={"sjalign.format": "latents/1"})
    lat = open_latents(path)
    digest, bad = hash_and_scan(lat, block_bytes=7 * 2 * 64)  # many blocks, the last one partial
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert bad == 3 == lat.count_nonfinite_rows()


# ---------------------------------------------------------------- the fit-map / apply-map CLI

def test_cli_fit_map_shards_equal_one_file_and_record_every_hash(runner, sharded, tmp_path):
    a_shards, b_shards, a_whole, b_whole = sharded
    one, many = tmp_path / "one.safetensors", tmp_path / "many.safetensors"
    res = run(runner, "fit-map", a_whole, b_whole, "-o", one, "--json", "--precision", "float64")
    assert res.exit_code == 0, res.stderr
    res = run(runner, "fit-map", ",".join(map(str, a_shards)), ",".join(map(str, b_shards)), "-o", many,
              "--json", "--chunk-rows", "128", "--precision", "float64")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["shards_a"] == 4 and out["shards_b"] == 2 and out["n_train"] == 720 and out["n_test"] == 180
    m1, _ = load_map(one)
    m2, meta = load_map(many)
    assert _rel(m2.W, m1.W) < 1e-9
    np.testing.assert_array_equal(m1.train_state_ids, m2.train_state_ids)
    ref, *_ = _reference(a_whole, b_whole)
    assert _rel(m2.W, ref.W) < 1e-9
    inputs = json.loads(meta["inputs"])
    assert [s["path"] for s in inputs["a"]["shards"]] == list(map(str, a_shards))
    from sjalign.io import sha256_file

    assert [s["sha256"] for s in inputs["b"]["shards"]] == [sha256_file(p) for p in b_shards]
    # a shard of B given as the source of apply-map is refused (the map runs A -> B)
    one_error_line(run(runner, "apply-map", many, b_shards[1], "-o", tmp_path / "x.safetensors"), "target (B)")


def test_fit_map_shards_as_a_user_runs_it(sharded, tmp_path):
    """`python -m sjalign fit-map A1,A2,A3,A4 B1,B2` in a subprocess: exit 0, JSON on stdout only, the map file."""
    import subprocess
    import sys

    a_shards, b_shards, *_ = sharded
    m = tmp_path / "m.safetensors"
    proc = subprocess.run([sys.executable, "-m", "sjalign", "fit-map", ",".join(map(str, a_shards)),
                           ",".join(map(str, b_shards)), "-o", str(m), "--json"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["map"] == str(m) and out["direction"] == "a->b" and out["n_train"] == 720 and m.is_file()


def test_cli_apply_map_streams_shards_into_one_file(runner, sharded, tmp_path):
    a_shards, b_shards, a_whole, b_whole = sharded
    m = tmp_path / "m.safetensors"
    assert run(runner, "fit-map", a_whole, b_whole, "-o", m).exit_code == 0
    out = tmp_path / "mapped.safetensors"
    res = run(runner, "apply-map", m, ",".join(map(str, a_shards)), "-o", out, "--chunk-rows", "100", "--json")
    assert res.exit_code == 0, res.stderr
    amap, _ = load_map(m)
    got = load_latents(out)
    parts = [load_latents(p) for p in a_shards]
    np.testing.assert_array_equal(got.state_ids, np.concatenate([p.state_ids for p in parts]))
    np.testing.assert_allclose(got.latents, amap.apply(np.concatenate([p.latents for p in parts])), rtol=1e-6,
                               atol=1e-5)
    np.testing.assert_array_equal(got.labels, np.concatenate([p.labels for p in parts]))
    assert json.loads(res.stdout) == {"output": str(out), "n": 900, "d": 6, "shards": 4}
    bad_x = load_latents(a_shards[2]).latents.copy()
    bad_x[3, 0] = np.nan
    bad = tmp_path / "nan_shard.safetensors"
    write_safetensors(bad, {"latents": bad_x, "state_ids": load_latents(a_shards[2]).state_ids},
                      {"sjalign.format": "latents/1"})
    out2 = tmp_path / "mapped2.safetensors"
    one_error_line(run(runner, "apply-map", m, f"{a_shards[0]},{bad}", "-o", out2, "--chunk-rows", "100"),
               "nan_shard.safetensors", "NaN or Inf in 1 of 449 rows")
    assert not out2.exists() and not list(tmp_path.glob(".mapped2*"))


def test_cli_fit_map_bad_shards(runner, tmp_path):
    rng = np.random.default_rng(8)
    ids = np.arange(60)
    b = make_latents(tmp_path / "b.safetensors", rng.normal(size=(60, 3)), ids)
    a1 = make_latents(tmp_path / "a1.safetensors", rng.normal(size=(30, 4)), ids[:30])
    a2 = make_latents(tmp_path / "a2.safetensors", rng.normal(size=(31, 4)), ids[29:])  # id 29 in both
    a3 = make_latents(tmp_path / "a3.safetensors", rng.normal(size=(30, 5)), ids[30:])
    a4 = tmp_path / "a4.safetensors"
    write_safetensors(a4, {"latents": rng.normal(size=(30, 4)), "state_ids": ids[30:]}, {"sjalign.format": "latents/1"})
    a5 = tmp_path / "a5.safetensors"
    write_safetensors(a5, {"W": np.zeros((2, 2), np.float32)}, {"sjalign.format": "map/1"})
    out = tmp_path / "m.safetensors"
    cases = [
        (f"{a1},{a2}", ("a1.safetensors and", "a2.safetensors", "appear in both shards")),
        (f"{a1},{a3}", ("a1.safetensors (4-d) and", "a3.safetensors (5-d)", "same dimension")),
        (f"{a1},{a4}", ("a1.safetensors (F32) and", "a4.safetensors (F64)", "dtype")),
        (f"{a1},{a5}", ("a5.safetensors", "latents/1", "map/1")),
        (f"{a1},{tmp_path / 'gone.safetensors'}", ("gone.safetensors", "no such file")),
        (f"{a1},{a1}", ("a1.safetensors", "listed twice")),
    ]
    for arg, needles in cases:
        one_error_line(run(runner, "fit-map", arg, b, "-o", out), *needles)
        assert not out.exists()


def test_cli_fit_map_nan_in_a_test_row_is_refused(runner, tmp_path):
    x, y, ids, _ = _planted(n=100)
    x[-1, 0] = np.inf
    a = tmp_path / "inf.safetensors"
    write_safetensors(a, {"latents": x, "state_ids": ids}, {"sjalign.format": "latents/1"})
    b = make_latents(tmp_path / "b.safetensors", y, ids)
    out = tmp_path / "m.safetensors"
    one_error_line(run(runner, "fit-map", a, b, "-o", out), "inf.safetensors", "NaN or Inf in 1 of 100 rows")
    assert not out.exists()


def test_cli_lstsq_with_fewer_pairs_than_dimensions_falls_back_to_ridge(runner, tmp_path):
    rng = np.random.default_rng(9)
    n, d_a = 30, 40  # 24 train pairs < 40 dimensions
    x = rng.normal(size=(n, d_a))
    a = make_latents(tmp_path / "a.safetensors", x, np.arange(n))
    b = make_latents(tmp_path / "b.safetensors", x[:, :5] + 0.1 * rng.normal(size=(n, 5)), np.arange(n))
    m = tmp_path / "m.safetensors"
    res = run(runner, "fit-map", a, b, "-o", m, "--method", "lstsq", "--json")
    assert res.exit_code == 0, res.stderr
    warn = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "κ(C_aa)" in warn[0] and "falling back to ridge" in warn[0] and "24 < d_a = 40" in warn[0]
    out = json.loads(res.stdout)
    assert out["method"] == "ridge" and out["requested_method"] == "lstsq" and out["lambda"] == pytest.approx(1e-3)
    amap, meta = load_map(m)
    assert meta["method"] == "ridge" and amap.info["requested_method"] == "lstsq"
    tensors, _ = read_safetensors(m)
    tr = amap.train_state_ids  # ids are row numbers here
    ref = fit_map(x[tr], load_latents(b).latents[tr], tr, method="ridge", lam=1e-3)
    assert _rel(tensors["W"], ref.W) < 1e-6


def test_cli_constant_features_warn_and_all_constant_is_an_error(runner, tmp_path):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(80, 4))
    x[:, 1] = 3.5
    y = x[:, [0, 2]] + 0.1 * rng.normal(size=(80, 2))
    a = make_latents(tmp_path / "a.safetensors", x, np.arange(80))
    b = make_latents(tmp_path / "b.safetensors", y, np.arange(80))
    m = tmp_path / "m.safetensors"
    res = run(runner, "fit-map", a, b, "-o", m, "--json")
    assert res.exit_code == 0, res.stderr
    warn = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "a.safetensors: 1 constant feature(s)" in warn[0] and "dims 1" in warn[0]
    amap, _ = load_map(m)
    assert amap.info["constant_a"] == [1] and np.allclose(amap.W[:, 1], 0.0)
    c = make_latents(tmp_path / "c.safetensors", np.ones((80, 3)) * [1.0, 2.0, 3.0], np.arange(80))
    one_error_line(run(runner, "fit-map", c, b, "-o", tmp_path / "n.safetensors"), "c.safetensors",
               "all 3 features are constant")
    assert not (tmp_path / "n.safetensors").exists()


def test_cli_fit_map_bad_precision(runner, sharded, tmp_path):
    _, _, a_whole, b_whole = sharded
    one_error_line(run(runner, "fit-map", a_whole, b_whole, "-o", tmp_path / "m", "--precision", "half"), "half")
    assert not (tmp_path / "m").exists()


def test_cli_fit_map_reports_the_precision_auto_chose(runner, sharded, tmp_path):
    _, _, a_whole, b_whole = sharded
    res = run(runner, "fit-map", a_whole, b_whole, "-o", tmp_path / "m.safetensors", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["precision"] == "float32" and out["precision_auto"]["refit"] is False  # well-conditioned latents
    assert out["precision_auto"]["kappa_pilot"] * 2.0**-24 <= 1e-4
    assert load_map(tmp_path / "m.safetensors")[0].info["precision"] == "float32"


# ---------------------------------------------------------------- tiled neighbours

def _brute_knn(x: np.ndarray, k: int) -> np.ndarray:
    """Full float64 distance matrix, self excluded, stable sort: ties go to the smaller index."""
    x = np.asarray(x, np.float64)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    return np.argsort(d2, axis=1, kind="stable")[:, :k]


def _grid_with_duplicates(n: int, seed: int) -> np.ndarray:
    """Small-integer points: many exactly equal distances and duplicated rows (exact in float32)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=(n, 3)).astype(np.float32)
    x[5] = x[17] = x[40]
    return x


@pytest.mark.parametrize("chunk,max_elements", [(2048, 1 << 24), (7, 1 << 24), (2048, 500), (2048, 50)])
def test_knn_ties_go_to_the_smaller_index_for_every_tiling(chunk, max_elements):
    x = _grid_with_duplicates(120, 11)
    for k in (1, 4, 9):
        got = knn_indices(x, k, chunk=chunk, device=CPU, max_elements=max_elements)
        np.testing.assert_array_equal(got, _brute_knn(x, k))


def _offset_dyadic(n: int, d: int, seed: int) -> np.ndarray:
    """Points 4096 + j/4 (j small integers): exact in float32, with exact float64 distances, many of
    them tied (duplicates and mirror images), where float32's ‖q‖² − 2q·x + ‖x‖² (≈ 1.7e7·d) rounds
    the distances (at most 2·d·(3/4)²) away."""
    rng = np.random.default_rng(seed)
    x = (4096 + rng.integers(-3, 4, size=(n, d)) / 4).astype(np.float32)
    x[7] = x[30]
    x[11] = 2 * 4096 - x[12]  # x[11] and x[12] mirror each other about (4096, ..., 4096)
    return x


@pytest.mark.parametrize("chunk,max_elements", [(2048, 1 << 24), (2048, 300)])
def test_knn_and_retrieval_use_exact_distances_not_float32_rounding(chunk, max_elements):
    x = _offset_dyadic(150, 5, 21)
    for k in (1, 6):
        got = knn_indices(x, k, chunk=chunk, device=CPU, max_elements=max_elements)
        np.testing.assert_array_equal(got, _brute_knn(x, k))
    pred = (x + np.random.default_rng(3).integers(-1, 2, size=x.shape) / 4).astype(np.float32)
    d2 = ((pred[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    expected = np.mean(d2.argmin(1) == np.arange(len(x)))  # argmin: the first (smallest-index) minimum
    assert retrieval_at_1(x, pred, chunk=chunk, device=CPU, max_elements=max_elements) == expected
    # on such data the float32 form alone gets them wrong (so the test can fail)
    xf = torch.from_numpy(x)
    naive = torch.cdist(xf, xf, compute_mode="use_mm_for_euclid_dist").fill_diagonal_(float("inf"))
    assert not np.array_equal(torch.sort(naive, dim=1, stable=True).indices[:, :6].numpy(), _brute_knn(x, 6))


def test_tiles_are_bounded_and_no_n_by_n_matrix_is_held(monkeypatch):
    rng = np.random.default_rng(12)
    n = 600
    t = rng.normal(size=(n, 8)).astype(np.float32)
    p = (t @ rng.normal(size=(8, 8)) + rng.normal(size=(n, 8))).astype(np.float32)
    shapes = []
    real = nbmod._sq_dists
    monkeypatch.setattr(nbmod, "_sq_dists", lambda q, x, x_sq: (shapes.append((len(q), len(x))), real(q, x, x_sq))[1])
    budget = 10 * n
    res = nos_at_k(t, p, (1, 5, 10), device=CPU, max_elements=budget)
    r1 = retrieval_at_1(t, p, device=CPU, max_elements=budget)
    assert shapes and max(rows * cols for rows, cols in shapes) <= budget  # never near n × n = 60 budgets
    assert all(rows < n for rows, _ in shapes) and (10, n) in shapes  # kNN: square blocks; retrieval: 10 rows
    monkeypatch.setattr(nbmod, "_sq_dists", real)
    for k in (1, 5, 10):
        nt, np_ = _brute_knn(t, k), _brute_knn(p, k)
        ref = 1.0 - np.mean([len(set(a) & set(b)) / k for a, b in zip(nt, np_)])
        assert res[k] == pytest.approx(ref, abs=1e-12)
    d2 = ((p[:, None, :].astype(np.float64) - t[None, :, :]) ** 2).sum(-1)
    assert r1 == pytest.approx(np.mean(d2.argmin(1) == np.arange(n)), abs=1e-12)


def test_retrieval_tie_goes_to_the_smaller_index():
    target = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0]], np.float32)  # rows 1 and 2 equal
    pred = target.copy()
    # pred 2 is equidistant from targets 1 and 2: target 1 (smaller index) is retrieved, a miss
    assert retrieval_at_1(target, pred, device=CPU, chunk=1) == pytest.approx(3 / 4)


def test_unavailable_cuda_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(SjalignError, match="CUDA is not available"):
        knn_indices(np.zeros((5, 2)), 1, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_neighbours_and_dsc_equal_cpu():
    rng = np.random.default_rng(13)
    t = rng.normal(size=(700, 16)).astype(np.float32)
    p = t @ rng.normal(size=(16, 16)).astype(np.float32)
    assert nos_at_k(t, p, (1, 10), device="cuda") == nos_at_k(t, p, (1, 10), device=CPU)
    assert retrieval_at_1(t, p, device="cuda") == retrieval_at_1(t, p, device=CPU)
    assert dsc(t, p, device="cuda") == pytest.approx(dsc(t, p, device=CPU), abs=1e-9)


def test_dsc_torch_path_equals_scipy_with_ties():
    rng = np.random.default_rng(14)
    t = rng.normal(size=(150, 5))
    p = t @ rng.normal(size=(5, 3)) + rng.normal(size=(150, 3))
    assert dsc_torch(t, p, device=CPU) == pytest.approx(spearmanr(pdist(t), pdist(p)).statistic, abs=1e-12)
    g = _grid_with_duplicates(90, 15).astype(np.float64)
    q = g + rng.integers(0, 2, size=g.shape)
    assert dsc_torch(g, q, device=CPU) == pytest.approx(spearmanr(pdist(g), pdist(q)).statistic, abs=1e-12)
    from sjalign.metrics.distances import condensed_distances

    np.testing.assert_allclose(condensed_distances(torch.from_numpy(g), max_elements=37).numpy(), pdist(g),
                               rtol=0, atol=1e-12)
