"""The bad-input catalogue (issue 12): every case a careless or hostile user met, on tiny synthetic files.

Each error case must end in exit 1, one ``error:`` line naming the file or flag and the
problem, no traceback, nothing on stdout, and nothing left in the folder that was not there
before (no partial output, no temp file). Warning cases must say so in one line and go on.
Categories: outputs that would destroy something (``OUT``), the file contract (``FILE``),
options (``OPT``), maps used on other pairs (``PAIR``). The faults (kill -9, SIGTERM,
concurrent writers, a full disk) are in ``test_faults.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import make_latents, needs_fashion_mnist, one_error_line, run
from sjalign.io import LATENTS_FORMAT

N, D = 80, 5


def raw_latents(path: Path, **tensors) -> Path:
    """A latents file written without sjalign's checks (any dtypes), as another tool might."""
    rng = np.random.default_rng(1)
    base = {"latents": rng.normal(size=(N, D)).astype(np.float32), "state_ids": np.arange(N, dtype=np.int64)}
    base.update(tensors)
    save_file({k: v for k, v in base.items() if v is not None}, str(path),
              metadata={"sjalign.format": LATENTS_FORMAT, "encoder": "raw"})
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """a, b (a planted map b = a W + noise), c, d (another pair of the same shape), a map a -> b."""
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    ids, labels = np.arange(N), rng.integers(0, 3, N)
    x = rng.normal(size=(N, D)) + labels[:, None]
    y = x @ rng.normal(size=(D, D)) + 0.01 * rng.normal(size=(N, D))
    files = {"a": make_latents(root / "a.safetensors", x, ids, labels=labels, encoder="enc-a"),
             "b": make_latents(root / "b.safetensors", y, ids, labels=labels, encoder="enc-b"),
             "c": make_latents(root / "c.safetensors", rng.normal(size=(N, D)), ids, labels=labels, encoder="enc-c"),
             "d": make_latents(root / "d.safetensors", rng.normal(size=(N, D)), ids, labels=labels, encoder="enc-d")}
    files["m"] = root / "m.safetensors"
    assert run(CliRunner(), "fit-map", files["a"], files["b"], "-o", files["m"]).exit_code == 0
    return files


@pytest.fixture
def ws(tmp_path, pair):
    """A fresh folder holding copies of the pair's files (cases may try to destroy them)."""
    import shutil

    for name, path in pair.items():
        shutil.copy2(path, tmp_path / path.name)
    return tmp_path


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders and special files)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


def expect_error(runner, ws: Path, args: list, *needles) -> str:
    """Run; exit 1 with one error line holding ``needles``; the folder is exactly as before."""
    before = listing(ws)
    res = run(runner, *args)
    line = one_error_line(res, *needles)
    assert listing(ws) == before, "the command changed or left files behind"
    return line


def f(ws: Path, name: str) -> Path:
    return ws / f"{name}.safetensors"


# ---------------------------------------------------------------- OUT: outputs never destroy what sjalign did not write

OUTPUT_IS_INPUT = {
    "fit-map -o A --force": lambda ws: ["fit-map", f(ws, "a"), f(ws, "b"), "-o", f(ws, "a"), "--force"],
    "fit-map -o B": lambda ws: ["fit-map", f(ws, "a"), f(ws, "b"), "-o", f(ws, "b")],
    "apply-map over its map": lambda ws: ["apply-map", f(ws, "m"), f(ws, "a"), "-o", f(ws, "m"), "--force"],
    "apply-map over its latents": lambda ws: ["apply-map", f(ws, "m"), f(ws, "a"), "-o", f(ws, "a"), "--force"],
    "evaluate -o A": lambda ws: ["evaluate", f(ws, "a"), f(ws, "b"), "-o", f(ws, "a"), "--force",
                                 "--permutations", "1"],
    "evaluate -o MAP": lambda ws: ["evaluate", f(ws, "a"), f(ws, "b"), "--map", f(ws, "m"), "-o", f(ws, "m"),
                                   "--force", "--permutations", "1"],
    "transfer-probe -o MAP": lambda ws: ["transfer-probe", f(ws, "a"), f(ws, "b"), "--map", f(ws, "m"),
                                         "-o", f(ws, "m"), "--force"],
    "transfer-probe -o B": lambda ws: ["transfer-probe", f(ws, "a"), f(ws, "b"), "--map", f(ws, "m"),
                                       "-o", f(ws, "b"), "--force"],
}


