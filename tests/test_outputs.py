"""sjalign.outputs: temp names, no-replace publication on every file system path, stale sweeps, folder markers."""

from __future__ import annotations

import errno
import os

import pytest

from sjalign.errors import SjalignError
from sjalign.outputs import (
    MARKER_FILE, TMP_PREFIX, atomic_write_bytes, check_output_folder, host_tag, publish, publish_folder,
    sweep_stale, temp_name,
)


def test_temp_name_fits_and_carries_pid_and_host(tmp_path):
    name = temp_name(tmp_path / ("x" * 254))
    assert len(name.encode()) <= 255
    assert name.startswith(f"{TMP_PREFIX}{os.getpid()}@{host_tag()}-") and name.endswith(".tmp")
    assert temp_name(tmp_path / "a") != temp_name(tmp_path / "a")


def _unsupported(*args, **kwargs):
    raise OSError(errno.EPERM, "Operation not permitted")


@pytest.mark.parametrize("route", ["link", "renameat2", "check-then-rename"])
def test_publish_without_replace_refuses_an_existing_output_on_every_route(tmp_path, monkeypatch, route):
    import sjalign.outputs as outputs

    if route != "link":
        monkeypatch.setattr(outputs.os, "link", _unsupported)
    if route == "check-then-rename":
        def no_renameat2(src, dst):
            raise OSError(errno.ENOSYS, "no renameat2")

        monkeypatch.setattr(outputs, "_rename_noreplace", no_renameat2)
    out = tmp_path / "out.bin"
    atomic_write_bytes(out, b"first", replace=False)
    assert out.read_bytes() == b"first"
    with pytest.raises(SjalignError, match="appeared while this command ran"):
        atomic_write_bytes(out, b"second", replace=False)
    assert out.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    atomic_write_bytes(out, b"third", replace=True)  # --force
    assert out.read_bytes() == b"third"


def test_publish_keeps_the_temp_name_out_of_messages(tmp_path):
    tmp = tmp_path / temp_name(tmp_path / "x")
    tmp.write_bytes(b"1")
    (tmp_path / "x").write_bytes(b"0")
    with pytest.raises(SjalignError) as info:
        publish(tmp, tmp_path / "x", replace=False)
    assert TMP_PREFIX not in str(info.value) and not tmp.exists()


def test_sweep_removes_only_dead_writers_of_this_machine(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = host_tag()
    gone = [tmp_path / f"{TMP_PREFIX}{dead.pid}@{host}-00000000-a.tmp", tmp_path / f"{TMP_PREFIX}{dead.pid}@{host}-1-d.dir"]
    kept = [tmp_path / f"{TMP_PREFIX}{os.getpid()}@{host}-00000000-mine.tmp",  # this process: still writing
            tmp_path / f"{TMP_PREFIX}{dead.pid}@elsewhere-00000000-b.tmp",  # another machine's pid
            tmp_path / f".{TMP_PREFIX[1:]}notapid-c.tmp", tmp_path / ".hidden.tmp", tmp_path / "data.bin"]
    gone[0].write_bytes(b"")
    gone[1].mkdir()
    (gone[1] / "index.html").write_text("x")
    for p in kept:
        p.write_bytes(b"")
    assert sorted(sweep_stale(tmp_path)) == sorted(gone)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in gone)


def test_folder_publication_and_force_rules(tmp_path, monkeypatch):
    rep = tmp_path / "rep"
    publish_folder({"index.html": b"1"}, rep, "report", force=False)
    assert sorted(os.listdir(rep)) == [MARKER_FILE, "index.html"]
    with pytest.raises(SjalignError, match="appeared while"):
        publish_folder({"index.html": b"2"}, rep, "report", force=False)
    with pytest.raises(SjalignError, match="not an sjalign other folder"):
        check_output_folder(rep, True, "other")
    publish_folder({"index.html": b"3", "a.png": b"p"}, rep, "report", force=True)
    assert (rep / "index.html").read_bytes() == b"3" and (rep / "a.png").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no temp or set-aside folder left
    (rep / "mine.txt").write_text("x")
    with pytest.raises(SjalignError, match="did not write"):
        check_output_folder(rep, True, "report")
    monkeypatch.chdir(rep)
    with pytest.raises(SjalignError, match="current folder"):
        check_output_folder(".", True, "report")
