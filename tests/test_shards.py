"""Sharded, resumable embedding (issue 15): ``embed --shard I/N``, torchrun, the index, ``--resume``
after ``kill -9``, and every reader accepting an index as one latents set."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import needs_fashion_mnist, one_error_line, run

from sjalign.errors import SjalignError
from sjalign.io import load_latents
from sjalign.shards import (index_path, parse_shard, read_index, shard_path, shard_rows)

EMBED = ["embed", "--encoder", "pixels", "--max-states", "700", "--batch-size", "64", "--part-rows", "100"]


def test_parse_shard_and_rows():
    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("3/2", "2/2", "a/b", "-1/2", "0/0", "1"):
        with pytest.raises(SjalignError, match="--shard"):
            parse_shard(bad)
    for n, k in ((10, 3), (7, 7), (1000, 6)):
        rows = [shard_rows(n, i, k) for i in range(k)]
        assert rows[0][0] == 0 and rows[-1][1] == n and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert shard_path("d/z.safetensors", 2, 4).name == "z.shard-00002-of-00004.safetensors"
    assert index_path("d/z.safetensors").name == "z.safetensors.index.json"


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted, unsharded embed that every sharded or resumed one must equal."""
    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp("whole") / "whole.safetensors"
    res = run(CliRunner(), *EMBED, "-o", out)
    assert res.exit_code == 0, res.stderr
    return load_latents(out)


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.latents, b.latents)
    np.testing.assert_array_equal(a.state_ids, b.state_ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.split, b.split)


@needs_fashion_mnist
def test_shards_and_index_are_one_latents_set_for_every_command(runner, tmp_path, whole):
    out = tmp_path / "z.safetensors"
    res = run(runner, *EMBED, "--shard", "1/3", "-o", out, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["index"] is None  # shards missing: no index yet
    assert not index_path(out).exists()
    for i in (2, 0):
        res = run(runner, *EMBED, "--shard", f"{i}/3", "-o", out, "--json")
        assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["index"] == str(index_path(out))  # the last to finish writes it
    index = index_path(out)
    assert [p.name for p in read_index(index)] == [shard_path(out, i, 3).name for i in range(3)]
    assert not list(tmp_path.glob("*.parts")) and not list(tmp_path.glob("*.lock"))
    _same(load_latents(index), whole)
    # every reader: fit-map and apply-map stream the shards; evaluate, compare and transfer-probe load them
    top = tmp_path / "top.safetensors"
    assert run(runner, "embed", "--encoder", "pixels", "--view", "crop:top", "--max-states", "700", "-o", top).exit_code == 0
    assert run(runner, "fit-map", index, top, "-o", tmp_path / "m.safetensors").exit_code == 0
    res = run(runner, "evaluate", index, top, "--map", tmp_path / "m.safetensors", "--permutations", "2", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["n_test"] == int(whole.split.sum()), res.stderr
    assert run(runner, "apply-map", tmp_path / "m.safetensors", index, "-o", tmp_path / "ap.safetensors").exit_code == 0
    assert run(runner, "compare", index, top, "--metrics", "cka", "-o", tmp_path / "c.json").exit_code == 0
    assert run(runner, "transfer-probe", index, top, "--map", tmp_path / "m.safetensors").exit_code == 0


@needs_fashion_mnist
def test_an_index_with_a_missing_or_altered_shard_is_refused(runner, tmp_path):
    out = tmp_path / "z.safetensors"
    for i in (0, 1):
        assert run(runner, *EMBED, "--shard", f"{i}/2", "-o", out).exit_code == 0
    index, top = index_path(out), tmp_path / "top.safetensors"
    assert run(runner, *EMBED, "-o", top).exit_code == 0
    shard = shard_path(out, 1, 2)
    shard.write_bytes(top.read_bytes())  # another latents file in its place
    one_error_line(run(runner, "evaluate", index, top), index.name, shard.name, "altered")
    shard.unlink()
    one_error_line(run(runner, "fit-map", index, top, "-o", tmp_path / "m.safetensors"), shard.name, "missing")
    assert not (tmp_path / "m.safetensors").exists()


@needs_fashion_mnist
def test_bad_shard_requests(runner, tmp_path):
    out = tmp_path / "z.safetensors"
    one_error_line(run(runner, *EMBED, "--shard", "3/2", "-o", out), "--shard '3/2'")
    assert run(runner, *EMBED, "--shard", "0/2", "-o", out).exit_code == 0
    one_error_line(run(runner, *EMBED, "--shard", "1/3", "--resume", "-o", out), "one of 2 shards", "this run has 3")
    # a second process given the same shard: its lock names the live holder
    lock = shard_path(out, 1, 2).with_name(shard_path(out, 1, 2).name + ".lock")
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    one_error_line(run(runner, *EMBED, "--shard", "1/2", "-o", out), "being embedded by process", str(os.getpid()))
    assert not shard_path(out, 1, 2).exists() and lock.exists()  # the holder's lock stays
    lock.unlink()
    assert run(runner, *EMBED, "--shard", "1/2", "-o", out).exit_code == 0 and index_path(out).exists()


def _sjalign(args, env_extra=None, torchrun: int = 0):
    env = {k: v for k, v in os.environ.items() if k != "SJALIGN_FAULT_KILL_AFTER_PARTS"}
    env.update(env_extra or {})
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun),
            "-m", "sjalign"] if torchrun else [sys.executable, "-m", "sjalign"]) + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@needs_fashion_mnist