@pytest.mark.parametrize("case", OUTPUT_IS_INPUT)
def test_output_that_is_an_input_is_refused_even_with_force(runner, ws, case):
    expect_error(runner, ws, OUTPUT_IS_INPUT[case](ws), "is also an input")


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_output_that_links_to_an_input_is_refused(runner, ws, link):
    alias = ws / "alias.safetensors"
    (os.symlink if link == "symlink" else os.link)(f(ws, "a"), alias)
    expect_error(runner, ws, ["fit-map", f(ws, "a"), f(ws, "b"), "-o", alias, "--force"], "alias.safetensors",
                 "is also an input")


def test_embed_over_its_manifest_is_refused(runner, tmp_path):
    from test_manifest import write_capture

    manifest = write_capture(tmp_path, n=4)
    expect_error(runner, tmp_path, ["embed", "--encoder", "pixels", "--dataset", manifest, "--view", "front",
                                    "-o", manifest, "--force"], "manifest.csv", "is also an input")


@pytest.mark.parametrize("kind", ["fifo", "folder", "dangling-link"])
def test_output_that_is_not_a_regular_file_is_refused_even_with_force(runner, ws, kind):
    target = ws / "special"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    else:
        os.symlink(ws / "nowhere", target)
    line = expect_error(runner, ws, ["fit-map", f(ws, "a"), f(ws, "b"), "-o", target, "--force"], "special")
    assert "regular file" in line or "folder" in line or "broken symbolic link" in line


def test_output_named_as_a_folder_is_refused(runner, ws):
    expect_error(runner, ws, ["fit-map", f(ws, "a"), f(ws, "b"), "-o", f"{ws}/newdir/"], "newdir", "names a folder")


def test_output_in_a_missing_folder_is_refused(runner, ws):
    expect_error(runner, ws, ["fit-map", f(ws, "a"), f(ws, "b"), "-o", ws / "nope" / "m2.safetensors"],
                 "does not exist")


def test_long_output_names(runner, ws):
    ok = ws / ("x" * 240 + ".safetensors")  # 252 characters: the temp name must still fit
    assert run(runner, "fit-map", f(ws, "a"), f(ws, "b"), "-o", ok).exit_code == 0
    assert ok.is_file() and not [p for p in ws.iterdir() if p.name.startswith(".")]
    expect_error(runner, ws, ["fit-map", f(ws, "a"), f(ws, "b"), "-o", ws / ("y" * 300)], "file name too long")


def test_report_force_never_deletes_a_folder_sjalign_did_not_write(runner, ws):
    proj = ws / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "main.py").write_text("print('mine')\n")
    (proj / "README").write_text("my project\n")
    expect_error(runner, ws, ["evaluate", f(ws, "a"), f(ws, "b"), "--report", proj, "--force",
                              "--permutations", "1", "--pair-budget", "16"], "proj", "not an sjalign evaluate-report folder")


def test_report_force_replaces_its_own_report_but_not_files_added_to_it(runner, ws):
    report = ws / "rep"
    args = ["evaluate", f(ws, "a"), f(ws, "b"), "--report", report, "--permutations", "1", "--pair-budget", "16"]
    assert run(runner, *args).exit_code == 0
    assert (report / "index.html").is_file()
    assert run(runner, *args, "--force").exit_code == 0  # its own report: replaced
    assert not [p for p in ws.iterdir() if p.name.startswith(".sjalign-tmp-")]
    (report / "notes.txt").write_text("mine")
    expect_error(runner, ws, [*args, "--force"], "rep", "did not write", "notes.txt")


