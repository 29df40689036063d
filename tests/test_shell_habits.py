"""How sjalign behaves in a shell (issue 14 part 6): listings on stdout, -q, `-o -`, a closed pipe,
help examples kept whole, the user's umask, and fit-map's --json shaped like evaluate's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_latents, one_error_line, run

from sjalign.cli.common import protect_examples


def test_listings_print_on_stdout_with_syntax_and_modality(runner):
    res = run(runner, "encoders")
    assert res.exit_code == 0 and res.stderr == ""
    lines = {ln.split(":", 1)[0]: ln for ln in res.stdout.splitlines()}
    assert "timm:NAME@WEIGHTS.safetensors" in lines["timm"] and "embeds image" in lines["timm"]
    assert "hf:DIR" in lines["hf"] and "image or text" in lines["hf"] and "jepa:RUN_DIR" in lines["jepa"]
    info = json.loads(run(runner, "encoders", "--json").stdout)["encoders"]
    assert info["pixels"]["syntax"] == "pixels" and info["pixels"]["modalities"] == ["image"]
    for command in ("datasets", "objectives"):
        res = run(runner, command)
        assert res.exit_code == 0 and res.stdout.strip() and res.stderr == "", command


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 5))
    ids = np.arange(120)
    a = make_latents(tmp_path / "a.safetensors", np.c_[x, np.ones(120)], ids, encoder="enc-a")  # a constant column
    b = make_latents(tmp_path / "b.safetensors", x @ rng.normal(size=(5, 4)) + 0.1 * rng.normal(size=(120, 4)), ids,
                     encoder="enc-b")
    return a, b


def test_quiet_hushes_notes_but_not_warnings_or_errors(runner, pair, tmp_path):
    a, b = pair
    loud = run(runner, "fit-map", a, b, "-o", tmp_path / "m1.safetensors")
    assert "wrote" in loud.stderr
    quiet = run(runner, "-q", "fit-map", a, b, "-o", tmp_path / "m2.safetensors")
    assert quiet.exit_code == 0 and "wrote" not in quiet.stderr and "constant feature" in quiet.stderr
    one_error_line(run(runner, "-q", "fit-map", a, b, "-o", tmp_path / "m2.safetensors"), "exists")


def test_dash_output_goes_to_stdout_where_the_format_allows(runner, pair, tmp_path):
    a, b = pair
    one_error_line(run(runner, "fit-map", a, b, "-o", "-"), "-o -", "safetensors")
    res = run(runner, "compare", a, b, "--metrics", "cka", "--csv", "-")
    assert res.exit_code == 0 and res.stdout.splitlines()[0] == "metric,a,b,value"
    res = run(runner, "compare", a, b, "--metrics", "cka", "-o", "-")
    assert json.loads(res.stdout)["metrics"] == ["cka"]
    one_error_line(run(runner, "compare", a, b, "--metrics", "cka", "-o", "-", "--json"), "both write to stdout")
    args = ["evaluate", a, b, "--permutations", "2"]
    assert json.loads(run(runner, *args, "-o", "-").stdout)["metrics"] == json.loads(
        run(runner, *args, "--json").stdout)["metrics"]
    assert not (tmp_path / "-").exists()


def test_a_closed_pipe_is_not_an_error():
    proc = subprocess.Popen([sys.executable, "-m", "sjalign", "objectives"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written (as `| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""


def test_help_examples_are_never_broken_inside_a_word():
    env = {**os.environ, "COLUMNS": "60"}
    out = subprocess.run([sys.executable, "-m", "sjalign", "pretrain", "--help"], capture_output=True, text=True,
                         env=env).stdout
    assert "sjalign pretrain --view crop:top --epochs 4 --max-states 12000 -o runs/top --resume" in out
    doc = "Do it.\n\n    Examples:\n\n      sjalign x --a-b 1\n\n    Prose after the examples.\n"
    marked = protect_examples(doc)
    assert "\b\n      sjalign x --a-b 1" in marked and "\b\n    Prose" not in marked


def test_outputs_get_the_users_umask(runner, pair, tmp_path):
    a, b = pair
    old = os.umask(0o002)
    try:
        assert run(runner, "fit-map", a, b, "-o", tmp_path / "m.safetensors").exit_code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o664


def test_fit_map_json_gives_split_and_warnings_as_evaluate_does(runner, pair, tmp_path):
    a, b = pair
    fit = json.loads(run(runner, "fit-map", a, b, "-o", tmp_path / "m.safetensors", "--json").stdout)
    ev = json.loads(run(runner, "evaluate", a, b, "--permutations", "2", "--json").stdout)
    assert fit["split"] == ev["split"] and isinstance(fit["warnings"], list)