def test_kill_9_then_resume_embeds_only_the_rest_and_equals_an_uninterrupted_run(tmp_path, whole):
    out = tmp_path / "z.safetensors"
    parts = out.with_name(out.name + ".parts")
    killed = _sjalign([*EMBED, "-o", out], {"SJALIGN_FAULT_KILL_AFTER_PARTS": "2"})
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no cleanup ran
    assert not out.exists() and sorted(p.name for p in parts.glob("part-*")) == ["part-000000.safetensors",
                                                                                  "part-000001.safetensors"]
    other = _sjalign([*EMBED, "--view", "crop:top", "-o", out, "--resume"])  # another job's parts are not reused
    assert other.returncode == 1 and "view" in other.stderr and parts.is_dir()
    done = _sjalign([*EMBED, "-o", out, "--resume", "--json"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["embedded"] == 700 - 2 * 128  # parts of 100 rows rounded to 2 batches of 64
    _same(load_latents(out), whole)
    assert not parts.exists() and not list(tmp_path.glob("*.lock"))


def test_a_plain_rerun_discards_saved_parts_and_starts_over(runner, tmp_path, whole):
    """Parts of an interrupted run (as kill -9 leaves them) and no --resume: discarded with a warning."""
    from sjalign.shards import embed_in_parts

    out = tmp_path / "z.safetensors"
    parts = out.with_name(out.name + ".parts")
    res = run(runner, *EMBED, "-o", out, "--resume")  # a resume with nothing saved is a fresh run
    assert res.exit_code == 0
    out.unlink()
    calls = []
    embed_in_parts(lambda a, b: calls.append((a, b)) or (a, b), 0, 10, part_rows=5, parts_dir=parts,
                   job={"x": 1}, resume=False, save_part=lambda path, part: path.write_bytes(b"x"),
                   load_part=lambda path, a: None)
    assert calls == [(0, 5), (5, 10)] and parts.is_dir()  # left as an interrupted run would leave them
    with pytest.warns(UserWarning, match="discarded 2 saved part"):
        embed_in_parts(lambda a, b: (a, b), 0, 10, part_rows=5, parts_dir=parts, job={"x": 1}, resume=False,
                       save_part=lambda path, part: None, load_part=lambda path, a: None)


@needs_fashion_mnist
def test_torchrun_two_ranks_one_killed_then_resumed(tmp_path, whole):
    out = tmp_path / "z.safetensors"
    first = _sjalign([*EMBED, "-o", out], {"SJALIGN_FAULT_KILL_AFTER_PARTS": "1@1"}, torchrun=2)
    assert first.returncode != 0 and not index_path(out).exists()
    resumed = _sjalign([*EMBED, "-o", out, "--resume"], torchrun=2)
    assert resumed.returncode == 0, resumed.stderr
    _same(load_latents(index_path(out)), whole)
    assert not list(tmp_path.glob("*.parts")) and not list(tmp_path.glob("*.lock"))
