"""Manifests (CSV and JSONL): pairing cameras by state, labels, splits, and every kind of bad row.

Each image is a solid colour that encodes its (state, camera), so a test can check that a
view read the right file.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sjalign.data import dataset_kind, open_dataset
from sjalign.data.manifest import read_manifest
from sjalign.data.selection import Subset, seeded_is_test
from sjalign.errors import DataError

VIEWS = ("front", "rear")


def write_capture(root: Path, n: int = 12, *, views=VIEWS, fmt: str = "csv", label=True, split=True,
                  string_ids: bool = False, size=(20, 14), extra_rows=()) -> Path:
    """n states seen by every camera; image of (state s, view v) is the colour (10 s, 100 v, 7)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(n):
        for v, view in enumerate(views):
            name = f"img/{s}_{view}.png"
            Image.new("RGB", size, (10 * s, 100 * v, 7)).save(root / name)
            row = {"state_id": f"scene-{s:03d}" if string_ids else str(1000 + s), "view": view, "path": name}
            if label:
                row["label"] = ["car", "bus", "truck"][s % 3]
            if split:
                row["split"] = "test" if s % 4 == 0 else "train"
            rows.append(row)
    rows += list(extra_rows)
    path = root / f"manifest.{fmt}"
    if fmt == "csv":
        columns = list(rows[0])
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def colour(ds, i: int) -> tuple[int, int]:
    x = ds[i].numpy()
    return int(round(x[0].mean() * 255)), int(round(x[1].mean() * 255))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_cameras_pair_by_state_and_read_the_right_image(tmp_path, fmt):
    path = write_capture(tmp_path, fmt=fmt)
    assert dataset_kind(str(path)) == "manifest"
    front = open_dataset(str(path), view="front", image_size=16)
    rear = open_dataset(str(path), view="rear", image_size=16)
    np.testing.assert_array_equal(front.state_ids, np.arange(1000, 1012))
    np.testing.assert_array_equal(front.state_ids, rear.state_ids)
    assert front.shape == (3, 16, 16)
    for i, sid in enumerate(front.state_ids):
        s = sid - 1000
        assert colour(front, i) == (10 * s, 0) and colour(rear, i) == (10 * s, 100)
    # labels by sorted class name (bus 0, car 1, truck 2); split from the file
    np.testing.assert_array_equal(front.labels, [[1, 0, 2][s % 3] for s in range(12)])
    np.testing.assert_array_equal(front.is_test, [s % 4 == 0 for s in range(12)])
    assert front.class_names == ["bus", "car", "truck"]


def test_string_state_ids_are_hashed_the_same_everywhere(tmp_path):
    a = read_manifest(write_capture(tmp_path / "a", string_ids=True, fmt="csv"))
    b = read_manifest(write_capture(tmp_path / "b", string_ids=True, fmt="jsonl"))
    np.testing.assert_array_equal(a.state_ids, b.state_ids)
    assert len(set(a.state_ids.tolist())) == 12 and (a.state_ids >= 0).all()
    ds = open_dataset(str(tmp_path / "a" / "manifest.csv"), view="rear+pixel-shuffle:1", image_size=8)
    assert ds.view == "rear+pixel-shuffle:1" and len(ds) == 12


def test_seeded_split_keeps_a_state_on_one_side(tmp_path):
    path = write_capture(tmp_path, n=200, split=False, label=False, size=(4, 4))
    m = read_manifest(path)
    for sid in np.unique(m.state_ids):
        assert len(set(m.is_test[m.state_ids == sid].tolist())) == 1
    frac = m.is_test.mean()
    assert 0.12 < frac < 0.28  # about 20 % test
    np.testing.assert_array_equal(m.is_test, seeded_is_test(m.state_ids))  # depends on the id alone
    with pytest.raises(DataError, match="needs labels"):
        open_dataset(str(path), view="front", subset=Subset(classes=("1",)))


def test_subsets_select_the_same_states_for_every_camera(tmp_path):
    path = write_capture(tmp_path, n=40, size=(4, 4))
    kw = dict(subset=Subset("all", ("car", "bus"), 9), image_size=4)
    front, rear = open_dataset(str(path), view="front", **kw), open_dataset(str(path), view="rear", **kw)
    np.testing.assert_array_equal(front.state_ids, rear.state_ids)
    assert len(front) == 9 and set(front.labels) <= {0, 1} and 1 <= front.is_test.sum() <= 3
    train = open_dataset(str(path), view="front", subset=Subset("train"), image_size=4)
    assert not train.is_test.any() and len(train) == 30


