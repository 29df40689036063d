"""The new datasets through the CLI, as a user runs them: listing, pretrain -> embed -> fit-map ->
evaluate on an image folder and on smallNORB files, and every bad input as exit 1 with one line
and no output file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from sjalign.data.smallnorb import SETS
from sjalign.io import load_latents

from test_imagefolder import write_folder
from test_manifest import write_capture
from test_smallnorb import write_smallnorb

from conftest import one_error_line, run




def test_datasets_lists_and_describes(runner, tmp_path):
    listing = json.loads(run(runner, "datasets", "--json").stdout)
    assert {"fashion-mnist", "smallnorb", "PATH.csv|PATH.jsonl", "DIR", "PATH.txt"} <= set(listing["datasets"])
    assert "azimuth=A" in listing["datasets"]["smallnorb"]["views"]
    assert "aug-b" in listing["views"] and "pixel-shuffle[:SEED]" in listing["views"]
    manifest = write_capture(tmp_path / "cap", n=6, size=(4, 4))
    info = json.loads(run(runner, "datasets", manifest, "--json").stdout)
    assert info["kind"] == "manifest" and info["views"] == {"front": 6, "rear": 6} and info["states"] == 6
    norb = write_smallnorb(tmp_path / "norb")
    info = json.loads(run(runner, "datasets", "smallnorb", "--data-dir", norb, "--json").stdout)
    assert info["sets"]["training"]["entries"] == 288 and info["classes"][4] == "car"


def test_image_folder_pretrain_embed_fit_evaluate(runner, tmp_path):
    root = write_folder(tmp_path / "photos", per_class=15)
    run_dir = tmp_path / "run"
    res = run(runner, "pretrain", "--dataset", root, "--view", "aug-a", "--image-size", "16", "--epochs", "1",
              "--batch-size", "8", "--classes", "cat,dog", "--device", "cpu", "-o", run_dir, "--json")
    assert res.exit_code == 0, res.stderr
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["vit"]["in_chans"] == 3 and cfg["vit"]["img_size"] == 16 and cfg["vit"]["patch_size"] == 4
    outs = {}
    for view in ("aug-a", "aug-b"):
        outs[view] = tmp_path / f"{view}.safetensors"
        res = run(runner, "embed", "--encoder", f"jepa:{run_dir}", "--dataset", root, "--view", view,
                  "--classes", "cat,dog", "--num-workers", "1", "--batch-size", "7", "-o", outs[view], "--json")
        assert res.exit_code == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["n"] == 30 and out["d"] == 128 and out["image_shape"] == [3, 16, 16]  # the run's size
    meta = load_latents(outs["aug-b"]).metadata
    assert meta["dataset"] == str(root) and meta["view"] == "aug-b"
    assert json.loads(meta["subset"]) == {"split": "all", "classes": ["cat", "dog"], "max_states": None}
    a, b = load_latents(outs["aug-a"]), load_latents(outs["aug-b"])
    np.testing.assert_array_equal(a.state_ids, b.state_ids)
    np.testing.assert_array_equal(a.split, b.split)
    assert set(a.labels) == {0, 1} and not np.allclose(a.latents, b.latents)
    m = tmp_path / "map.safetensors"
    res = run(runner, "fit-map", outs["aug-a"], outs["aug-b"], "-o", m, "--json")
    assert res.exit_code == 0, res.stderr
    res = run(runner, "evaluate", outs["aug-a"], outs["aug-b"], "--map", m, "--k", "1", "--permutations", "3", "--json")
    assert res.exit_code == 0, res.stderr
    assert "r2" in json.loads(res.stdout)["metrics"]


def test_smallnorb_views_through_the_cli(runner, tmp_path):
    norb = write_smallnorb(tmp_path / "norb")
    run_dir = tmp_path / "az0"
    res = run(runner, "pretrain", "--dataset", "smallnorb", "--data-dir", norb, "--view", "azimuth=0",
              "--patch-size", "2", "--epochs", "0", "--seed", "3", "--device", "cpu", "-o", run_dir, "--json")
    assert res.exit_code == 0, res.stderr
    cfg = json.loads((run_dir / "config.json").read_text())
    assert (cfg["vit"]["img_size"], cfg["vit"]["in_chans"], cfg["vit"]["patch_size"]) == (8, 1, 2)
    files = []
    for view, workers in (("azimuth=0", 0), ("azimuth=18,camera=right+pixel-shuffle", 2)):
        out = tmp_path / f"{len(files)}.safetensors"
        res = run(runner, "embed", "--encoder", f"jepa:{run_dir}", "--dataset", "smallnorb", "--data-dir", norb,
                  "--view", view, "--max-states", "12", "--num-workers", workers, "-o", out, "--json")
        assert res.exit_code == 0, res.stderr
        files.append(out)
    assert load_latents(files[1]).metadata["view"] == "azimuth=18,camera=right+pixel-shuffle:3"  # the run's seed
    a, b = load_latents(files[0]), load_latents(files[1])
    np.testing.assert_array_equal(a.state_ids, b.state_ids)
    assert len(a.state_ids) == 12 and a.split.sum() == 6
    # the pixels control through 2 workers equals the in-process read
    p0, p2 = tmp_path / "p0.safetensors", tmp_path / "p2.safetensors"
    for out, workers in ((p0, 0), (p2, 2)):
        res = run(runner, "embed", "--encoder", "pixels", "--dataset", "smallnorb", "--data-dir", norb, "--view",
                  "azimuth=0-34", "--num-workers", workers, "--batch-size", "50", "-o", out)
        assert res.exit_code == 0, res.stderr
    np.testing.assert_array_equal(load_latents(p0).latents, load_latents(p2).latents)
    assert load_latents(p0).latents.shape == (32 * 18, 64)
    res = run(runner, "pretrain", "--dataset", "smallnorb", "--data-dir", norb, "--view", "azimuth=0",
              "--image-size", "10", "--epochs", "0", "-o", tmp_path / "bad")
    one_error_line(res, "image size 10 is not a multiple of the patch size 4")


def _corrupt_magic(norb):
    path = norb / f"{SETS['training']}-dat.mat"
    path.write_bytes(struct.pack("<I", 0x12345678) + path.read_bytes()[4:])
    return path


def _truncate(norb):
    path = norb / f"{SETS['testing']}-info.mat"
    path.write_bytes(path.read_bytes()[:-8])
    return path


@pytest.mark.parametrize("damage, needle", [(_corrupt_magic, "bad magic number"), (_truncate, "file holds")])
def test_corrupt_norb_header_is_exit_1(runner, tmp_path, damage, needle):
    norb = write_smallnorb(tmp_path / "norb")
    path = damage(norb)
    out = tmp_path / "x.safetensors"
    res = run(runner, "embed", "--encoder", "pixels", "--dataset", "smallnorb", "--data-dir", norb,
              "--view", "azimuth=0", "-o", out)
    one_error_line(res, path, needle)
    assert not out.exists()


def test_bad_manifests_are_exit_1(runner, tmp_path):
    out = tmp_path / "x.safetensors"
    gone = [{"state_id": str(50 + k), "view": v, "path": f"lost/{k}{v}.png", "label": "car", "split": "train"}
            for k in range(7) for v in ("front", "rear")]
    manifest = write_capture(tmp_path / "a", n=2, size=(4, 4), extra_rows=gone)
    line = one_error_line(run(runner, "embed", "--encoder", "pixels", "--dataset", manifest, "--view", "front",
                              "-o", out), manifest, "14 image(s) not found (first 10:")
    assert line.count("lost/") == 10
    broken = tmp_path / "b.csv"
    broken.write_text("state_id,view,path\n1,front,a.png\n2,,b.png\n3,rear\n")
    one_error_line(run(runner, "embed", "--encoder", "pixels", "--dataset", broken, "--view", "front", "-o", out),
                   "2 row(s) with a missing state_id/view/path value (line 3, 4)")
    single = write_capture(tmp_path / "c", n=3, views=("front",), size=(4, 4))
    one_error_line(run(runner, "embed", "--encoder", "pixels", "--dataset", single, "--view", "front", "-o", out),
                   "every state has only one view")
    partly = write_capture(tmp_path / "d", n=3, size=(4, 4), extra_rows=[
        {"state_id": "9", "view": "front", "path": "img/0_front.png", "label": "car", "split": "train"}])
    res = run(runner, "embed", "--encoder", "pixels", "--dataset", partly, "--view", "rear", "--image-size", "4",
              "-o", out, "--json")
    assert res.exit_code == 0 and "dropped 1 state(s) with only one view" in res.stderr
    assert json.loads(res.stdout)["n"] == 3
    one_error_line(run(runner, "embed", "--encoder", "pixels", "--dataset", partly, "--view", "side", "-o",
                       tmp_path / "y.safetensors"), "unknown view 'side'")


def test_unreadable_image_is_exit_1_without_output(runner, tmp_path):
    root = write_folder(tmp_path / "photos", per_class=3)
    bad = root / "dog" / "img01.png"
    bad.write_bytes(b"\x89PNG broken")
    out = tmp_path / "x.safetensors"
    for workers in ("0", "2"):
        res = run(runner, "embed", "--encoder", "pixels", "--dataset", root, "--num-workers", workers, "-o", out)
        one_error_line(res, bad, "cannot read image")
        assert not out.exists()
    res = run(runner, "pretrain", "--dataset", root, "--image-size", "8", "--epochs", "0", "-o", tmp_path / "r")
    one_error_line(res, bad)


def test_pretrain_reads_large_selections_lazily_with_the_same_result(runner, tmp_path, monkeypatch):
    norb = write_smallnorb(tmp_path / "norb")
    args = ["pretrain", "--dataset", "smallnorb", "--data-dir", norb, "--view", "azimuth=0-4", "--patch-size", "2",
            "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--json"]
    eager = run(runner, *args, "-o", tmp_path / "eager")
    assert eager.exit_code == 0, eager.stderr
    monkeypatch.setattr("sjalign.data.lazy.IN_MEMORY_BYTES", 0)  # every selection is now "larger than memory"
    lazy = run(runner, *args, "--num-workers", "1", "-o", tmp_path / "lazy")
    assert lazy.exit_code == 0, lazy.stderr
    assert json.loads(lazy.stdout)["loss"] == pytest.approx(json.loads(eager.stdout)["loss"], rel=1e-5)
    root = write_folder(tmp_path / "photos", per_class=3)
    (root / "eel" / "img02.JPG").write_bytes(b"garbage")
    res = run(runner, "pretrain", "--dataset", root, "--image-size", "8", "--epochs", "1", "--batch-size", "9",
              "--split", "all", "--num-workers", "1", "-o", tmp_path / "r")  # one batch holds every image
    one_error_line(res, root / "eel" / "img02.JPG", "cannot read image")
