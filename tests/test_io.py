"""File formats round-trip; validation; pairing and splits by state id."""

from __future__ import annotations

import numpy as np
import pytest

from sjalign.align import fit_map, load_map, save_map
from sjalign.align.pairing import pair_by_state_id
from sjalign.protocol import random_split
from sjalign.errors import FileFormatError, ShapeError, SjalignError
from sjalign.io import Latents, load_latents, read_safetensors, save_latents, write_safetensors

from conftest import make_latents


def test_latents_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 5)).astype(np.float32)
    ids = rng.permutation(100)[:20]
    path = make_latents(tmp_path / "l.safetensors", x, ids, labels=np.arange(20) % 3, split=np.arange(20) % 2)
    lat = load_latents(path)
    np.testing.assert_array_equal(lat.latents, x)
    np.testing.assert_array_equal(lat.state_ids, ids)
    np.testing.assert_array_equal(lat.labels, np.arange(20) % 3)
    np.testing.assert_array_equal(lat.split, np.arange(20) % 2)
    assert lat.metadata["sjalign.format"] == "latents/1"
    assert lat.metadata["encoder"] == "test"
    assert lat.latents.dtype == np.float32 and lat.state_ids.dtype == np.int64


def test_map_with_bad_info_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    amap = fit_map(rng.normal(size=(20, 3)), rng.normal(size=(20, 2)), np.arange(20))
    save_map(tmp_path / "m.safetensors", amap, {})
    tensors, meta = read_safetensors(tmp_path / "m.safetensors")
    meta["info"] = "[1, 2]"
    write_safetensors(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(FileFormatError, match="info"):
        load_map(tmp_path / "bad.safetensors")


def test_map_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(50, 3))
    amap = fit_map(x, y, np.arange(50))
    save_map(tmp_path / "m.safetensors", amap, {"encoder_a": "e1"})
    back, meta = load_map(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(back.W, amap.W)
    np.testing.assert_array_equal(back.train_state_ids, np.arange(50))
    np.testing.assert_allclose(back.apply(x), amap.apply(x))
    assert back.method == "ridge" and back.lam == pytest.approx(1e-3)
    assert meta["sjalign.format"] == "map/1" and meta["n_train"] == "50"


def test_zero_dim_arrays_keep_their_shape(tmp_path):
    write_safetensors(tmp_path / "z.safetensors", {"count": np.array(7, dtype=np.int64), "v": np.arange(3.0)}, {})
    tensors, _ = read_safetensors(tmp_path / "z.safetensors")
    assert tensors["count"].shape == () and int(tensors["count"]) == 7


def test_existing_output_refused_without_force(tmp_path):
    path = make_latents(tmp_path / "l.safetensors", np.ones((3, 2)), [1, 2, 3])
    with pytest.raises(SjalignError, match="already exists"):
        make_latents(path, np.zeros((3, 2)), [1, 2, 3])
    save_latents(path, Latents(np.zeros((3, 2), np.float32), np.array([1, 2, 3])), {}, force=True)
    assert load_latents(path).latents.sum() == 0


@pytest.mark.parametrize("problem", ["missing", "not_safetensors", "wrong_tag", "nan", "dup_ids", "bad_labels"])
def test_bad_latents_files(tmp_path, problem):
    path = tmp_path / "bad.safetensors"
    x = np.ones((4, 2), np.float32)
    ids = np.arange(4, dtype=np.int64)
    if problem == "not_safetensors":
        path.write_bytes(b"\x80\x04K\x01.")  # a pickle
    elif problem == "wrong_tag":
        write_safetensors(path, {"latents": x, "state_ids": ids}, {"sjalign.format": "map/1"})
    elif problem == "nan":
        x[2, 1] = np.nan
        write_safetensors(path, {"latents": x, "state_ids": ids}, {"sjalign.format": "latents/1"})
    elif problem == "dup_ids":
        write_safetensors(path, {"latents": x, "state_ids": np.array([0, 1, 1, 2])}, {"sjalign.format": "latents/1"})
    elif problem == "bad_labels":
        write_safetensors(path, {"latents": x, "state_ids": ids, "labels": np.arange(3)},
                          {"sjalign.format": "latents/1"})
    with pytest.raises((SjalignError, FileFormatError, ShapeError)) as info:
        load_latents(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import sjalign.outputs as outputs

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(outputs.os, "replace", boom)  # publishing with --force
    monkeypatch.setattr(outputs.os, "link", boom)  # publishing without
    for force in (False, True):
        with pytest.raises(RuntimeError):
            write_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(2)}, {}, force=force)
        assert list(tmp_path.iterdir()) == []


