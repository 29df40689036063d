"""Image folders: classes, ids, splits, resizing, and the two augmentation views through a DataLoader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sjalign.data import dataset_kind, open_dataset
from sjalign.data.imagefolder import scan_image_folder
from sjalign.data.lazy import DEFAULT_IMAGE_SIZE, fit_square
from sjalign.data.selection import Subset
from sjalign.errors import DataError

CLASSES = ("cat", "dog", "eel")


def write_folder(root: Path, per_class: int = 5, *, split_dirs: bool = False, seed: int = 0) -> Path:
    """Random RGB images of varying sizes; class c's images have red channel mean near 60 c."""
    rng = np.random.default_rng(seed)
    parts = [("train", per_class), ("test", 2)] if split_dirs else [(None, per_class)]
    for part, count in parts:
        for c, name in enumerate(CLASSES):
            folder = root / part / name if part else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                h, w = rng.integers(12, 40, size=2)
                arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                arr[..., 0] = 60 * c + 20
                ext = ".png" if k % 2 else ".JPG"
                Image.fromarray(arr).save(folder / f"img{k:02d}{ext}", format="PNG" if ext == ".png" else "JPEG",
                                          quality=95)
    (root / CLASSES[0] / "notes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / CLASSES[0] / "notes.txt").write_text("not an image")
    return root


def test_scan_classes_ids_and_seeded_split(tmp_path):
    root = write_folder(tmp_path / "photos", per_class=30)
    assert dataset_kind(str(root)) == "imagefolder"
    f = scan_image_folder(root)
    assert f.class_names == list(CLASSES) and len(f.paths) == 90  # notes.txt is not an image
    np.testing.assert_array_equal(f.labels, np.repeat([0, 1, 2], 30))
    assert [p.name for p in f.paths[:3]] == ["img00.JPG", "img01.png", "img02.JPG"]
    assert not f.official_split and 0.08 < f.is_test.mean() < 0.35
    ds = open_dataset(str(root), view="identity", image_size=16)
    assert ds.shape == (3, 16, 16) and len(ds) == 90
    red = ds.materialize()[:, 0].mean(dim=(1, 2)).numpy() * 255
    np.testing.assert_allclose(red, 60 * f.labels + 20, atol=12)  # each image is the one its label says (JPEG: +-10)


def test_official_split_from_train_and_test_folders_and_classes_by_name(tmp_path):
    root = write_folder(tmp_path / "imnet", per_class=4, split_dirs=True)
    f = scan_image_folder(root)
    assert f.official_split and f.is_test.sum() == 6 and not f.is_test[:12].any()
    ds = open_dataset(str(root), subset=Subset("test", ("dog", "2")), image_size=8)
    assert len(ds) == 4 and set(ds.labels) == {1, 2} and ds.is_test.all()
    np.testing.assert_array_equal(ds.state_ids, [14, 15, 16, 17])  # ids count train images first
    with pytest.raises(DataError, match="unknown class 'cow'.*cat, dog, eel"):
        open_dataset(str(root), subset=Subset(classes=("cow",)))


def test_default_size_and_centre_crop():
    # a 20 x 40 image whose centre half is white and outer quarters black -> all white when fitted to 20
    x = torch.zeros(3, 20, 40)
    x[:, :, 10:30] = 1.0
    torch.testing.assert_close(fit_square(x, 20), torch.ones(3, 20, 20))
    small = fit_square(x, 10)  # resized (antialiased) before the crop: only the edge columns see the black
    assert small.shape == (3, 10, 10) and small[..., 1:-1].min() > 0.99 and small.min() > 0.5
    assert DEFAULT_IMAGE_SIZE == 96


def test_augmentation_views_are_per_state_through_any_loader(tmp_path):
    root = write_folder(tmp_path / "p", per_class=4)
    a = open_dataset(str(root), view="aug-a", image_size=24)
    b = open_dataset(str(root), view="aug-b", image_size=24)
    plain = open_dataset(str(root), view="identity", image_size=24).materialize()
    xa = a.materialize(batch_size=5)
    # the same observation whatever the batching, the worker processes or the access path
    torch.testing.assert_close(torch.cat(list(a.loader(batch_size=3, num_workers=2))), xa)
    torch.testing.assert_close(a[7], xa[7])
    sub = a.subset(np.array([7, 2]))
    torch.testing.assert_close(sub.materialize(), xa[[7, 2]])
    assert not torch.allclose(xa, plain) and not torch.allclose(xa, b.materialize())
    assert xa.min() >= 0 and xa.max() <= 1
    torch.manual_seed(0)
    r1 = torch.rand(3)
    torch.manual_seed(0)
    a.materialize()
    torch.testing.assert_close(torch.rand(3), r1)  # the caller's RNG stream is left alone


def test_bad_folders(tmp_path):
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in class subfolders"):
        open_dataset(str(empty))
    norbish = tmp_path / "norb"
    (norbish / "x").mkdir(parents=True)
    (norbish / "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat").write_bytes(b"")
    with pytest.raises(DataError, match="--dataset smallnorb"):
        open_dataset(str(norbish))
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        open_dataset("nope")
