"""smallNORB: the binary-matrix format written byte by byte here, states, views and subsets.

The files are written with ``struct`` in the official layout (little-endian int32 magic,
ndim, max(3, ndim) dims, then the data), independently of sjalign's own writer. Every
image carries its ground truth in its pixels (set, category, instance, elevation,
azimuth, lighting, camera), so a test can check that a view picked the right one.
"""

from __future__ import annotations

import gzip
import itertools
import struct
from pathlib import Path

import numpy as np
import pytest

from sjalign.data import open_dataset
from sjalign.data.selection import Subset
from sjalign.data.smallnorb import SETS, parse_selector, read_norb, read_norb_header, write_norb
from sjalign.errors import DataError

BYTE, INT = 0x1E3D4C55, 0x1E3D4C54
SIDE = 8


def norb_bytes(magic: int, array: np.ndarray) -> bytes:
    """The official layout, written independently of sjalign: magic, ndim, max(3, ndim) dims, data."""
    dims = list(array.shape) + [1] * (3 - array.ndim)
    fmt = {BYTE: "<u1", INT: "<i4"}[magic]
    return struct.pack("<Ii", magic, array.ndim) + \
        struct.pack(f"<{len(dims)}i", *dims) + array.astype(fmt).tobytes()


def make_set(set_index: int, *, categories=(0, 1), elevations=(0, 3), lightings=(1, 4), azimuths=None, seed=0):
    """Entries of one set (shuffled), images planted with their factors: (dat, cat, info)."""
    instances = (4, 6) if set_index == 0 else (0, 3)
    azimuths = tuple(range(0, 36, 2)) if azimuths is None else azimuths
    rows = list(itertools.product(categories, instances, elevations, azimuths, lightings))
    rows = [rows[i] for i in np.random.default_rng(seed + set_index).permutation(len(rows))]
    n = len(rows)
    dat = np.zeros((n, 2, SIDE, SIDE), np.uint8)
    cat = np.array([r[0] for r in rows], np.int32)
    info = np.array([[r[1], r[2], r[3], r[4]] for r in rows], np.int32)  # instance, elevation, azimuth, lighting
    for e, (c, i, el, az, li) in enumerate(rows):
        for cam in (0, 1):
            dat[e, cam, 0, :7] = [set_index, c, i, el, az, li, cam]
            dat[e, cam, 1:] = 100 + cam * 50
    return dat, cat, info