def test_read_safetensors_never_unpickles(tmp_path):
    import pickle

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"latents": [1, 2, 3]}))
    with pytest.raises(FileFormatError, match="not a valid safetensors"):
        read_safetensors(path)


def test_pairing_by_state_id_not_row_order(tmp_path):
    rng = np.random.default_rng(3)
    ids = np.arange(30) * 7
    x = rng.normal(size=(30, 3))
    y = x @ rng.normal(size=(3, 2))
    oa, ob = rng.permutation(30), rng.permutation(30)
    a = Latents(x[oa].astype(np.float32), ids[oa])
    # b lacks 5 states and has 2 extra ones
    keep = ob[5:]
    b = Latents(np.vstack([y[keep], np.ones((2, 2))]).astype(np.float32), np.concatenate([ids[keep], [999, 1000]]))
    pairs = pair_by_state_id(a, b)
    assert pairs.dropped_a == 5 and pairs.dropped_b == 2
    assert len(pairs.state_ids) == 25
    for i, sid in enumerate(pairs.state_ids):
        j = int(np.flatnonzero(ids == sid)[0])
        np.testing.assert_allclose(pairs.x[i], x[j], rtol=1e-6)
        np.testing.assert_allclose(pairs.y[i], y[j], rtol=1e-5)


def test_pairing_errors():
    a = Latents(np.ones((2, 2), np.float32), np.array([1, 2]), labels=np.array([0, 1]))
    with pytest.raises(SjalignError, match="no shared state ids"):
        pair_by_state_id(a, Latents(np.ones((2, 2), np.float32), np.array([3, 4])))
    with pytest.raises(SjalignError, match="labels disagree"):
        pair_by_state_id(a, Latents(np.ones((2, 2), np.float32), np.array([1, 2]), labels=np.array([1, 1])))
    with pytest.raises(SjalignError, match="splits disagree"):
        pair_by_state_id(Latents(np.ones((2, 2), np.float32), np.array([1, 2]), split=np.array([0, 1], np.uint8)),
                         Latents(np.ones((2, 2), np.float32), np.array([1, 2]), split=np.array([1, 1], np.uint8)))


def test_random_split_is_by_state_id():
    ids = np.arange(1000) * 3
    split = random_split(ids, 0.2, seed=0)
    assert split.sum() == 200
    # the same state lands on the same side whatever the row order
    perm = np.random.default_rng(0).permutation(1000)
    np.testing.assert_array_equal(random_split(ids[perm], 0.2, seed=0), split[perm])
    assert not np.array_equal(random_split(ids, 0.2, seed=1), split)
    with pytest.raises(SjalignError):
        random_split(ids[:3], 0.1, seed=0)


def test_sha256_file_reads_an_unchanged_file_once(tmp_path, monkeypatch):
    import builtins
    import hashlib
    import os

    from sjalign.io import sha256_file

    f = tmp_path / "x.bin"
    f.write_bytes(b"abc" * 1000)
    reads = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: (reads.append(str(p)), real_open(p, *a, **k))[1])
    assert sha256_file(f) == sha256_file(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert reads == [str(f)]  # the second digest came from the first read
    f.write_bytes(b"abd" * 1000)  # same size, new content
    os.utime(f, ns=(1, 1))  # and a modification time of its own
    assert sha256_file(f) == hashlib.sha256(b"abd" * 1000).hexdigest() and len(reads) == 2
