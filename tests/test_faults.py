"""Faults (issue 12): kill -9 and SIGTERM mid-write, concurrent writers, a full disk.

Real processes (``python -m sjalign``), tiny synthetic files. After any fault the output path
is absent or whole, never partial; what a killed writer leaves behind (its temp file, named
with its pid) is removed by the next sjalign command that writes in that folder.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_latents
from sjalign.outputs import TMP_PREFIX, host_tag

N_BIG, D_BIG = 200_000, 32


def sjalign(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SJALIGN_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "sjalign", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 200,000 x 32 latents file (25 MB) and a map for it: apply-map writes for a while."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_BIG, D_BIG)).astype(np.float32)
    a = make_latents(root / "a.safetensors", x, np.arange(N_BIG))
    b = make_latents(root / "b.safetensors", x[:, ::-1] * 2, np.arange(N_BIG))
    m = root / "m.safetensors"
    res = subprocess.run([sys.executable, "-m", "sjalign", "fit-map", a, b, "-o", m], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return a, m


def wait_for_temp(folder: Path, proc: subprocess.Popen, timeout: float = 60.0) -> Path:
    """Poll until the writer's temp file appears (then it is mid-write)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = temps(folder)
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    raise AssertionError("no temp file appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_apply_map_leaves_no_output_and_its_temp_is_swept(tmp_path, big, sig):
    a, m = big
    out = tmp_path / "mapped.safetensors"
    proc = sjalign("apply-map", m, a, "-o", out, "--chunk-rows", "64")
    tmp = wait_for_temp(tmp_path, proc)
    assert str(proc.pid) in tmp.name  # the writer's pid is in the name
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert not out.exists()
    if sig == signal.SIGTERM:  # handled like Ctrl-C: one line, cleaned up at once
        assert proc.returncode == 143, err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: terminated")
        assert temps(tmp_path) == []
    else:
        assert proc.returncode == -signal.SIGKILL
        assert temps(tmp_path) == [tmp]  # kill -9 cannot clean up ...
        small = make_latents(tmp_path / "small.safetensors", np.ones((4, D_BIG)), np.arange(4))
        res = subprocess.run([sys.executable, "-m", "sjalign", "apply-map", m, small, "-o", tmp_path / "s.safetensors"],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert temps(tmp_path) == []  # ... the next writer in the folder does


# sjalign with a pause at the worst moment: the temp file (or folder) complete on disk, not yet published
PAUSED = """
import sys, time
import sjalign.outputs as o
publish, write_marker = o.publish, o.write_marker
def pause():
    print("READY", file=sys.stderr, flush=True)
    time.sleep(120)
def paused_publish(tmp, path, *args, **kwargs):
    if not str(path).endswith((".json",)) and ".parts" not in str(path):  # the output, not embed's parts
        pause()
    return publish(tmp, path, *args, **kwargs)
def paused_marker(*args, **kwargs):
    write_marker(*args, **kwargs)
    pause()
o.publish, o.write_marker = paused_publish, paused_marker
sys.argv = ["sjalign", *sys.argv[1:]]
from sjalign.cli.app import main
main()
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _inputs(root: Path, *, with_map: bool = False) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 4))
    labels = rng.integers(0, 2, 120)
    files = {"a": make_latents(root / "a.safetensors", x, np.arange(120), labels=labels),
             "b": make_latents(root / "b.safetensors", x @ rng.normal(size=(4, 4)), np.arange(120), labels=labels),
             "m": root / "m0.safetensors", "imgs": _image_folder(root)}
    if with_map:
        res = subprocess.run([sys.executable, "-m", "sjalign", "fit-map", files["a"], files["b"], "-o", files["m"]],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    return files


def _image_folder(root: Path) -> Path:
    """A two-class image folder of 6 tiny PNGs (pixels need no weights)."""
    from PIL import Image

    folder = root / "imgs"
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 100 if cls == "cat" else 200, 7)).save(folder / cls / f"{i}.png")
    return folder


KILLED = {
    "fit-map": lambda i, out: ["fit-map", i["a"], i["b"], "-o", out / "m.safetensors"],
    "evaluate --report": lambda i, out: ["evaluate", i["a"], i["b"], "--report", out / "rep", "--permutations", "1",
                                         "--pair-budget", "16"],
    "embed": lambda i, out: ["embed", "--encoder", "pixels", "--dataset", i["imgs"], "--image-size", "8",
                             "-o", out / "e.safetensors"],
    "transfer-probe": lambda i, out: ["transfer-probe", i["a"], i["b"], "--map", i["m"], "-o", out / "p.safetensors"],
}


@pytest.mark.parametrize("command", KILLED)
def test_kill9_at_the_worst_moment_leaves_no_output_and_the_next_run_sweeps(tmp_path, command):
    """kill -9 with the temp output complete but unpublished: no output; the temp is removed by the next run."""
    inputs = _inputs(tmp_path, with_map=command == "transfer-probe")
    out = tmp_path / "out"
    out.mkdir()
    args = [str(a) for a in KILLED[command](inputs, out)]
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    for line in proc.stderr:
        if line.strip() == "READY":
            break
    else:
        raise AssertionError(f"{command} ended before publishing: {proc.wait()}")
    left = temps(out)
    assert left and all(str(proc.pid) in p.name for p in left)
    proc.kill()
    proc.wait()
    resumable = (".parts", ".lock")  # embed's saved parts and its claim: what --resume would use
    assert [p for p in out.iterdir() if not p.name.startswith(TMP_PREFIX) and not p.name.endswith(resumable)] == []
    res = subprocess.run([sys.executable, "-m", "sjalign", *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr  # the rerun needs no --force ...
    assert temps(out) == [] and not [p for p in out.iterdir() if p.name.endswith(resumable)]  # ... and cleaned up


def test_live_writers_temp_files_are_never_swept(tmp_path):
    inputs = _inputs(tmp_path)
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f"{TMP_PREFIX}{dead}@{host_tag()}-0123abcd-out.safetensors.tmp"
    live = tmp_path / f"{TMP_PREFIX}{alive}@{host_tag()}-89abcdef-other.safetensors.tmp"
    elsewhere = tmp_path / f"{TMP_PREFIX}{dead}@another.host-4567cdef-x.safetensors.tmp"  # its pid means nothing here
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    elsewhere.write_bytes(b"another machine's")
    res = subprocess.run([sys.executable, "-m", "sjalign", "fit-map", inputs["a"], inputs["b"],
                          "-o", tmp_path / "m.safetensors"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not stale.exists() and live.read_bytes() == b"being written" and elsewhere.exists()


def test_concurrent_writers_exactly_one_wins(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 16))
    a = make_latents(tmp_path / "a.safetensors", x, np.arange(3000))
    b = make_latents(tmp_path / "b.safetensors", x @ rng.normal(size=(16, 16)), np.arange(3000))
    for round_ in range(1):
        out = tmp_path / f"same{round_}.safetensors"
        procs = [sjalign("fit-map", a, b, "-o", out, "--json") for _ in range(6)]
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 1, 1, 1, 1, 1], [(c, e) for c, _, e in results]
        for code, stdout, stderr in results:
            if code:
                lines = stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("error:") and str(out) in lines[0], stderr
                assert "already exists" in lines[0] or "appeared while this command ran" in lines[0]
                assert stdout == ""
        from sjalign.align import load_map

        load_map(out)  # the one file is whole
        assert temps(tmp_path) == []


def test_full_disk_names_the_output_and_leaves_nothing(tmp_path, big):
    a, m = big
    out = tmp_path / "mapped.safetensors"

    def limit():  # a 1 MB file-size limit: the 25 MB output cannot be written
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = sjalign("apply-map", m, a, "-o", out, preexec_fn=limit)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(out) in lines[0], err
    assert "too large" in lines[0] and TMP_PREFIX not in lines[0]
    assert not out.exists() and temps(tmp_path) == []
