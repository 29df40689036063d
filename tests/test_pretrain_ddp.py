"""DistributedDataParallel pretraining: ``torchrun`` with 2 CPU processes (gloo), and its pieces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import needs_fashion_mnist, tensors_of
from sjalign.cli.app import app
from sjalign.errors import SjalignError
from sjalign.jepa import PretrainConfig, build_objective, read_log
from sjalign.jepa import distributed as ddp
from sjalign.jepa.masks import Masks


pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]



@needs_fashion_mnist
def test_torchrun_two_ranks_agree_and_match_one_process(runner, tmp_path):
    args = ["pretrain", "--max-states", "150", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
            "--seed", "1", "--json"]  # 128 train states: 4 steps of a global batch of 32, 16 per rank
    dump, two, one = tmp_path / "dump", tmp_path / "two", tmp_path / "one"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SJALIGN_DEBUG")}
    env |= {ddp.DUMP_ENV: str(dump), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sjalign", *args, "-o", str(two)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)  # rank 0 alone prints
    assert summary["world_size"] == 2 and summary["steps"] == 4

    # both ranks end with bit-identical weights, the ones rank 0 checkpointed
    r0, r1 = tensors_of(dump / "rank0.safetensors"), tensors_of(dump / "rank1.safetensors")
    ckpt = tensors_of(two / "checkpoint.safetensors")
    assert r0.keys() == r1.keys() == ckpt.keys()
    for key in r0:
        assert torch.equal(r0[key], r1[key]) and torch.equal(r0[key], ckpt[key]), key

    # ... and they trained: the loss is finite and the weights left the seeded initialisation
    config = PretrainConfig.from_json((two / "config.json").read_text())
    torch.manual_seed(config.seed)
    init = build_objective(config).state_dict()
    assert not torch.equal(init["encoder.patch_embed.weight"], r0["encoder.patch_embed.weight"])
    assert not torch.equal(init["target_encoder.patch_embed.weight"], r0["target_encoder.patch_embed.weight"])
    log2 = read_log(two)  # epoch 0 (the online evaluation, on rank 0 alone), then epoch 1
    assert [r["epoch"] for r in log2] == [0, 1] and set(log2[0]["eval"]) >= {"probe_acc", "rankme"}
    log2 = log2[1:]
    assert torch.isfinite(torch.tensor(log2[0]["loss"]))

    # one process with the same global batch: the same steps up to float summation order
    res = runner.invoke(app, args + ["-o", str(one)])
    assert res.exit_code == 0, res.output
    log1 = read_log(one)[1:]
    assert log2[0]["loss"] == pytest.approx(log1[0]["loss"], rel=1e-5)
    assert log2[0]["flops"] == log1[0]["flops"] > 0  # global FLOPs: 2 ranks x half the batch
    single = tensors_of(one / "checkpoint.safetensors")
    for key in r0:
        assert torch.allclose(r0[key], single[key], rtol=1e-4, atol=1e-6), key


def test_local_slice_splits_the_global_batch():
    rows = [ddp.local_slice(12, ddp.DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert [list(range(12))[s] for s in rows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert ddp.local_slice(7, ddp.DistInfo()) == slice(0, 7)
    with pytest.raises(SjalignError, match="batch size 10 .* divisible by the 4 processes"):
        ddp.local_slice(10, ddp.DistInfo(rank=0, world_size=4))


def test_shard_masks_takes_this_ranks_rows_of_every_field():
    context = torch.arange(8 * 5).reshape(8, 5)
    targets = torch.arange(8 * 4 * 3).reshape(8, 4, 3)
    part = ddp.shard_masks(Masks(context, targets), slice(4, 8), 8)
    assert isinstance(part, Masks)
    assert torch.equal(part.context, context[4:]) and torch.equal(part.targets, targets[4:])
    shared = torch.randn(6, 2).unsqueeze(0).expand(8, 6, 2)  # a batch-shared stride-0 field
    assert torch.equal(ddp.shard_masks((shared,), slice(0, 2), 8)[0], shared[:2])
    assert ddp.shard_masks((), slice(0, 4), 8) == ()
    with pytest.raises(SjalignError, match="field 'targets' of shape \\(4, 4, 3\\) is not batch-first"):
        ddp.shard_masks(Masks(context, targets[:4]), slice(0, 4), 8)


def test_single_process_setup_is_a_no_op(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info, device = ddp.setup(torch.device("cpu"))
    assert info == ddp.DistInfo() and info.is_main and not info.enabled and device == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(SjalignError, match="must be integers"):
        ddp.setup(torch.device("cpu"))
