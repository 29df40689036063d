"""`sjalign evaluate` as a user runs it: seeds, model seeds, shift, random-init control, --report, bad input."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sjalign.io import Latents, save_latents

from conftest import make_latents, one_error_line, run

FAST = ("--permutations", "3", "--k", "5", "--device", "cpu")




def planted_model(tmp_path: Path, name: str, *, n=300, seed=0, shifted=False, split=None, layers=False,
                  labels=True):
    """A/B latents of one 'model': B = A W + noise; with ``shifted``, classes 3-5 follow another W."""
    rng = np.random.default_rng(seed)
    lab = np.arange(n) % 6
    x = rng.normal(size=(n, 6)) * np.linspace(2, 0.5, 6)
    w1, w2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    y = np.where(((lab < 3) | (not shifted))[:, None], x @ w1, x @ w2) + 0.1 * rng.normal(size=(n, 5)) + 1.0
    ids = np.arange(n) + 10
    paths = []
    for side, arr in (("a", x), ("b", y)):
        path = tmp_path / f"{name}_{side}.safetensors"
        extra = None
        if layers:  # layer i of A: x through a random linear layer i; layer i of B: the same, rotated and scaled
            q = np.linalg.qr(np.random.default_rng(99).normal(size=(4, 4)))[0] * (3.0 if side == "b" else 1.0)
            extra = {str(i): (x @ np.random.default_rng(i).normal(size=(6, 4)) @ q).astype(np.float32)
                     for i in range(3)}
        lat = Latents(arr.astype(np.float32), ids.astype(np.int64), lab.astype(np.int64) if labels else None,
                      None if split is None else split.astype(np.uint8), layers=extra)
        save_latents(path, lat, {"encoder": f"test:{name}", "dataset": "synthetic", "view": side})
        paths.append(path)
    return paths


def test_single_run_json_states_conventions(runner, tmp_path):
    a, b = planted_model(tmp_path, "m")
    res = run(runner, "evaluate", a, b, "--json", *FAST)
    assert res.exit_code == 0, res.stderr
    ev = json.loads(res.stdout)
    for key in ("metrics", "null", "r2_p_value", "n_train", "n_test", "warnings", "split", "direction"):
        assert key in ev
    assert "seeds" not in ev and "control" not in ev
    assert ev["direction"] == "a->b" and "onto B" in ev["mapped"] and (ev["d_a"], ev["d_b"]) == (6, 5)
    assert ev["split"] == {"kind": "seeded", "how": "seeded by state id (seed 0, test fraction 0.2)",
                           "n_train": 240, "n_test": 60, "seed": 0, "test_fraction": 0.2}
    assert ev["higher_is_better"]["nos@5"] is False and ev["higher_is_better"]["r2"] is True
    assert ev["higher_is_better"]["kappa"] is False
    human = run(runner, "evaluate", a, b, *FAST)
    assert human.exit_code == 0 and human.stdout == ""
    for needle in ("A → B: A mapped onto B's space", "n_train = 240, n_test = 60", "how: seeded by state id",
                   "nos@5 ↓", "r2 ↑", "lower is better", "null"):
        assert needle in human.stderr, needle


def test_split_seeds_and_model_seeds_mean_std(tmp_path):
    """Two model seeds per side × two split seeds, run as a subprocess (stdout must be pure JSON)."""
    m0, m1 = planted_model(tmp_path, "s0", seed=0), planted_model(tmp_path, "s1", seed=1)
    cmd = [sys.executable, "-m", "sjalign", "evaluate", f"{m0[0]},{m1[0]}", f"{m0[1]},{m1[1]}", "--seeds", "0,1",
           "--json", *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SJALIGN_DEBUG": ""})
    assert proc.returncode == 0, proc.stderr
    ev = json.loads(proc.stdout)
    s = ev["seeds"]
    assert s["runs"] == 4 and s["models"] == 2 and s["split_seeds"] == [0, 1]
    runs = s["per_run"]
    assert [(r["model"], r["split_seed"]) for r in runs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    r2 = np.array([r["metrics"]["r2"] for r in runs])
    assert s["metrics"]["r2"]["mean"] == pytest.approx(r2.mean()) == ev["metrics"]["r2"]
    assert s["metrics"]["r2"]["std"] == pytest.approx(r2.std(ddof=1)) and s["metrics"]["r2"]["std"] > 0
    assert s["null"]["r2"]["n"] == 4 and ev["r2_p_value"] == max(r["r2_p_value"] for r in runs)
    assert ev["a"] == f"{m0[0]},{m1[0]}"


def test_seeds_refused_where_the_split_is_fixed(runner, tmp_path):
    split = (np.arange(300) % 5 == 0).astype(np.uint8)
    a, b = planted_model(tmp_path, "f", split=split)
    one_error_line(run(runner, "evaluate", a, b, "--seeds", "0,1", *FAST), "--seeds", "--resplit")
    res = run(runner, "evaluate", a, b, "--seeds", "0,1", "--resplit", "--json", *FAST)
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["split"]["kind"] == "seeded"
    assert json.loads(run(runner, "evaluate", a, b, "--json", *FAST).stdout)["split"]["kind"] == "file"
    m = tmp_path / "m.safetensors"
    assert run(runner, "fit-map", a, b, "-o", m).exit_code == 0
    one_error_line(run(runner, "evaluate", a, b, "--map", m, "--seeds", "0,1", *FAST), "--seeds", "drop --map")
    a2, _ = planted_model(tmp_path, "g", seed=3)
    one_error_line(run(runner, "evaluate", f"{a},{a2}", b, *FAST), "2 latents file(s) for A but 1 for B")
    one_error_line(run(runner, "evaluate", f"{a},{a}", f"{b},{b}", *FAST), "listed twice")
    one_error_line(run(runner, "evaluate", f"{a},{tmp_path / 'nope.safetensors'}", f"{b},{b}", *FAST),
                   "nope.safetensors", "no such file")
    one_error_line(run(runner, "evaluate", a, b, "--seeds", "0,x", *FAST), "--seeds")


def test_shift_beside_in_distribution(runner, tmp_path):
    a, b = planted_model(tmp_path, "sh", n=600, shifted=True)
    res = run(runner, "evaluate", a, b, "--shift", "train-classes=0-2,test-classes=3-5", "--json", *FAST)
    assert res.exit_code == 0, res.stderr
    ev = json.loads(res.stdout)
    assert ev["shift"]["train_classes"] == [0, 1, 2] and ev["shift"]["test_classes"] == [3, 4, 5]
    assert ev["split"]["kind"] == "shift"
    assert ev["in_distribution"]["metrics"]["r2"] > 0.9
    assert ev["metrics"]["r2"] < ev["in_distribution"]["metrics"]["r2"] - 0.3  # the planted shift shows
    assert ev["in_distribution"]["n_train"] == ev["n_train"] == ev["shift"]["in_distribution_n_train"]
    human = run(runner, "evaluate", a, b, "--shift", "train-classes=0,1,2", *FAST)  # test: every other class
    assert human.exit_code == 0, human.stderr
    for needle in ("shifted map", "in-dist.", "tested on classes [3, 4, 5]", "how: shift: fit on classes 0,1,2"):
        assert needle in human.stderr, needle


@pytest.mark.parametrize("spec,needle", [
    ("train=0-2", "unknown or repeated key"),
    ("train-classes=0-x", "neither a class label nor a range"),
    ("train-classes=4-2", "empty range"),
    ("test-classes=1", "give train-classes"),
    ("train-classes=0-2,test-classes=2-4", "on both sides"),
    ("train-classes=0-2,test-classes=9", "class(es) 9 carried by no paired state"),
])
def test_shift_bad_input(runner, tmp_path, spec, needle):
    a, b = planted_model(tmp_path, "bad")
    one_error_line(run(runner, "evaluate", a, b, "--shift", spec, *FAST), "--shift", needle)


def test_shift_needs_labels_and_enough_test_pairs(runner, tmp_path):
    a, b = planted_model(tmp_path, "nolab", labels=False)
    one_error_line(run(runner, "evaluate", a, b, "--shift", "train-classes=0-2", *FAST), "labels")
    a, b = planted_model(tmp_path, "small", n=60)  # 12 test states, 6 of classes 3-5
    one_error_line(run(runner, "evaluate", a, b, "--shift", "train-classes=0-2", "--permutations", "3",
                       "--k", "10"), "--k 10", "n_test - 1")
    m = tmp_path / "m.safetensors"
    assert run(runner, "fit-map", a, b, "-o", m).exit_code == 0
    one_error_line(run(runner, "evaluate", a, b, "--map", m, "--shift", "train-classes=0-2", *FAST),
                   "m.safetensors", "drop --map")


def test_random_init_control(runner, tmp_path):
    a, b = planted_model(tmp_path, "trained", seed=0)
    rng = np.random.default_rng(7)
    ids = np.arange(300) + 10
    ca = make_latents(tmp_path / "ca.safetensors", rng.normal(size=(300, 6)), ids)
    cb = make_latents(tmp_path / "cb.safetensors", rng.normal(size=(300, 5)), ids[::-1])
    res = run(runner, "evaluate", a, b, "--control-a", ca, "--control-b", cb, "--json", *FAST)
    assert res.exit_code == 0, res.stderr
    ev = json.loads(res.stdout)
    assert ev["metrics"]["r2"] > 0.9 and ev["control"]["metrics"]["r2"] < 0.2
    assert ev["control"]["n_test"] == ev["n_test"] and ev["control"]["n_train"] == ev["n_train"]
    assert ev["control"]["a"] == [str(ca)] and ev["control"]["b"] == [str(cb)]
    human = run(runner, "evaluate", a, b, "--control-a", ca, "--control-b", cb, *FAST)
    assert "control" in human.stderr and "same state ids" in human.stderr
    # a control that misses test states cannot be compared
    short = make_latents(tmp_path / "short.safetensors", rng.normal(size=(150, 5)), ids[:150])
    one_error_line(run(runner, "evaluate", a, b, "--control-a", ca, "--control-b", short, *FAST),
                   "short.safetensors", "test state ids are missing", "cover the whole test split")
    one_error_line(run(runner, "evaluate", a, b, "--control-a", ca, *FAST), "--control-a and --control-b")


def test_map_train_ids_missing_and_budget_too_large(runner, tmp_path):
    a, b = planted_model(tmp_path, "m")
    m = tmp_path / "m.safetensors"
    assert run(runner, "fit-map", a, b, "-o", m).exit_code == 0
    x = np.random.default_rng(0).normal(size=(100, 6))
    a_small = make_latents(tmp_path / "a_small.safetensors", x, np.arange(100) + 10)
    one_error_line(run(runner, "evaluate", a_small, b, "--map", m, *FAST), "m.safetensors", "train state ids")
    rep = tmp_path / "rep"
    one_error_line(run(runner, "evaluate", a, b, "--pair-budget", "241", "--report", rep, *FAST),
                   "--pair-budget 241", "240")
    assert not rep.exists()


def test_report_folder(runner, tmp_path):
    a, b = planted_model(tmp_path, "rep", layers=True)
    ca, cb = planted_model(tmp_path, "ctl", seed=5)
    rep = tmp_path / "report"
    out = tmp_path / "ev.json"
    res = run(runner, "evaluate", a, b, "--control-a", ca, "--control-b", cb, "--report", rep, "-o", out, *FAST,
              "--k", "1,5,10")
    assert res.exit_code == 0, res.stderr
    names = {"index.html", "pca_pairs.png", "spectrum.png", "pair_budget.png", "nos_at_k.png", "layer_cka.png"}
    assert {p.name for p in rep.iterdir()} == names | {".sjalign-output.json"}  # the marker --force looks for
    page = (rep / "index.html").read_text()
    for png in sorted(rep.glob("*.png")):
        data = png.read_bytes()
        assert data.startswith(b"\x89PNG") and base64.b64encode(data).decode() in page
    assert "A mapped onto B" in page and "random-init control" in page
    ev = json.loads(out.read_text())
    assert [r["n_train"] for r in ev["pair_budget"]][-1] == ev["n_train"]  # the default budget sweep ends at all pairs
    cka = np.array(ev["layer_cka"]["cka"])
    assert cka.shape == (3, 3) and np.allclose(np.diag(cka), 1.0)  # B's layer i = A's layer i rotated and scaled
    assert cka[0, 1] < 0.99
    assert ev["config"]["report"] == str(rep)
    # an existing folder is refused without --force, left as it was, and replaced with it
    before = (rep / "index.html").read_bytes()
    one_error_line(run(runner, "evaluate", a, b, "--report", rep, *FAST), "already exists")
    assert (rep / "index.html").read_bytes() == before
    assert run(runner, "evaluate", a, b, "--report", rep, "--force", *FAST).exit_code == 0
    assert "random-init control" not in (rep / "index.html").read_text()  # the new report, without a control
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folder left


def test_default_k_leaves_out_k_at_least_n_test(runner, tmp_path):
    """Without --k the defaults 1..50 shrink to the ks a small test split allows (warned); an explicit k fails."""
    a, b = planted_model(tmp_path, "tiny", n=100)  # 20 test states
    res = run(runner, "evaluate", a, b, "--permutations", "3", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["n_test"] == 20 and out["ks"] == [1, 5, 10]
    assert "nos@10" in out["metrics"] and "nos@20" not in out["metrics"]
    assert any("k = 20,50 left out" in w for w in out["warnings"])
    one_error_line(run(runner, "evaluate", a, b, "--permutations", "3", "--k", "5,20"), "--k 20", "n_test - 1 = 19")


def test_max_test_subsamples_the_neighbour_metrics_and_says_so(runner, tmp_path):
    a, b = planted_model(tmp_path, "big")  # 60 test pairs
    res = run(runner, "evaluate", a, b, "--json", "--max-test", "25", *FAST)
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["n_test"] == 60 and out["n_neighbour_test"] == 25 and out["config"]["max_test"] == 25
    assert any("seeded subsample of 25 of the 60 test pairs" in w for w in out["warnings"])
    whole = json.loads(run(runner, "evaluate", a, b, "--json", *FAST).stdout)
    assert whole["n_neighbour_test"] == 60 and whole["metrics"]["r2"] == out["metrics"]["r2"]
    one_error_line(run(runner, "evaluate", a, b, "--max-test", "1", *FAST), "--max-test must be at least 2")
    one_error_line(run(runner, "evaluate", a, b, "--max-test", "5", *FAST), "--k 5", "n_test - 1 = 4")
