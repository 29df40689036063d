"""`sjalign pretrain` bad input as a user meets it: exit 1, one line, no traceback, no run folder."""

from __future__ import annotations

import json

import pytest

from conftest import needs_fashion_mnist, single_error_line
from sjalign.cli.app import app


pytestmark = pytest.mark.usefixtures("one_thread")




@needs_fashion_mnist
@pytest.mark.parametrize("args, needles", [
    (["--objective", "dino"], ["unknown objective 'dino'", "ijepa"]),
    (["--view", "nonsense"], ["unknown view 'nonsense'"]),
    (["--dataset", "no-such-dataset"], ["no-such-dataset"]),
    (["--max-states", "0"], ["--max-states"]),
    (["--split", "test", "--max-states", "1"], ["no test states"]),
    (["--split", "val"], ["--split 'val'"]),
    (["--resume", "--force"], ["--resume and --force"]),
    (["--resume"], ["no run to resume"]),
    (["--batch-size", "0"], ["batch_size must be >= 1"]),
    (["--objective", "lejepa", "--max-states", "2"], ["batch of 1 image(s) per process is too small"]),
    (["--patch-size", "-4"], ["--patch-size must be a positive"]),
    (["--lr", "nan"], ["lr must be a finite number > 0"]),
    (["--objective", "mae", "--mask-ratio", "nan"], ["mask_ratio must be between 0 and 1"]),
    (["--objective", "lpjepa", "--rgg-p", "0.01"], ["rgg_p must be a finite number >= 0.1"]),
    (["--eval-every", "-1"], ["--eval-every must be >= 0"]),
    (["--eval-states", "0"], ["--eval-states must be >= 1"]),
])
def test_bad_input_exits_1_with_one_line_and_no_run_folder(runner, tmp_path, args, needles):
    out = tmp_path / "run"
    res = runner.invoke(app, ["pretrain", "--max-states", "20", "--epochs", "1", "--device", "cpu", "-o", str(out), *args])
    single_error_line(res, *needles)
    assert not out.exists()


@needs_fashion_mnist
def test_resume_of_an_untrained_control_is_refused(runner, tmp_path):
    out = tmp_path / "run"
    base = ["pretrain", "--max-states", "20", "--device", "cpu", "-o", str(out)]
    assert runner.invoke(app, base + ["--epochs", "0", "--json"]).exit_code == 0
    files = sorted(p.name for p in out.iterdir())
    single_error_line(runner.invoke(app, base + ["--epochs", "1", "--resume"]), "train_state.safetensors")
    assert sorted(p.name for p in out.iterdir()) == files


@needs_fashion_mnist
def test_bf16_and_compile_on_cpu_are_allowed(runner, tmp_path):
    # bf16 is CUDA-only: on the CPU a warning, and the run trains in fp32 (README); --compile is
    # accepted on the CPU (it brings no gain there).
    res = runner.invoke(app, ["pretrain", "--max-states", "20", "--epochs", "0", "--device", "cpu", "--precision", "bf16",
                              "--compile", "--json", "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "warning: precision bf16 is used on CUDA only" in res.stderr
    summary = json.loads(res.stdout)
    assert summary["device"] == "cpu" and summary["steps"] == 0 and summary["flops"] == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["precision"] == "bf16" and config["compile"] is True


@needs_fashion_mnist
def test_happy_path_logs_flops_per_epoch(runner, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["pretrain", "--max-states", "45", "--epochs", "2", "--batch-size", "16", "--device", "cpu",
                              "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "epoch 2:" in res.stderr and "training FLOPs" in res.stderr
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]  # epoch 0: the online evaluation of the random init
    assert 0 == log[0]["flops"] < log[1]["flops"] < log[2]["flops"] and all(r["img_per_s"] > 0 for r in log[1:])