@pytest.mark.parametrize("where", ["cwd", "holds-input"])
def test_report_folder_that_is_the_current_folder_or_holds_an_input(runner, ws, where, monkeypatch):
    monkeypatch.chdir(ws)
    report = "." if where == "cwd" else ws
    expect_error(runner, ws, ["evaluate", f(ws, "a"), f(ws, "b"), "--report", report, "--force",
                              "--permutations", "1"], "elsewhere")


def test_json_output_inside_the_report_folder_is_refused(runner, ws):
    expect_error(runner, ws, ["evaluate", f(ws, "a"), f(ws, "b"), "--report", ws / "rep", "-o", ws / "rep" / "m.json",
                              "--permutations", "1"], "lies inside --report")


def test_pretrain_force_refuses_a_folder_that_is_not_a_run(runner, tmp_path):
    mine = tmp_path / "myproject"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": true}\n')
    expect_error(runner, tmp_path, ["pretrain", "-o", mine, "--force", "--epochs", "0"], "myproject",
                 "not a run folder")


# ---------------------------------------------------------------- FILE: one strict contract for every file sjalign reads

def _commands(ws: Path, bad: Path) -> dict[str, list]:
    """The same bad latents file given to every command that reads latents."""
    return {
        "fit-map": ["fit-map", bad, f(ws, "b"), "-o", ws / "out.safetensors"],
        "evaluate": ["evaluate", bad, f(ws, "b"), "--permutations", "1"],
        "apply-map": ["apply-map", f(ws, "m"), bad, "-o", ws / "out.safetensors"],
        "transfer-probe": ["transfer-probe", bad, f(ws, "b"), "--map", f(ws, "m")],
    }


BAD_FILES = {
    "float state_ids": (dict(state_ids=np.arange(N, dtype=np.float32)), "'state_ids' must hold integers"),
    "huge float state_ids": (dict(state_ids=np.full(N, 1e20)), "'state_ids' must hold integers"),
    "uint64 ids above int64": (dict(state_ids=np.arange(N, dtype=np.uint64) + np.uint64(2**63)), "int64 range"),
    "float labels": (dict(labels=np.zeros(N, np.float32)), "'labels' must hold integers"),
    "float split": (dict(split=np.zeros(N, np.float32)), "'split' must hold integers"),
    "int64 split holding 256": (dict(split=np.full(N, 256, np.int64)), "'split' must hold only 0"),
    "int32 latents": (dict(latents=np.ones((N, D), np.int32)), "'latents' must be float16"),
    "NaN latents": (dict(latents=np.full((N, D), np.nan, np.float32)), "NaN or Inf"),
    "1-D latents": (dict(latents=np.ones(N, np.float32)), "'latents' must be a non-empty (n, d)"),
    "duplicate ids": (dict(state_ids=np.zeros(N, np.int64)), "not unique"),
    "short labels": (dict(labels=np.zeros(3, np.int64)), "'labels' has shape"),
}


@pytest.mark.parametrize("command", ["fit-map", "evaluate", "apply-map", "transfer-probe"])
@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_latents_file_refused_the_same_way_by_every_command(runner, ws, case, command):
    tensors, needle = BAD_FILES[case]
    bad = raw_latents(ws / "bad.safetensors", **tensors)
    expect_error(runner, ws, _commands(ws, bad)[command], "bad.safetensors", needle)


