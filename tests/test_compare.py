"""sjalign compare (issue 14, part 1): every pair of latents files as matrices, from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg

from conftest import make_latents, one_error_line, run
from sjalign.metrics.cka import linear_cka
from sjalign.metrics.similarity import debiased_cka


@pytest.fixture
def three(tmp_path):
    """a; b = a rotated (same space, other coordinates), rows shuffled; c independent, a different width."""
    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=(n, 10)) @ np.diag(np.linspace(0.5, 3, 10))
    q = scipy.linalg.qr(rng.normal(size=(10, 10)))[0]
    ids = np.arange(5000, 5000 + n)
    order = rng.permutation(n)
    split = (np.arange(n) % 5 == 0).astype(np.uint8)
    paths = [make_latents(tmp_path / "a.safetensors", x, ids, split=split, encoder="enc-a"),
             make_latents(tmp_path / "b.safetensors", (x @ q)[order], ids[order], split=split[order], encoder="enc-b"),
             make_latents(tmp_path / "c.safetensors", rng.normal(size=(n, 6)), ids, split=split, encoder="enc-c")]
    return paths, x, q, split


def test_compare_matrices(runner, tmp_path, three):
    paths, x, q, split = three
    out, csv = tmp_path / "m.json", tmp_path / "m.csv"
    res = run(runner, "compare", *paths, "-o", out, "--csv", csv, "--json")
    assert res.exit_code == 0, res.stderr
    result = json.loads(res.stdout)
    assert result == json.loads(out.read_text())
    assert result["encoders"] == ["enc-a", "enc-b", "enc-c"] and result["dims"] == [10, 10, 6]
    m = result["matrix"]
    test = split == 1
    # a and b: the same space rotated, so every rotation-invariant measure says identical (RSA's correlation
    # distance, across a state's dimensions, is not rotation-invariant)
    assert 0.2 < m["rsa"][0][1] < 1.0
    for name in ("cka", "cka_debiased", "mutual_knn", "cknna", "svcca", "pwcca", "r2", "retrieval@1", "csls@1"):
        assert m[name][0][1] == pytest.approx(1.0, abs=1e-5), name  # ridge λ = 1e-3 shrinks R² by ~1e-6
    assert m["cka"][0][2] == pytest.approx(linear_cka(x[test], result_c(paths[2], test)))
    assert m["cka_debiased"][0][2] == pytest.approx(debiased_cka(x[test], result_c(paths[2], test)))
    assert abs(m["cka_debiased"][0][2]) < 0.1  # unrelated spaces
    assert m["r2"][0][2] < 0.1 and m["retrieval@1"][2][0] < 0.2
    for name in result["metrics"]:  # map-free symmetric, map-based one per direction, diagonal as documented
        for i in range(3):
            assert m[name][i][i] == (1.0 if name in ("cka", "cka_debiased", "mutual_knn", "cknna", "svcca", "pwcca",
                                                     "rsa") else None)
    assert result["pairs"][0]["n_test"] == int(test.sum()) and result["pairs"][0]["split"]["how"] == "the files' split tensor"
    assert result["pairs"][0]["split"]["kind"] == "file" and result["pairs"][0]["split"]["n_test"] == int(test.sum())
    lines = csv.read_text().splitlines()
    assert lines[0] == "metric,a,b,value" and len(lines) == 1 + len(result["metrics"]) * 9


def result_c(path, test):
    from sjalign.io import load_latents

    return load_latents(path).latents[test]


def test_compare_prints_tables(runner, three):
    res = run(runner, "compare", *three[0], "--metrics", "cka_debiased,r2")
    assert res.exit_code == 0, res.stderr
    assert "cka_debiased" in res.stderr and "map from" in res.stderr and "enc-c" in res.stderr


@pytest.mark.parametrize("flags, needle", [
    (["--metrics", "cka,bogus"], "bogus"),
    (["--knn-metric", "manhattan"], "--knn-metric"),
    (["--test-fraction", "1.5"], "--test-fraction"),
    (["--k", "0"], "--k"),
    (["--lambda", "-1"], "--lambda"),
])
def test_compare_bad_options(runner, three, flags, needle):
    one_error_line(run(runner, "compare", *three[0], *flags), needle)


def test_compare_refuses_an_input_as_output_and_one_file(runner, tmp_path, three):
    paths = three[0]
    before = paths[0].read_bytes()
    one_error_line(run(runner, "compare", *paths, "-o", paths[0], "--force"), str(paths[0]))
    assert paths[0].read_bytes() == before
    one_error_line(run(runner, "compare", paths[0]), "at least two")


def test_compare_needs_shared_states(runner, tmp_path):
    rng = np.random.default_rng(1)
    a = make_latents(tmp_path / "a.safetensors", rng.normal(size=(20, 3)), np.arange(20))
    b = make_latents(tmp_path / "b.safetensors", rng.normal(size=(20, 3)), np.arange(100, 120))
    one_error_line(run(runner, "compare", a, b), "share")


def test_evaluate_refuses_different_encoders_given_as_seeds(runner, tmp_path):
    rng = np.random.default_rng(2)
    ids = np.arange(200)
    b = make_latents(tmp_path / "b.safetensors", rng.normal(size=(200, 4)), ids, encoder="pixels")
    a0 = make_latents(tmp_path / "a0.safetensors", rng.normal(size=(200, 8)), ids, encoder="timm:resnet18@w.safetensors")
    a1 = make_latents(tmp_path / "a1.safetensors", rng.normal(size=(200, 5)), ids, encoder="pixels")
    b1 = make_latents(tmp_path / "b1.safetensors", rng.normal(size=(200, 4)), ids, encoder="pixels")
    line = one_error_line(run(runner, "evaluate", f"{a0},{a1}", f"{b},{b1}"), "different encoders", "sjalign compare")
    assert str(a0) in line and str(a1) in line
    a2 = make_latents(tmp_path / "a2.safetensors", rng.normal(size=(200, 8)), ids, encoder="timm:resnet18@v.safetensors")
    res = run(runner, "evaluate", f"{a0},{a2}", f"{b},{b1}", "--json")  # two weights files of one architecture
    assert res.exit_code == 0, res.stderr


def test_compare_report_folder(runner, tmp_path, three):
    report = tmp_path / "cmp"
    res = run(runner, "compare", *three[0], "--metrics", "cka_debiased,retrieval@1", "--report", report)
    assert res.exit_code == 0, res.stderr
    names = sorted(p.name for p in report.iterdir())
    assert names == sorted([".sjalign-output.json", "cka_debiased.png", "retrieval_at_1.png", "compare.json",
                            "compare.csv", "index.html"])
    assert (report / "cka_debiased.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "http" not in page  # self-contained
    assert json.loads((report / "compare.json").read_text())["metrics"] == ["cka_debiased", "retrieval@1"]
    one_error_line(run(runner, "compare", *three[0], "--report", report), "--force")
    res = run(runner, "compare", *three[0], "--metrics", "cka", "--report", report, "--force")
    assert res.exit_code == 0 and (report / "cka.png").exists() and not (report / "cka_debiased.png").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    one_error_line(run(runner, "compare", *three[0], "--report", mine, "--force"), "not an sjalign")
    assert (mine / "notes.txt").read_text() == "keep"


def test_two_files_with_layers_give_the_layer_matrix_and_best_matches(runner, tmp_path):
    from sjalign.io import Latents, save_latents

    rng = np.random.default_rng(3)
    n = 300
    ids = np.arange(n)
    split = (ids % 4 == 0).astype(np.uint8)
    l0, l1 = rng.normal(size=(n, 6)), rng.normal(size=(n, 5))
    q6, q5 = (scipy.linalg.qr(rng.normal(size=(d, d)))[0] for d in (6, 5))
    a = Latents(l1.astype(np.float32), ids, None, split, layers={"0": l0.astype(np.float32), "1": l1.astype(np.float32)})
    b = Latents((l0 @ q6).astype(np.float32), ids, None, split,
                layers={"0": (l1 @ q5).astype(np.float32), "1": (l0 @ q6).astype(np.float32)})  # layers swapped
    pa = save_latents(tmp_path / "a.safetensors", a, {"encoder": "x"})
    pb = save_latents(tmp_path / "b.safetensors", b, {"encoder": "y"})
    res = run(runner, "compare", pa, pb, "--metrics", "cka", "--json", "--report", tmp_path / "r")
    assert res.exit_code == 0, res.stderr
    layers = json.loads(res.stdout)["pairs"][0]["layers"]
    assert layers["best_match_a"] == {"0": "1", "1": "0"} and layers["best_match_b"] == {"0": "1", "1": "0"}
    assert layers["cka"][0][1] == pytest.approx(1.0) and layers["cka_debiased"][1][0] == pytest.approx(1.0)
    assert abs(layers["cka_debiased"][0][0]) < 0.1 and layers["n"] == int(split.sum())
    assert (tmp_path / "r" / "layers_1.png").is_file()
    # --layers asks for them: every file must carry layer.N tensors, else one line, exit 1, nothing written
    assert run(runner, "compare", pa, pb, "--metrics", "cka", "--layers", "--json").exit_code == 0
    plain = save_latents(tmp_path / "plain.safetensors", Latents(l0.astype(np.float32), ids, None, split), {"encoder": "z"})
    res = run(runner, "compare", pa, plain, "--layers", "-o", tmp_path / "out.json")
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and "plain.safetensors: no layer.N tensors" in lines[0]
    assert not (tmp_path / "out.json").exists()
