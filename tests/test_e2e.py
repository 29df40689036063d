"""End to end: the real CLI, as a user runs it, on a small real Fashion-MNIST subset."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sjalign.io import load_latents

from conftest import needs_fashion_mnist

pytestmark = [needs_fashion_mnist, pytest.mark.slow]
N = 700  # 600 train + 100 official test states


def sj(*args, expect=0):
    proc = subprocess.run([sys.executable, "-m", "sjalign", *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == expect, proc.stderr
    return proc


def test_whole_chain_on_real_fashion_mnist(tmp_path):
    views = {"a": "crop:top", "b": "crop:bottom"}
    for side, view in views.items():
        out = sj("pretrain", "--view", view, "--epochs", 1, "--max-states", N, "--batch-size", 64,
                 "--seed", 0 if side == "a" else 1, "-o", tmp_path / f"run_{side}", "--json")
        summary = json.loads(out.stdout)
        assert summary["steps"] == 600 // 64 and np.isfinite(summary["loss"])
        assert (tmp_path / f"run_{side}" / "config.json").is_file()
        out = sj("embed", "--encoder", f"jepa:{tmp_path / f'run_{side}'}", "--view", view, "--max-states", N,
                 "-o", tmp_path / f"{side}.safetensors", "--json")
        assert json.loads(out.stdout)["d"] == 128
        sj("embed", "--encoder", "pixels", "--view", view, "--max-states", N, "-o", tmp_path / f"pix_{side}.safetensors")

    lat = load_latents(tmp_path / "a.safetensors")
    assert lat.latents.shape == (N, 128) and lat.labels is not None
    assert lat.split.sum() == 100 and (lat.state_ids[lat.split == 1] >= 60000).all()
    meta = lat.metadata
    assert meta["encoder"].startswith("jepa:") and meta["view"] == "crop:top" and meta["dataset"] == "fashion-mnist"
    assert "sha256" not in meta["config"] and json.loads(meta["config"])["max_states"] == N

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    m = tmp_path / "map.safetensors"
    fit = json.loads(sj("fit-map", a, b, "-o", m, "--json").stdout)
    assert fit["n_train"] == 600 and fit["n_test"] == 100 and fit["d_a"] == fit["d_b"] == 128

    ev = json.loads(sj("evaluate", a, b, "--map", m, "--json", "--permutations", "19").stdout)
    assert ev["n_train"] == 600 and ev["n_test"] == 100 and ev["direction"] == "a->b"
    for key in ("mse", "r2", "cka", "cka_raw", "dsc", "nos@1", "nos@5", "nos@10", "nos@20", "nos@50",
                "retrieval@1", "procrustes_error", "kappa", "orth_dev"):
        assert key in ev["metrics"] and (key in ev["null"]) == (key not in ("cka_raw", "eff_rank_a", "eff_rank_b"))
    # two views of the same states: the map must beat the shuffled-pair null clearly
    assert ev["metrics"]["r2"] > ev["null"]["r2"] + 0.2
    assert ev["metrics"]["nos@10"] < ev["null"]["nos@10"]
    assert ev["r2_p_value"] == pytest.approx(0.05)

    pix = json.loads(sj("evaluate", tmp_path / "pix_a.safetensors", tmp_path / "pix_b.safetensors", "--json",
                        "--permutations", "5").stdout)
    assert pix["n_test"] == 100 and pix["metrics"]["r2"] > pix["null"]["r2"]

    tp = json.loads(sj("transfer-probe", a, b, "--map", m, "--json", "-o", tmp_path / "probe.safetensors").stdout)
    assert tp["transferred_acc"] > tp["chance"] + 0.1 and tp["target_gradient_steps"] == 0
    assert tp["a_probe_acc"] is not None and 0 <= tp["source_acc"] <= 1

    out = json.loads(sj("apply-map", m, a, "-o", tmp_path / "a_in_b.safetensors", "--json").stdout)
    assert out["n"] == N and out["d"] == 128

    # human output goes to stderr, stdout stays clean; a second run refuses to overwrite
    proc = sj("fit-map", a, b, "-o", m, expect=1)
    assert proc.stdout == "" and "already exists" in proc.stderr and "Traceback" not in proc.stderr


def test_pretrain_bad_input_one_line(tmp_path):
    proc = sj("pretrain", "--view", "crop:middle", "--max-states", 10, "-o", tmp_path / "r", expect=1)
    assert "crop:middle" in proc.stderr and "Traceback" not in proc.stderr
    proc = sj("pretrain", "--dataset", "imagenet-22k", "-o", tmp_path / "r", expect=1)
    assert "unknown dataset" in proc.stderr
    proc = sj("pretrain", "--objective", "dino", "--max-states", 10, "-o", tmp_path / "r", expect=1)
    assert "dino" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