@pytest.mark.parametrize("command", ["fit-map", "evaluate", "apply-map", "transfer-probe"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_every_float_dtype_is_accepted_by_every_command(runner, ws, dtype, command):
    import torch
    from safetensors.torch import save_file as save_torch

    from sjalign.io import load_latents

    a = load_latents(f(ws, "a"))
    path = ws / "cast.safetensors"
    save_torch({"latents": torch.from_numpy(a.latents).to(getattr(torch, dtype)),
                "state_ids": torch.from_numpy(a.state_ids), "labels": torch.from_numpy(a.labels)}, str(path),
               metadata={"sjalign.format": LATENTS_FORMAT, "encoder": "enc-a"})
    args = _commands(ws, path)[command]
    res = run(runner, *args)
    assert res.exit_code == 0, res.stderr


def _raw_map(ws: Path, **changes) -> Path:
    from safetensors.numpy import load_file

    from sjalign.io import read_safetensors

    tensors = load_file(str(f(ws, "m")))
    _, meta = read_safetensors(f(ws, "m"))
    tensors.update(changes)
    path = ws / "badmap.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


BAD_MAPS = {
    "a_std holding 0": (lambda: dict(a_std=np.array([1, 0, 1, 1, 1], np.float32)), "'a_std' must be > 0"),
    "negative b_std": (lambda: dict(b_std=-np.ones(D, np.float32)), "'b_std' must be > 0"),
    "NaN in W": (lambda: dict(W=np.full((D, D), np.nan, np.float32)), "'W' contains NaN or Inf"),
    "integer W": (lambda: dict(W=np.ones((D, D), np.int32)), "'W' must be floating point"),
    "float train ids": (lambda: dict(train_state_ids=np.arange(10, dtype=np.float32)), "must be integers"),
    "W of the wrong shape": (lambda: dict(a_mean=np.zeros(3, np.float32)), "'a_mean' has shape"),
}


@pytest.mark.parametrize("command", ["apply-map", "evaluate", "transfer-probe"])
@pytest.mark.parametrize("case", BAD_MAPS)
def test_bad_map_file_refused(runner, ws, case, command):
    changes, needle = BAD_MAPS[case]
    m = _raw_map(ws, **changes())
    args = {"apply-map": ["apply-map", m, f(ws, "a"), "-o", ws / "out.safetensors"],
            "evaluate": ["evaluate", f(ws, "a"), f(ws, "b"), "--map", m, "--permutations", "1"],
            "transfer-probe": ["transfer-probe", f(ws, "a"), f(ws, "b"), "--map", m]}[command]
    expect_error(runner, ws, args, "badmap.safetensors", needle)


def test_one_sided_split_is_a_warning_not_a_silent_swap(runner, ws):
    x = np.random.default_rng(2).normal(size=(N, D))
    a = make_latents(ws / "ta.safetensors", x, np.arange(N), split=np.zeros(N))
    b = make_latents(ws / "tb.safetensors", x @ np.eye(D)[::-1], np.arange(N), split=np.zeros(N))
    res = run(runner, "fit-map", a, b, "-o", ws / "t.safetensors")
    assert res.exit_code == 0
    assert "warning:" in res.stderr and "as train" in res.stderr and "seeded split" in res.stderr


def test_one_row_file_gives_one_line_naming_it(runner, ws):
    one = make_latents(ws / "one.safetensors", np.ones((1, D)), [0])
    for args in (["fit-map", one, f(ws, "b"), "-o", ws / "o.safetensors"], ["evaluate", f(ws, "a"), one]):
        expect_error(runner, ws, args, "one.safetensors", "only 1 shared state id")


def test_huge_values_give_one_clean_line_or_a_result(runner, ws):
    big = make_latents(ws / "big.safetensors", np.random.default_rng(3).normal(size=(N, D)) * 1e37, np.arange(N))
    res = run(runner, "fit-map", big, f(ws, "b"), "-o", ws / "o.safetensors")
    assert "RuntimeWarning" not in res.stderr and "Traceback" not in res.stderr
    if res.exit_code:
        one_error_line(res, "big.safetensors")


# ---------------------------------------------------------------- OPT: options checked before any work

OPTIONS = {
    "fit-map --test-fraction 2": (lambda ws: ["fit-map", f(ws, "a"), f(ws, "b"), "-o", ws / "o.safetensors",
                                              "--test-fraction", "2"], "--test-fraction"),
    "fit-map --test-fraction nan": (lambda ws: ["fit-map", f(ws, "a"), f(ws, "b"), "-o", ws / "o.safetensors",
                                                "--test-fraction", "nan"], "--test-fraction"),
    "evaluate --test-fraction 0": (lambda ws: ["evaluate", f(ws, "a"), f(ws, "b"), "--test-fraction", "0"],
                                   "--test-fraction"),
    "evaluate --test-fraction nan": (lambda ws: ["evaluate", f(ws, "a"), f(ws, "b"), "--test-fraction", "nan"],
                                     "--test-fraction"),
    "fit-map --method banana": (lambda ws: ["fit-map", f(ws, "a"), f(ws, "b"), "-o", ws / "o.safetensors",
                                            "--method", "banana"], "--method 'banana'"),
    "fit-map procrustes --lambda": (lambda ws: ["fit-map", f(ws, "a"), f(ws, "b"), "-o", ws / "o.safetensors",
                                                "--method", "procrustes", "--lambda", "5"], "--lambda"),
    "fit-map lstsq --lambda": (lambda ws: ["fit-map", f(ws, "a"), f(ws, "b"), "-o", ws / "o.safetensors",
                                           "--method", "lstsq", "--lambda", "5"], "--lambda"),
    "evaluate --map --method": (lambda ws: ["evaluate", f(ws, "a"), f(ws, "b"), "--map", f(ws, "m"),
                                            "--method", "procrustes"], "--map and --method"),
    "evaluate --map --lambda": (lambda ws: ["evaluate", f(ws, "a"), f(ws, "b"), "--map", f(ws, "m"),
                                            "--lambda", "5"], "--map and --lambda"),
    "evaluate --map --resplit": (lambda ws: ["evaluate", f(ws, "a"), f(ws, "b"), "--map", f(ws, "m"),
                                             "--resplit"], "--map and --resplit"),
    "evaluate --device banana": (lambda ws: ["evaluate", f(ws, "a"), f(ws, "b"), "--device", "banana"],
                                 "banana"),
    "embed --device banana": (lambda ws: ["embed", "--encoder", "pixels", "--device", "banana",
                                          "-o", ws / "o.safetensors"], "banana"),
    "embed --pooling foo": (lambda ws: ["embed", "--encoder", "pixels", "--pooling", "foo",
                                        "-o", ws / "o.safetensors"], "--pooling 'foo'"),
    "embed --image-size 100000": (lambda ws: ["embed", "--encoder", "pixels", "--image-size", "100000",
                                              "-o", ws / "o.safetensors"], "--image-size 100000"),
    "embed --data-dir missing": (lambda ws: ["embed", "--encoder", "pixels", "--data-dir", ws / "nonexistent",
                                             "-o", ws / "o.safetensors"], "nonexistent", "no such folder"),
    "pretrain --patch-size 0": (lambda ws: ["pretrain", "--patch-size", "0", "--epochs", "0", "-o", ws / "run"],
                                "--patch-size"),
    "pretrain --device banana": (lambda ws: ["pretrain", "--device", "banana", "--epochs", "0", "-o", ws / "run"],
                                 "banana"),
    "pretrain --data-dir missing": (lambda ws: ["pretrain", "--data-dir", ws / "nonexistent", "--epochs", "0",
                                                "-o", ws / "run"], "no such folder"),
    "pretrain --image-size 100000": (lambda ws: ["pretrain", "--image-size", "100000", "--epochs", "0",
                                                 "-o", ws / "run"], "--image-size"),
}


@pytest.mark.parametrize("case", OPTIONS)
def test_bad_options_refused_before_any_work(runner, ws, case):
    build, *needles = OPTIONS[case]
    expect_error(runner, ws, build(ws), *needles)


# ---------------------------------------------------------------- PAIR: maps know the pair they were fitted on

def test_map_on_its_own_pair_says_nothing(runner, ws):
    res = run(runner, "evaluate", f(ws, "a"), f(ws, "b"), "--map", f(ws, "m"), "--permutations", "1", "--strict")
    assert res.exit_code == 0 and "fitted on other" not in res.stderr, res.stderr


@pytest.mark.parametrize("command", ["evaluate", "transfer-probe"])
def test_map_on_another_pair_warns_and_strict_refuses(runner, ws, command):
    args = {"evaluate": ["evaluate", f(ws, "c"), f(ws, "d"), "--map", f(ws, "m"), "--permutations", "1"],
            "transfer-probe": ["transfer-probe", f(ws, "c"), f(ws, "d"), "--map", f(ws, "m")]}[command]
    res = run(runner, *args)
    assert res.exit_code == 0
    assert "warning:" in res.stderr and "fitted on other A latents" in res.stderr and "fingerprint" in res.stderr
    expect_error(runner, ws, [*args, "--strict"], "m.safetensors", "--strict refuses")


def test_apply_map_checks_the_encoder_not_the_file(runner, ws):
    from sjalign.io import load_latents

    a = load_latents(f(ws, "a"))
    new = make_latents(ws / "new.safetensors", a.latents[:10] + 1, np.arange(1000, 1010), encoder="enc-a")
    res = run(runner, "apply-map", f(ws, "m"), new, "-o", ws / "o1.safetensors", "--strict")  # new states of A's encoder
    assert res.exit_code == 0 and "warning" not in res.stderr, res.stderr
    res = run(runner, "apply-map", f(ws, "m"), f(ws, "c"), "-o", ws / "o2.safetensors")
    assert res.exit_code == 0 and "not from the map's A encoder" in res.stderr
    expect_error(runner, ws, ["apply-map", f(ws, "m"), f(ws, "c"), "-o", ws / "o3.safetensors", "--strict"],
                 "c.safetensors", "--strict refuses")


def test_fingerprint_sees_metadata_ids_and_sampled_rows(tmp_path):
    """A cheap identity: a change in a row it does not sample keeps it (no full read); ids, metadata or the
    sampled rows (first, last, 14 between) change it."""
    from sjalign.lazy_io import fingerprint

    x = np.random.default_rng(0).normal(size=(N, D))
    y = x.copy()
    y[1] += 1  # rows sampled for N = 80: 0, 5, 10, ..., 79
    z = x.copy()
    z[-1] += 1
    p = [make_latents(tmp_path / "0.safetensors", x, np.arange(N)),
         make_latents(tmp_path / "1.safetensors", y, np.arange(N)),
         make_latents(tmp_path / "2.safetensors", x, np.arange(N) + 1),
         make_latents(tmp_path / "3.safetensors", x, np.arange(N), encoder="other"),
         make_latents(tmp_path / "4.safetensors", z, np.arange(N)),
         make_latents(tmp_path / "5.safetensors", x * 2, np.arange(N))]
    fp = [fingerprint(q) for q in p]
    assert fp[0] == fp[1]
    assert len({fp[0], *fp[2:]}) == 5


@needs_fashion_mnist
def test_pretrain_that_fails_before_its_first_epoch_leaves_nothing(runner, tmp_path, monkeypatch):
    import sjalign.jepa.checkpoint as ckpt

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "write_safetensors_torch", full_disk)
    run_dir = tmp_path / "run"
    res = run(runner, "pretrain", "--epochs", "0", "--max-states", "64", "--eval-every", "0", "-o", run_dir)
    one_error_line(res, "No space left on device")
    assert not run_dir.exists()
    monkeypatch.undo()
    assert run(runner, "pretrain", "--epochs", "0", "--max-states", "64", "--eval-every", "0",
               "-o", run_dir).exit_code == 0  # no --force needed
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 0


def test_output_inside_an_input_folder(runner, tmp_path):
    """embed --encoder hf:DIR -o DIR/x: a file the encoder may read is refused; sjalign's own latents are replaced."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"not ours")
    mine = make_latents(folder / "old.safetensors", np.ones((3, 2)), [0, 1, 2])
    from sjalign.outputs import check_output

    with pytest.raises(Exception, match="exists inside"):
        check_output(folder / "weights.safetensors", True, inputs=[folder])
    assert check_output(mine, True, inputs=[folder]) == mine
    assert check_output(folder / "new.safetensors", False, inputs=[folder]) == folder / "new.safetensors"
