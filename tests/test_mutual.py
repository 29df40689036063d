"""Mutual teaching (issue 13, part 3): the cross-model terms, their refits, and two models trained at once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import needs_fashion_mnist, one_error_line, run
from sjalign.jepa.mutual import CrossModelCoupling, MutualOptions
from sjalign.jepa.teacher import normalise_batch, ridge_fit_flops


def _planted_pair(n=400, d_a=12, d_b=8, seed=0):
    """z_b an exact linear function of the normalised z_a: a fitted map must find it."""
    rng = np.random.default_rng(seed)
    z_a = (rng.normal(size=(n, d_a)) * rng.uniform(0.2, 3, d_a) + 4).astype(np.float32)
    z_b = (normalise_batch(torch.from_numpy(z_a)).numpy() @ rng.normal(size=(d_a, d_b))).astype(np.float32)
    return z_a, z_b


@pytest.mark.parametrize("method", ["a", "b"])
def test_refit_recovers_a_planted_map(method):
    z_a, z_b = _planted_pair()
    coupling = CrossModelCoupling(12, 8, MutualOptions(method=method, weight=1.0, every=2, buffer=400, lam=1e-6))
    coupling.first_fit(z_a, z_b)
    term_a, term_b = coupling(torch.from_numpy(z_a), torch.from_numpy(z_b))
    if method == "b":  # W (a -> b) is the planted map: the term vanishes on the states it was fitted on
        assert term_a.item() < 1e-6 and term_b.item() == pytest.approx(term_a.item())
    else:  # b -> a loses information (8 < 12 dims): A's term stays; B's (a -> b) vanishes
        assert term_b.item() < 1e-6 and term_a.item() > 0.1
    assert coupling.fits == 1 and coupling.map_flops == pytest.approx(  # one solve per direction used
        ridge_fit_flops(400, 12, 8) + (ridge_fit_flops(400, 8, 12) if method == "a" else 0))
    for step in (1, 2, 3, 4):
        coupling.after_step(step)
    assert coupling.fits == 3  # every 2 steps


def test_method_b_halves_give_the_joint_terms_gradient():
    """γ‖Ẑ_a Wᵀ − Ẑ_b‖² split into two detached halves: each side's gradient equals the joint term's."""
    z_a, z_b = _planted_pair(n=64, seed=1)
    coupling = CrossModelCoupling(12, 8, MutualOptions(method="b", weight=0.7, every=100))
    coupling.first_fit(z_a + np.random.default_rng(3).normal(size=z_a.shape).astype(np.float32), z_b)  # W not exact
    xa = torch.from_numpy(z_a).requires_grad_(True)
    xb = torch.from_numpy(z_b * 1.3 + 0.2).requires_grad_(True)
    term_a, term_b = coupling(xa, xb)
    ga, = torch.autograd.grad(term_a, xa, retain_graph=True)
    gb, = torch.autograd.grad(term_b, xb)
    ya, yb = xa.detach().clone().requires_grad_(True), xb.detach().clone().requires_grad_(True)
    joint = 0.7 * ((normalise_batch(ya) @ coupling.W_ab.T - normalise_batch(yb)) ** 2).mean()
    ja, jb = torch.autograd.grad(joint, (ya, yb))
    torch.testing.assert_close(ga, ja)
    torch.testing.assert_close(gb, jb)
    assert term_a.item() == pytest.approx(joint.item()) and term_a.item() > 1e-3


def test_method_a_targets_are_detached():
    z_a, z_b = _planted_pair(n=64, seed=2)
    coupling = CrossModelCoupling(12, 8, MutualOptions(method="a", weight=1.0, every=100))
    coupling.first_fit(z_a, z_b)
    xa, xb = (torch.from_numpy(z).requires_grad_(True) for z in (z_a, z_b))
    term_a, term_b = coupling(xa, xb)
    assert torch.autograd.grad(term_a, xb, allow_unused=True, retain_graph=True)[0] is None  # A's term moves A only
    assert torch.autograd.grad(term_b, xa, allow_unused=True)[0] is None


@pytest.mark.parametrize("options, needle", [
    (MutualOptions(method="c"), "--mutual-method"),
    (MutualOptions(weight=-1.0), "--align-weight"),
    (MutualOptions(weight=float("nan")), "--align-weight"),
    (MutualOptions(every=0), "--align-every"),
])
def test_bad_coupling_options(options, needle):
    from sjalign.errors import SjalignError

    with pytest.raises(SjalignError, match=needle):
        CrossModelCoupling(4, 4, options)


# ---------------------------------------------------------------- the CLI, on real Fashion-MNIST

TINY = ["--objective", "lejepa", "--num-views", "2", "--max-states", "200", "--batch-size", "64",
        "--eval-states", "60", "--epochs", "2"]


@needs_fashion_mnist
@pytest.mark.parametrize("method, epochs", [("a", 1), ("b", 2)])
def test_two_models_trained_at_once(runner, tmp_path, method, epochs):
    out = tmp_path / "pair"
    res = run(runner, "pretrain", *TINY, "--epochs", epochs, "--view", "crop:top:0.5", "--mutual", "crop:bottom:0.5",
              "--mutual-method", method, "--align-every", "2", "--target-acc", "0.2", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    steps = summary["a"]["steps"]
    assert summary["method"] == method and summary["b"]["steps"] == steps == epochs * (172 // 64)
    assert summary["align_fits"] == 1 + steps // 2 and summary["map_flops"] > 0
    assert summary["flops"] == summary["a"]["flops"] + summary["b"]["flops"] > 0
    assert summary["a"]["target"]["epoch"] in (1, 2)[:epochs]
    assert json.loads((out / "pair.json").read_text())["finished"] is True
    for name, view, seed in (("a", "crop:top:0.5", 0), ("b", "crop:bottom:0.5", 1)):
        config = json.loads((out / name / "config.json").read_text())
        assert (config["view"], config["seed"], config["mutual"]["role"]) == (view, seed, name)
        log = [json.loads(line) for line in (out / name / "log.jsonl").read_text().splitlines()]
        assert log[0]["epoch"] == 0 and "eval" in log[0]  # each model's own random-init baseline
        assert all(np.isfinite(r["terms"]["cross"]) and "pred" in r["terms"] for r in log[1:])
        assert (out / name / "curves.png").is_file()
        res = run(runner, "embed", "--encoder", f"jepa:{out / name}", "--view", view, "--max-states", "200",
                  "-o", tmp_path / f"{name}.safetensors")
        assert res.exit_code == 0, res.stderr  # each model is an ordinary run
    if method == "a":
        return
    a_log = json.loads((out / "a" / "log.jsonl").read_text().splitlines()[-1])
    b_log = json.loads((out / "b" / "log.jsonl").read_text().splitlines()[-1])
    assert a_log["terms"]["cross"] == pytest.approx(b_log["terms"]["cross"])  # one term, the same on both sides
    one_error_line(run(runner, "pretrain", *TINY, "--epochs", "3", "--resume", "-o", out / "b"), "mutual")
    # a second run needs --force, which restarts the pair
    one_error_line(run(runner, "pretrain", *TINY, "--mutual", "crop:bottom:0.5", "-o", out), "--force")
    res = run(runner, "pretrain", *TINY, "--epochs", "1", "--eval-every", "0", "--mutual", "crop:bottom:0.5",
              "--force", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["a"]["epochs"] == 1


@pytest.mark.parametrize("flags, needle", [
    (["--mutual", "crop:bottom", "--mutual-method", "c"], "--mutual-method"),
    (["--mutual", "crop:bottom", "--align-every", "0"], "--align-every"),
    (["--mutual", "crop:bottom", "--align-weight", "nan"], "--align-weight"),
    (["--mutual", "crop:bottom", "--teacher", "pixels"], "--teacher"),
    (["--mutual", "crop:bottom", "--resume"], "--resume"),
    (["--mutual-method", "a"], "need --mutual"),
])
def test_bad_mutual_options(runner, tmp_path, flags, needle):
    out = tmp_path / "pair"
    one_error_line(run(runner, "pretrain", *flags, "-o", out), needle)
    assert not out.exists()


def test_force_restarts_only_a_pair_folder(runner, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    one_error_line(run(runner, "pretrain", "--mutual", "crop:bottom", "--force", "-o", out), "pair.json")
    assert (out / "notes.txt").read_text() == "keep"
