"""The CLI on synthetic latents: JSON contracts, exit codes, one-line errors, no partial outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sjalign.cli.app import app
from sjalign.io import write_safetensors

from conftest import make_latents, run



def test_fit_map_evaluate_transfer_json(runner, planted, tmp_path):
    a, b, *_ = planted
    m = tmp_path / "m.safetensors"
    res = run(runner, "fit-map", a, b, "-o", m, "--json")
    assert res.exit_code == 0, res.stderr
    fit = json.loads(res.stdout)
    assert fit["map"] == str(m) and fit["method"] == "ridge" and fit["lambda"] == pytest.approx(1e-3)
    assert fit["n_train"] == 480 and fit["d_a"] == 12 and fit["d_b"] == 8 and fit["kappa"] >= 1

    res = run(runner, "evaluate", a, b, "--map", m, "--json", "--k", "1,5,10", "--permutations", "19")
    assert res.exit_code == 0, res.stderr
    ev = json.loads(res.stdout)
    assert ev["direction"] == "a->b" and ev["n_train"] == 480 and ev["n_test"] == 120
    for key in ("mse", "r2", "cka", "cka_raw", "dsc", "nos@1", "nos@5", "nos@10", "retrieval@1",
                "procrustes_error", "kappa", "orth_dev", "eff_rank_a", "eff_rank_b"):
        assert key in ev["metrics"] and (key in ev["null"]) == (key not in ("cka_raw", "eff_rank_a", "eff_rank_b"))
    assert ev["metrics"]["r2"] > 0.99 and ev["null"]["r2"] < 0.1
    assert ev["metrics"]["nos@10"] < ev["null"]["nos@10"]
    assert ev["r2_p_value"] == pytest.approx(1 / 20)

    res = run(runner, "transfer-probe", a, b, "--map", m, "--json", "-o", tmp_path / "probe.safetensors")
    assert res.exit_code == 0, res.stderr
    tp = json.loads(res.stdout)
    for key in ("source_acc", "transferred_acc", "target_acc", "a_probe_acc", "chance"):
        assert key in tp
    assert tp["a_probe_acc"] is None  # d_a != d_b
    assert tp["transferred_acc"] > tp["chance"] + 0.3
    assert tp["target_gradient_steps"] == 0

    res = run(runner, "apply-map", m, a, "-o", tmp_path / "mapped.safetensors", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["d"] == 8


def test_evaluate_without_map_fits_on_train_split(runner, planted):
    a, b, *_ = planted
    res = run(runner, "evaluate", a, b, "--json", "--permutations", "5", "--method", "procrustes", "--k", "5")
    assert res.exit_code == 0, res.stderr
    ev = json.loads(res.stdout)
    assert ev["method"] == "procrustes" and ev["metrics"]["orth_dev"] < 1e-5


def _single_error_line(res, *needles):
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and res.stderr.strip().endswith(lines[0]), res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


def test_missing_file(runner, planted, tmp_path):
    a, _, *_ = planted
    out = tmp_path / "m.safetensors"
    res = run(runner, "fit-map", a, tmp_path / "nope.safetensors", "-o", out)
    _single_error_line(res, "nope.safetensors", "no such file")
    assert not out.exists()


def test_not_safetensors(runner, planted, tmp_path):
    a, _, *_ = planted
    bad = tmp_path / "bad.safetensors"
    bad.write_text("hello, I am a CSV,\n1,2\n")
    out = tmp_path / "m.safetensors"
    _single_error_line(run(runner, "fit-map", a, bad, "-o", out), "bad.safetensors", "not a valid safetensors")
    assert not out.exists()


def test_wrong_format_tag(runner, planted, tmp_path):
    a, b, *_ = planted
    out = tmp_path / "e.json"
    _single_error_line(run(runner, "evaluate", a, b, "--map", a, "-o", out), "a.safetensors", "map/1")
    assert not out.exists()


def test_no_shared_state_ids(runner, planted, tmp_path):
    a, *_ = planted
    other = make_latents(tmp_path / "other.safetensors", np.ones((10, 3)), np.arange(10))
    out = tmp_path / "m.safetensors"
    _single_error_line(run(runner, "fit-map", a, other, "-o", out), "other.safetensors", "no shared state ids")
    assert not out.exists()


def test_map_dimension_mismatch(runner, planted, tmp_path):
    a, b, x, y, ids, labels = planted
    m = tmp_path / "m.safetensors"
    assert run(runner, "fit-map", a, b, "-o", m).exit_code == 0
    c = make_latents(tmp_path / "c.safetensors", np.random.default_rng(0).normal(size=(len(ids), 5)), ids)
    out = tmp_path / "out.safetensors"
    _single_error_line(run(runner, "apply-map", m, c, "-o", out), "m.safetensors", "dimension")
    assert not out.exists()
    _single_error_line(run(runner, "evaluate", c, b, "--map", m), "m.safetensors", "12 -> 8")


def test_nan_in_latents(runner, planted, tmp_path):
    a, *_ = planted
    x = np.ones((5, 3), np.float32)
    x[1, 1] = np.inf
    bad = tmp_path / "inf.safetensors"
    write_safetensors(bad, {"latents": x, "state_ids": np.arange(5)}, {"sjalign.format": "latents/1"})
    out = tmp_path / "m.safetensors"
    _single_error_line(run(runner, "fit-map", bad, a, "-o", out), "inf.safetensors", "NaN or Inf")
    assert not out.exists()


def test_output_exists_without_force(runner, planted, tmp_path):
    a, b, *_ = planted
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    _single_error_line(run(runner, "fit-map", a, b, "-o", out), "m.safetensors", "already exists")
    assert out.read_bytes() == b"precious"
    assert run(runner, "fit-map", a, b, "-o", out, "--force").exit_code == 0
    assert out.read_bytes() != b"precious"


def test_map_train_ids_missing(runner, planted, tmp_path):
    a, b, x, y, ids, labels = planted
    m = tmp_path / "m.safetensors"
    assert run(runner, "fit-map", a, b, "-o", m).exit_code == 0
    a2 = make_latents(tmp_path / "a2.safetensors", x[:100], ids[:100])
    _single_error_line(run(runner, "evaluate", a2, b, "--map", m), "m.safetensors", "train state ids")


def test_bad_options_are_user_errors(runner, planted, tmp_path):
    a, b, *_ = planted
    _single_error_line(run(runner, "evaluate", a, b, "--k", "1,500"), "n_test")
    _single_error_line(run(runner, "fit-map", a, b, "-o", tmp_path / "m", "--lambda", "-1"), "--lambda")
    _single_error_line(run(runner, "fit-map", a, b, "-o", tmp_path / "m", "--method", "magic"), "magic")
    _single_error_line(run(runner, "embed", "--encoder", "nosuch:x", "-o", tmp_path / "e"), "nosuch", "pixels")


def test_map_applied_backwards_is_refused(runner, planted, tmp_path):
    a, b, *_ = planted
    m = tmp_path / "m.safetensors"
    assert run(runner, "fit-map", a, b, "-o", m).exit_code == 0
    _single_error_line(run(runner, "evaluate", b, a, "--map", m), "m.safetensors", "target (B)")
    _single_error_line(run(runner, "apply-map", m, b, "-o", tmp_path / "x.safetensors"), "target (B)")
    assert not (tmp_path / "x.safetensors").exists()


def test_single_sided_file_split_falls_back_to_seeded_split(runner, tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(100, 4))
    ids = np.arange(100)
    a = make_latents(tmp_path / "a.safetensors", x, ids, split=np.zeros(100))
    b = make_latents(tmp_path / "b.safetensors", x @ rng.normal(size=(4, 3)), ids, split=np.zeros(100))
    res = run(runner, "fit-map", a, b, "-o", tmp_path / "m.safetensors", "--json")
    assert res.exit_code == 0, res.stderr
    fit = json.loads(res.stdout)
    assert fit["n_test"] == 20 and fit["split"]["kind"] == "seeded"  # as evaluate --json gives it
    assert any("'split' tensors mark all" in w for w in fit["warnings"])


def test_evaluate_sweeps_json(runner, planted):
    a, b, *_ = planted
    res = run(runner, "evaluate", a, b, "--json", "--permutations", "3", "--k", "5,10",
              "--pair-budget", "20,100,480", "--pair-noise", "0,0.5")
    assert res.exit_code == 0, res.stderr
    ev = json.loads(res.stdout)
    assert [r["n_train"] for r in ev["pair_budget"]] == [20, 100, 480]
    assert [r["noise"] for r in ev["pair_noise"]] == [0.0, 0.5]
    assert ev["pair_noise"][0]["metrics"]["r2"] > ev["pair_noise"][1]["metrics"]["r2"]
    _single_error_line(run(runner, "evaluate", a, b, "--pair-budget", "10000"), "pair-budget")
    _single_error_line(run(runner, "evaluate", a, b, "--pair-noise", "x"), "pair-noise")
    res = run(runner, "evaluate", a, b, "--permutations", "3", "--k", "5,10", "--pair-budget", "50")
    assert res.exit_code == 0 and "pair_budget sweep" in res.stderr


def test_dsc_points_must_be_sensible(runner, planted):
    a, b, *_ = planted
    _single_error_line(run(runner, "evaluate", a, b, "--dsc-points", "-1"), "--dsc-points")


def test_usage_error_exit_2(runner):
    assert runner.invoke(app, ["fit-map"]).exit_code == 2


def test_debug_shows_traceback(runner, planted, tmp_path, monkeypatch):
    a, *_ = planted
    monkeypatch.setenv("SJALIGN_DEBUG", "1")
    res = runner.invoke(app, ["fit-map", str(a), str(tmp_path / "nope"), "-o", str(tmp_path / "m")])
    assert res.exit_code == 1 and res.exception is not None and not isinstance(res.exception, SystemExit)


def test_listing_commands(runner):
    res = run(runner, "encoders", "--json")
    assert {"pixels", "jepa"} <= set(json.loads(res.stdout)["encoders"])
    res = run(runner, "datasets", "--json")
    assert "fashion-mnist" in json.loads(res.stdout)["datasets"]