def test_single_view_states_are_dropped_with_a_count(tmp_path):
    path = write_capture(tmp_path, n=5, extra_rows=[
        {"state_id": "77", "view": "front", "path": "img/0_front.png", "label": "car", "split": "train"},
        {"state_id": "78", "view": "rear", "path": "img/0_rear.png", "label": "car", "split": "train"}])
    with pytest.warns(UserWarning, match="dropped 2 state"):
        ds = open_dataset(str(path), view="front", image_size=4)
    assert 77 not in ds.state_ids and len(ds) == 5
    lonely = write_capture(tmp_path / "one", n=3, views=("front",))
    with pytest.raises(DataError, match="every state has only one view"):
        read_manifest(lonely)


def test_missing_values_and_missing_images_are_counted_and_listed(tmp_path):
    path = write_capture(tmp_path, n=6, extra_rows=[
        {"state_id": "", "view": "front", "path": "img/0_front.png", "label": "car", "split": "train"},
        {"state_id": "5", "view": "front", "path": "", "label": "car", "split": "train"}])
    with pytest.raises(DataError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert "2 row(s) with a missing" in msg and "line 14, 15" in msg and "\n" not in msg
    gone = [{"state_id": str(2000 + k), "view": v, "path": f"lost/{k}_{v}.png", "label": "car", "split": "train"}
            for k in range(6) for v in VIEWS]
    path = write_capture(tmp_path / "b", n=3, extra_rows=gone)
    with pytest.raises(DataError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert "12 image(s) not found (first 10:" in msg and "lost/0_front.png" in msg and "lost/4_rear.png" in msg
    assert "lost/5_front.png" not in msg and msg.endswith(", ...)") and "\n" not in msg


def test_missing_columns_duplicates_and_disagreements(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("state_id,camera,path\n1,front,a.png\n")
    assert dataset_kind(str(bad)) == "manifest"
    with pytest.raises(DataError, match="missing column.*view"):
        read_manifest(bad)
    dup = write_capture(tmp_path / "d", n=2, extra_rows=[
        {"state_id": "1000", "view": "front", "path": "img/1_front.png", "label": "car", "split": "train"}])
    with pytest.raises(DataError, match="1 duplicate"):
        read_manifest(dup)
    dup = write_capture(tmp_path / "d0", n=2, extra_rows=[  # '01000' parses to the same state id as '1000'
        {"state_id": "01000", "view": "front", "path": "img/1_front.png", "label": "car", "split": "train"}])
    with pytest.raises(DataError, match="1 duplicate"):
        read_manifest(dup)
    clash = write_capture(tmp_path / "c", n=2, extra_rows=[
        {"state_id": "1001", "view": "side", "path": "img/1_front.png", "label": "bus", "split": "test"}])
    with pytest.raises(DataError, match="disagree on split"):
        read_manifest(clash)
    with pytest.raises(DataError, match="unknown view 'top'.*front, rear"):
        open_dataset(str(write_capture(tmp_path / "e", n=2)), view="top")
    jl = tmp_path / "x.jsonl"
    jl.write_text('{"state_id": 1, "view": "a", "path": "p.png"}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2: expected a JSON object"):
        read_manifest(jl)


def test_unreadable_image_is_one_line_naming_the_file(tmp_path):
    path = write_capture(tmp_path, n=4)
    (tmp_path / "img" / "2_front.png").write_bytes(b"not a png at all")
    ds = open_dataset(str(path), view="front", image_size=8)  # lazy: nothing decoded yet
    assert ds[0].shape == (3, 8, 8)
    for workers in (0, 1):
        with pytest.raises(DataError) as info:
            ds.materialize(batch_size=2, num_workers=workers)
        assert "2_front.png: cannot read image" in str(info.value) and "\n" not in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rear = open_dataset(str(path), view="rear", image_size=8)
    assert rear.materialize().shape == (4, 3, 8, 8)