def write_smallnorb(folder: Path, *, gz: bool = False, **kw) -> Path:
    """Both official sets (-dat, -cat, -info) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for s, stem in enumerate(SETS.values()):
        dat, cat, info = make_set(s, **kw)
        for part, magic, arr in (("dat", BYTE, dat), ("cat", INT, cat), ("info", INT, info)):
            raw = norb_bytes(magic, arr)
            path = folder / f"{stem}-{part}.mat"
            if gz:
                with gzip.open(str(path) + ".gz", "wb") as f:
                    f.write(raw)
            else:
                path.write_bytes(raw)
    return folder


@pytest.fixture
def norb(tmp_path):
    return write_smallnorb(tmp_path / "norb")


def planted(ds, i: int) -> dict:
    x = np.rint(ds[i].numpy()[0, 0, :7] * 255).astype(int)
    return dict(zip(("set", "category", "instance", "elevation", "azimuth", "lighting", "camera"), x))


def test_header_layout_is_byte_exact_and_reads_back(tmp_path):
    cat = np.array([3, 1, 4, 1, 0], np.int32)
    info = np.arange(20, dtype=np.int32).reshape(5, 4)
    dat = np.arange(5 * 2 * 3 * 4, dtype=np.uint8).reshape(5, 2, 3, 4)
    for name, magic, arr in (("cat", INT, cat), ("info", INT, info), ("dat", BYTE, dat)):
        raw = norb_bytes(magic, arr)
        (tmp_path / name).write_bytes(raw)
        back = read_norb(tmp_path / name)
        assert back.shape == arr.shape and back.dtype == arr.dtype
        np.testing.assert_array_equal(back, arr)
        # sjalign's writer produces the very same bytes
        assert write_norb(tmp_path / f"{name}.w", arr).read_bytes() == raw
    # ndim < 3 still stores three dimensions: 4 magic + 4 ndim + 3 * 4 dims
    assert (tmp_path / "cat").stat().st_size == 20 + 5 * 4
    assert (tmp_path / "cat").read_bytes()[:20] == bytes.fromhex("544c3d1e" "01000000" "05000000" "01000000" "01000000")
    h = read_norb_header(tmp_path / "dat")
    assert (h.shape, h.offset, h.dtype) == ((5, 2, 3, 4), 24, np.uint8)
    np.testing.assert_array_equal(read_norb(tmp_path / "dat", mmap=True), dat)


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"\x00\x00\x00\x00" + raw[4:], "bad magic number"),
    (lambda raw: raw[:-3], "file holds"),
    (lambda raw: raw + b"\x00", "file holds"),
    (lambda raw: raw[:6], "too short"),
    (lambda raw: raw[:4] + struct.pack("<i", 40) + raw[8:], "number of dimensions"),
    (lambda raw: struct.pack("<i", 0x1E3D4C52) + raw[4:], "packed"),
])
def test_corrupt_headers_are_one_line_errors(tmp_path, damage, message):
    path = tmp_path / "x-cat.mat"
    path.write_bytes(damage(norb_bytes(INT, np.arange(6, dtype=np.int32))))
    with pytest.raises(DataError, match=message) as info:
        read_norb(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_views_pick_the_right_image_and_pair_by_state(norb):
    a = open_dataset("smallnorb", view="azimuth=0", data_dir=norb)
    b = open_dataset("smallnorb", view="azimuth=18,camera=right", data_dir=norb)
    # 2 sets x 2 categories x 2 instances x 2 elevations x 2 lightings, one image each
    assert len(a) == len(b) == 32 and a.shape == (1, SIDE, SIDE)
    np.testing.assert_array_equal(a.state_ids, b.state_ids)
    for ds, az, cam in ((a, 0, 0), (b, 18, 1)):
        for i in range(len(ds)):
            p = planted(ds, i)
            assert (p["azimuth"], p["camera"]) == (az, cam)
            sid = ds.state_ids[i]
            assert sid == p["set"] * 10**6 + p["category"] * 10**5 + p["instance"] * 10**4 + \
                p["elevation"] * 10**3 + p["lighting"] * 10**2
            assert ds.labels[i] == p["category"] and ds.is_test[i] == (p["set"] == 1)
    assert a.is_test.sum() == 16 and set(a.state_ids[a.is_test] // 10**4 % 10) == {0, 3}  # testing-set instances


def test_azimuth_ranges_wrap_and_pair_at_a_constant_offset(norb):
    assert parse_selector("azimuth=30-2").azimuths == (30, 32, 34, 0, 2)
    assert parse_selector("azimuth=all").azimuths == tuple(range(0, 36, 2))
    a = open_dataset("smallnorb", view="azimuth=30-2", data_dir=norb)
    b = open_dataset("smallnorb", view="azimuth=0-8", data_dir=norb)
    assert len(a) == len(b) == 32 * 5
    np.testing.assert_array_equal(a.state_ids, b.state_ids)
    for i in range(0, len(a), 7):
        k = a.state_ids[i] % 100
        assert planted(a, i)["azimuth"] == (30 + 2 * k) % 36 and planted(b, i)["azimuth"] == 2 * k


def test_subsets_are_view_independent(norb):
    a = open_dataset("smallnorb", view="azimuth=0", data_dir=norb, subset=Subset("all", ("1",), 10))
    b = open_dataset("smallnorb", view="azimuth=20+pixel-shuffle", data_dir=norb,
                     subset=Subset("all", ("human",), 10))  # class 1 by name
    np.testing.assert_array_equal(a.state_ids, b.state_ids)
    assert len(a) == 10 and set(a.labels) == {1} and a.is_test.sum() == 5  # half the candidates are test
    assert b.view == "azimuth=20+pixel-shuffle:0"  # the model seed is recorded
    with pytest.raises(DataError, match="unknown class 'truckk'.*animal, human, airplane, truck, car"):
        open_dataset("smallnorb", view="azimuth=0", data_dir=norb, subset=Subset("all", ("truckk",)))
    test = open_dataset("smallnorb", view="azimuth=0", data_dir=norb, subset=Subset("test"))
    assert test.is_test.all() and len(test) == 16


def test_dat_is_memory_mapped_and_gzip_works(norb, tmp_path):
    ds = open_dataset("smallnorb", view="azimuth=4", data_dir=norb)
    ds[0]
    assert isinstance(ds.source._array(0), np.memmap)
    gz = write_smallnorb(tmp_path / "gz", gz=True)
    ds_gz = open_dataset("smallnorb", view="azimuth=4", data_dir=gz)
    np.testing.assert_array_equal(ds_gz.state_ids, ds.state_ids)
    np.testing.assert_array_equal(ds_gz.materialize().numpy(), ds.materialize().numpy())


@pytest.mark.parametrize("view, message", [
    ("identity", "choose a view"), ("camera=left", "no azimuth"), ("azimuth=3", "does not exist"),
    ("azimuth=40", "does not exist"), ("azimuth=0,camera=top", "camera 'top'"), ("azimuth=0,zoom=2", "bad view"),
])
def test_bad_views(norb, view, message):
    with pytest.raises(DataError, match=message):
        open_dataset("smallnorb", view=view, data_dir=norb)


def test_missing_and_inconsistent_files(norb, tmp_path):
    with pytest.raises(DataError, match="smallNORB files not found.*cs.nyu.edu"):
        open_dataset("smallnorb", view="azimuth=0", data_dir=tmp_path / "nothing")
    stem = SETS["training"]
    (norb / f"{stem}-cat.mat").write_bytes(norb_bytes(INT, np.zeros(5, np.int32)))
    with pytest.raises(DataError, match="expected .* integer categories"):
        open_dataset("smallnorb", view="azimuth=0", data_dir=norb)
    (norb / f"{stem}-cat.mat").unlink()
    with pytest.raises(DataError, match="incomplete"):
        open_dataset("smallnorb", view="azimuth=0", data_dir=norb)
