"""Resume after ``kill -9``, crash-safe run folders, refusals on --resume, Dataset input (CPU)."""

from __future__ import annotations

import dataclasses

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import (fashion_mnist_images, needs_fashion_mnist, pretrain_first_epoch_only, single_error_line,
                      tensors_of)
from sjalign.cli.app import app
from sjalign.errors import SjalignError
from sjalign.jepa import PretrainConfig, ViTConfig, pretrain, read_log
from sjalign.jepa import checkpoint as ckpt
from sjalign.jepa.objectives import OBJECTIVES


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def fmnist():
    """256 real Fashion-MNIST images (n, 1, 28, 28) in [0, 1]."""
    return fashion_mnist_images(256)

SMALL_VIT = ViTConfig(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2)
REPO = Path(__file__).resolve().parents[1]


def small_config(**kw) -> PretrainConfig:
    base = dict(model="custom", vit=SMALL_VIT, epochs=2, batch_size=32, lr=1e-3, warmup_epochs=1,
                pred_dim=16, pred_depth=1, seed=0, device="cpu")
    return PretrainConfig.from_dict({**base, **kw})  # objective options may be given flat



def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors_of(a), tensors_of(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{a.name}: {key} differs"


def deterministic_log(run: Path) -> list[dict]:
    """The log without timings (the online evaluation's figures stay: they must match too)."""
    def strip(record: dict) -> dict:
        out = {k: v for k, v in record.items() if k not in ("seconds", "img_per_s")}
        if "eval" in out:
            out["eval"] = {k: v for k, v in out["eval"].items() if k != "seconds"}
        return out
    return [strip(r) for r in read_log(run)]


def sjalign_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SJALIGN_DEBUG")}
    # one thread in every run, so that the uninterrupted and the resumed run sum in the same order
    return env | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")}




# --- kill -9 mid-epoch, then --resume ------------------------------------------------

@needs_fashion_mnist
def test_kill9_mid_epoch_then_resume_matches_uninterrupted_run(runner, tmp_path):
    args = ["pretrain", "--max-states", "120", "--epochs", "3", "--batch-size", "16", "--device", "cpu",
            "--seed", "3", "--json"]  # 103 train states: 6 steps per epoch
    full, part = tmp_path / "full", tmp_path / "part"
    res = runner.invoke(app, args + ["-o", str(full)])  # uninterrupted, in this process (one thread)
    assert res.exit_code == 0, res.output

    cmd, env = [sys.executable, "-m", "sjalign", *args], sjalign_env()
    proc = subprocess.Popen(cmd + ["-o", str(part)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(read_log(part)) < 2:  # epoch 1 is committed (train state, checkpoint, log after epoch 0's) ...
            assert proc.poll() is None, "the run ended before its first epoch was logged"
            assert time.monotonic() < deadline, "no epoch logged in 300 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # ... kill it in epoch 2
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r["epoch"] for r in read_log(part)] == [0, 1], "the kill landed after epoch 2 (machine too slow?)"
    assert ckpt.load_train_state(part).epoch == 1

    res = runner.invoke(app, args + ["-o", str(part), "--resume"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["resumed_from"] == 1 and summary["steps"] == 18
    assert_same_tensors(full / ckpt.CHECKPOINT_FILE, part / ckpt.CHECKPOINT_FILE)
    assert_same_tensors(full / ckpt.TRAIN_STATE_FILE, part / ckpt.TRAIN_STATE_FILE)
    assert deterministic_log(part) == deterministic_log(full)  # losses, lr, momentum, steps and FLOPs
    assert summary["flops"] == read_log(full)[-1]["flops"] > 0


# --- a kill at any moment leaves a resumable folder ----------------------------------

def test_train_state_is_the_commit_point(fmnist, tmp_path):
    images, run = fmnist[:64], tmp_path / "run"
    cfg = small_config(epochs=2, batch_size=16)
    full = pretrain(cfg, images, tmp_path / "full")
    pretrain_first_epoch_only(cfg, images, run)
    epoch1_ckpt = (run / ckpt.CHECKPOINT_FILE).read_bytes()
    pretrain(cfg, images, run, resume=True)
    # now as if killed after writing epoch 2's train state, before its checkpoint and log line
    (run / ckpt.CHECKPOINT_FILE).write_bytes(epoch1_ckpt)
    (run / ckpt.LOG_FILE).write_text(json.dumps(read_log(run)[0]) + "\n")
    (run / f".{ckpt.CHECKPOINT_FILE}.abc123.tmp").write_bytes(b"half a checkpoint")
    assert ckpt.checkpoint_epoch(run) == 1 and ckpt.load_train_state(run).epoch == 2

    summary = pretrain(cfg, images, run, resume=True)  # nothing left to train: rebuilds the files
    assert summary["steps"] == full["steps"] and summary["resumed_from"] == 2
    assert ckpt.checkpoint_epoch(run) == 2
    assert_same_tensors(tmp_path / "full" / ckpt.CHECKPOINT_FILE, run / ckpt.CHECKPOINT_FILE)
    assert [r["epoch"] for r in read_log(run)] == [1, 2]
    assert not list(run.glob(".*.tmp"))
    # the train state alone carries weights, optimizer, RNG, log and FLOPs
    state = ckpt.load_train_state(run)
    assert state.model_state().keys() == tensors_of(run / ckpt.CHECKPOINT_FILE).keys()
    assert state.config.vit.input_mean is not None  # input_norm (the default): measured, then saved
    assert dataclasses.replace(state.config, vit=cfg.vit) == cfg and state.flops == full["flops"] > 0
    assert len(state.log) == 2


def test_resume_without_train_state_is_refused(fmnist, tmp_path):
    pretrain(small_config(epochs=0), fmnist[:64], tmp_path)  # the untrained control has no train state
    with pytest.raises(SjalignError, match="train_state.safetensors"):
        pretrain(small_config(epochs=1), fmnist[:64], tmp_path, resume=True)


# --- refusals through the CLI ----------------------------------------------------------


@needs_fashion_mnist
def test_cli_resume_refuses_other_objective_or_architecture(runner, tmp_path):
    run = tmp_path / "run"
    base = ["pretrain", "--max-states", "70", "--batch-size", "30", "--device", "cpu", "-o", str(run)]
    res = runner.invoke(app, base + ["--epochs", "1", "--json"])
    assert res.exit_code == 0, res.output
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert "lejepa" in OBJECTIVES
    res = runner.invoke(app, base + ["--epochs", "2", "--resume", "--objective", "lejepa"])
    single_error_line(res, "cannot resume", "objective: checkpoint 'ijepa' vs config 'lejepa'", str(run))
    res = runner.invoke(app, base + ["--epochs", "2", "--resume", "--patch-size", "7"])
    single_error_line(res, "cannot resume", "vit.patch_size: checkpoint 4 vs config 7")
    res = runner.invoke(app, base + ["--epochs", "2", "--resume", "--force"])
    single_error_line(res, "--resume and --force")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing touched


@needs_fashion_mnist
def test_cli_resume_keeps_the_runs_own_objective_options(runner, tmp_path):
    """--resume without --reg-weight continues with the run's λ, not the objective's default."""
    run = tmp_path / "run"
    base = ["pretrain", "--objective", "lejepa", "--max-states", "70", "--batch-size", "30", "--device", "cpu",
            "--num-slices", "16", "-o", str(run)]
    assert runner.invoke(app, base + ["--epochs", "1", "--reg-weight", "0.5", "--json"]).exit_code == 0
    res = runner.invoke(app, base[:-2] + ["-o", str(run), "--epochs", "2", "--resume", "--json"])
    assert res.exit_code == 0, res.output
    saved = PretrainConfig.from_json((run / "config.json").read_text())
    assert (saved.reg_weight, saved.num_slices, saved.epochs) == (0.5, 16, 2)


# --- a Dataset instead of a tensor ------------------------------------------------------

class TensorItems(torch.utils.data.Dataset):
    """A map-style Dataset over a tensor's rows (as the lazy datasets are)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i].clone()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataset_input_matches_tensor_input(fmnist, tmp_path, num_workers):
    images, cfg = fmnist[:96], small_config(epochs=2)
    a = pretrain(cfg, images, tmp_path / "tensor")
    b = pretrain(small_config(epochs=2, num_workers=num_workers), TensorItems(images), tmp_path / "dataset")
    assert a["steps"] == b["steps"] == 6 and a["flops"] == b["flops"]
    assert_same_tensors(tmp_path / "tensor" / ckpt.CHECKPOINT_FILE, tmp_path / "dataset" / ckpt.CHECKPOINT_FILE)
    assert deterministic_log(tmp_path / "tensor") == deterministic_log(tmp_path / "dataset")


def test_dataset_input_errors(tmp_path):
    with pytest.raises(SjalignError, match="is empty"):
        pretrain(small_config(), TensorItems(torch.zeros(0, 1, 28, 28)), tmp_path / "a")
    with pytest.raises(SjalignError, match=r"images of shape \(3, 32, 32\) do not fit"):
        pretrain(small_config(), TensorItems(torch.zeros(4, 3, 32, 32)), tmp_path / "b")
    with pytest.raises(SjalignError, match="must be a tensor or a torch Dataset"):
        pretrain(small_config(), [torch.zeros(1, 28, 28)], tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
