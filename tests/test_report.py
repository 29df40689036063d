"""Tests of sjalign.report: what the pictures draw (planted data, not pixels), the HTML page, atomic folders."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from scipy.stats import ortho_group

from sjalign.errors import SjalignError
from sjalign.report import check_report_dir, figures as F, write_report
from sjalign.report.html import render_page
from sjalign.report.tables import convention_lines, metric_keys, metric_table


def _rotation_pairs(n=400, d=6, seed=0):
    """Target = source rotated by an orthogonal Q; W = Q maps it exactly."""
    rng = np.random.default_rng(seed)
    za = rng.normal(size=(n, d)) * np.linspace(3, 0.5, d)
    q = ortho_group.rvs(d, random_state=seed)
    return za, za @ q.T, q


def _axes_text(fig):
    ax = fig.axes[0]
    return ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), ax.get_legend()


# ---------------------------------------------------------------- (a) PCA of pairs

def test_pca_after_a_perfect_map_pairs_coincide_and_before_they_do_not():
    za, zb, q = _rotation_pairs()
    data = F.pca_pairs_data(za, zb, za @ q.T, lines=25)
    np.testing.assert_allclose(data["p_after"], data["b_after"], atol=1e-9)
    assert data["shared_basis_before"]
    gap = np.linalg.norm(data["a_before"] - data["b_before"], axis=1).mean()
    assert gap > 0.5  # a rotation moves the points: before the map the pairs are apart
    assert len(data["lines"]) == 25 and len(set(data["lines"])) == 25


def test_pca_basis_is_targets_top_two_components():
    za, zb, q = _rotation_pairs(d=5, seed=1)
    data = F.pca_pairs_data(za, zb, za @ q.T)
    centred = zb - zb.mean(0)
    evals, evecs = np.linalg.eigh(centred.T @ centred)
    ref = centred @ evecs[:, ::-1][:, :2]  # independent PCA: top-2 eigenvectors of the covariance
    np.testing.assert_allclose(np.abs(data["b_after"]), np.abs(ref), atol=1e-8)  # up to the sign of each axis
    np.testing.assert_allclose(data["explained"], evals[::-1][:2] / evals.sum(), rtol=1e-8)


def test_pca_rectangular_uses_own_bases_and_subsamples():
    rng = np.random.default_rng(2)
    za = rng.normal(size=(3000, 7))
    zb = za @ rng.normal(size=(7, 4))
    data = F.pca_pairs_data(za, zb, zb.copy(), max_points=500)
    assert not data["shared_basis_before"]
    assert data["a_before"].shape == data["p_after"].shape == (500, 2)
    fig = F.fig_pca_pairs(data)
    titles = [ax.get_title() for ax in fig.axes]
    assert "own PCA basis" in titles[0] and "mapped onto" in titles[1]
    assert all(ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() for ax in fig.axes)
    assert F.png_bytes(fig).startswith(b"\x89PNG")


# ---------------------------------------------------------------- (b)-(e)

def test_spectrum_of_a_planted_map():
    s_true = np.array([8.0, 4.0, 2.0, 1.0])
    u, v = ortho_group.rvs(4, random_state=0), ortho_group.rvs(4, random_state=1)
    w = u @ np.diag(s_true) @ v.T
    np.testing.assert_allclose(F.singular_values(w), s_true, rtol=1e-10)
    fig = F.fig_spectrum({"map": w, "null": np.eye(4)}, {"map": 8.0, "null": 1.0})
    title, xlabel, ylabel, legend = _axes_text(fig)
    assert "κ(W) = 8" in title and xlabel and "log" in ylabel and legend is not None
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), s_true)
    labels = [t.get_text() for t in legend.get_texts()]
    assert any("map (κ = 8)" in t for t in labels) and any("null" in t for t in labels)


def test_budget_curves_plot_the_rows():
    rows = [{"n_train": n, "metrics": {"r2": r, "nos@5": 1 - r / 2, "nos@10": 1 - r, "kappa": k}}
            for n, r, k in ((20, 0.1, 50.0), (100, 0.6, 10.0), (500, 0.9, 3.0))]
    fig = F.fig_budget({"map": rows}, references={"null": {"r2": 0.0, "nos@10": 0.99, "kappa": 40.0}})
    r2_ax, nos_ax, kappa_ax = fig.axes
    assert r2_ax.get_xscale() == "log" and kappa_ax.get_yscale() == "log"
    np.testing.assert_array_equal(r2_ax.lines[0].get_xdata(), [20, 100, 500])
    np.testing.assert_allclose(nos_ax.lines[0].get_ydata(), [0.9, 0.4, 0.1])  # NOS@10 chosen over NOS@5
    assert "NOS@10" in nos_ax.get_ylabel() and "↓" in nos_ax.get_ylabel() and "↑" in r2_ax.get_ylabel()
    assert all(ax.get_legend() is not None and ax.get_xlabel() for ax in fig.axes)
    assert F.nos_key(["nos@1", "nos@5", "nos@20"]) == "nos@5" and F.nos_key(["r2"]) is None


def test_nos_curve_has_chance_line_and_error_bars():
    fig = F.fig_nos_curve({"map": ([1, 5, 10], [0.5, 0.4, 0.3], [0.01, 0.02, 0.03]),
                           "null": ([1, 5, 10], [0.99, 0.97, 0.95], None)}, n_test=101)
    ax = fig.axes[0]
    chance = [ln for ln in ax.lines if "unrelated" in str(ln.get_label())][0]
    np.testing.assert_allclose(chance.get_ydata(), 1 - chance.get_xdata() / 100)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "map" in labels and "shuffled-pair null" in labels
    assert "lower is better" in ax.get_ylabel() and ax.get_xlabel() and "101" in ax.get_title()


def test_layer_cka_heatmap():
    m = np.array([[1.0, 0.2], [0.3, 0.9], [0.1, 0.5]])
    fig = F.fig_layer_cka(["0", "1", "2"], ["0", "1"], m, n=50)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), m)
    assert ax.images[0].get_clim() == (0, 1)
    assert "source" in ax.get_ylabel() and "target" in ax.get_xlabel() and "n = 50" in ax.get_title()
    assert "CKA" in fig.axes[1].get_ylabel()  # the colour bar is labelled


# ---------------------------------------------------------------- tables, HTML, folders

def _result(seeds=False):
    metrics = {"mse": 0.1, "r2": 0.9, "cka": 0.95, "cka_raw": 0.5, "dsc": 0.8, "nos@10": 0.3, "nos@1": 0.5,
               "retrieval@1": 0.7, "procrustes_error": 0.2, "kappa": 3.0, "orth_dev": 0.4, "eff_rank_a": 5.0}
    res = {"metrics": metrics, "null": {k: v / 2 for k, v in metrics.items()}, "a": "a.st", "b": "b.st",
           "d_a": 6, "d_b": 6, "encoder_a": "pixels", "encoder_b": "pixels", "method": "ridge", "lambda": 1e-3,
           "r2_p_value": 0.01, "permutations": 99, "warnings": ["careful <now>"],
           "split": {"kind": "seeded", "how": "seeded by state id (seed 0, test fraction 0.2)", "n_train": 80,
                     "n_test": 20, "seed": 0, "test_fraction": 0.2},
           "control": {"metrics": {k: v / 3 for k, v in metrics.items()}}}
    if seeds:
        res["seeds"] = {"runs": 3, "models": 1, "split_seeds": [0, 1, 2], "std": "sample std",
                        "metrics": {k: {"mean": v, "std": 0.01, "n": 3} for k, v in metrics.items()},
                        "null": {k: {"mean": v / 2, "std": 0.02, "n": 3} for k, v in metrics.items()}}
    return res


def test_metric_table_states_directions_and_seeds():
    assert metric_keys(_result()["metrics"])[:6] == ["r2", "cka", "cka_raw", "dsc", "nos@1", "nos@10"]
    header, rows = metric_table(_result())
    assert header == ["metric (↑/↓ better)", "map", "shuffled-pair null", "random-init control"]
    by_name = {r[0]: r for r in rows}
    assert by_name["nos@10 ↓"][1:] == ["0.3", "0.15", "0.1"]
    assert by_name["r2 ↑"][1] == "0.9" and "kappa ↓" in by_name and "eff_rank_a" in by_name
    header, rows = metric_table(_result(seeds=True), short=True)
    assert header == ["metric", "map", "null", "control"]
    assert rows[0][1:] == ["0.9 ± 0.01", "0.45 ± 0.02", "0.3"]  # no control summary: its single value
    text = " ".join(convention_lines(_result(seeds=True)))
    for needle in ("A → B", "onto B's space", "n_train = 80", "n_test = 20", "seeded by state id", "NOS@k ↓",
                   "Runs: 3"):
        assert needle in text


def test_render_page_embeds_every_png_and_escapes():
    pngs = [("one.png", "One", "first <b>", b"\x89PNG-one"), ("two.png", "Two", "second", b"\x89PNG-two")]
    page = render_page(_result(), pngs)
    for _, title, _, png in pngs:
        assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page and title in page
    assert "first &lt;b&gt;" in page and "careful &lt;now&gt;" in page
    assert "A mapped onto B" in page and "n_test = 20" in page and "<table>" in page
    assert "src='http" not in page and 'src="http' not in page  # self-contained


def test_write_report_is_atomic(tmp_path, monkeypatch):
    import sjalign.report as report

    out = tmp_path / "rep"
    pngs = [("x.png", "X", "cap", b"\x89PNG-x")]
    monkeypatch.setattr(report, "report_figures", lambda *a, **k: pngs)
    write_report(out, _result(), None)
    assert sorted(p.name for p in out.iterdir()) == [".sjalign-output.json", "index.html", "x.png"]
    assert (out / "x.png").read_bytes() == b"\x89PNG-x"
    with pytest.raises(SjalignError, match="already exists"):
        check_report_dir(out, force=False)
    with pytest.raises(SjalignError, match="does not exist"):
        check_report_dir(tmp_path / "no" / "rep", force=False)

    def broken_page(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("sjalign.report.html.render_page", broken_page)
    with pytest.raises(RuntimeError):
        write_report(tmp_path / "rep2", _result(), None)
    with pytest.raises(RuntimeError):
        write_report(out, _result(), None, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no partial folder, no temp left
    assert (out / "x.png").read_bytes() == b"\x89PNG-x"  # the old report survives a failed --force
