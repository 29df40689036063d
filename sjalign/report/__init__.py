"""``evaluate --report DIR``: PNG pictures and one self-contained HTML page (matplotlib, imported lazily).

``write_report`` draws from the first run of an evaluation (its test pairs, its map, the
shuffled-pair null and the random-init control) and from the result dict (NOS@k, sweeps,
mean ± std over seeds). The folder appears whole or not at all: everything is written to a
temporary sibling folder that is renamed into place, with a marker that lets a later
``--force`` recognise it as sjalign's own (:mod:`sjalign.outputs`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_report_dir", "report_figures", "write_report"]


REPORT_KIND = "evaluate-report"


def check_report_dir(path: str | os.PathLike, force: bool, *, inputs=()) -> Path:
    """Refuse a report folder that would destroy something (:func:`sjalign.outputs.check_output_folder`).

    Raises:
        SjalignError: the folder exists without ``force``; with ``force``, it is not a report
            sjalign wrote (no marker, or entries it did not write); it holds an input or the
            current folder; no parent.
    """
    from sjalign.outputs import check_output_folder

    return check_output_folder(path, force, REPORT_KIND, inputs=inputs)


def _nos_series(result: dict) -> dict:
    seeds = result.get("seeds")
    out = {}
    for key, name in (("metrics", "map"), ("in_distribution", "in-distribution"), ("null", "null"),
                      ("control", "control")):
        section = result.get(key)
        if section is None:
            continue
        metrics = section.get("metrics", section) if key in ("control", "in_distribution") else section
        ks = sorted(int(k[4:]) for k in metrics if k.startswith("nos@"))
        if seeds is not None and key in seeds:
            vals = [seeds[key][f"nos@{k}"]["mean"] for k in ks]
            stds = [seeds[key][f"nos@{k}"]["std"] for k in ks]
        else:
            vals, stds = [metrics[f"nos@{k}"] for k in ks], None
        out[name] = (ks, vals, stds)
    return out


def report_figures(result: dict, run, *, budget_curves: dict | None = None, layer_cka: dict | None = None,
                   seed: int = 0) -> list[tuple[str, str, str, bytes]]:
    """Draw every picture of the report.

    Args:
        result: the evaluate result (JSON shape).
        run: the first :class:`sjalign.protocol.Run` (its pairs, split, map, null map and control).
        budget_curves: {"map": pair_budget rows, "control": rows} or None.
        layer_cka: :func:`sjalign.protocol.layerwise_cka` output or None.

    Returns:
        [(file name, title, caption, PNG bytes)], in reading order.
    """
    from sjalign.metrics import kappa
    from sjalign.report import figures as F

    pairs, split, amap = run.pairs, run.split, run.amap
    za, zb = amap.standardise_a(pairs.x[split.test]), amap.standardise_b(pairs.y[split.test])
    n_test = len(zb)
    out = []

    def add(name, title, caption, fig):
        out.append((name, title, caption, F.png_bytes(fig)))

    data = F.pca_pairs_data(za, zb, za @ amap.W.T, seed=seed)
    before = ("both sides in B's basis with no map (d_a = d_b)" if data["shared_basis_before"]
              else "each side in its own PCA basis, since d_a ≠ d_b and nothing joins the spaces without a map")
    add("pca_pairs.png", "Test pairs before and after the map (PCA)",
        f"Left: {before}. Right: A's test latents pushed through W and B's test latents, both projected on the "
        f"first two principal components of B's test latents. Grey lines join {len(data['lines'])} sampled pairs; "
        "short lines on the right mean the map puts each state where B has it.", F.fig_pca_pairs(data))

    maps = {"map": amap.W, "null": run.null.W}  # the null the run was judged against, not a refit
    if run.control is not None:
        maps["control"] = run.control[2].W
    kappas = {name: kappa(w) for name, w in maps.items()}
    add("spectrum.png", "Singular values of W",
        "Singular values of the map in standardised units, beside the shuffled-pair null"
        + (" and the random-init control" if run.control is not None else "")
        + ". κ(W) = σ_max/σ_min: 1 for an isometry; a long tail of tiny σ means some directions of A are "
          "nearly discarded or the fit is ill-conditioned.", F.fig_spectrum(maps, kappas))

    if budget_curves:
        add("pair_budget.png", "Pair-budget curves",
            "R², NOS@k and κ(W) of maps refitted on nested subsets of the training pairs, each scored on the same "
            "test split. Dashed lines: the shuffled-pair null fitted on all training pairs.",
            F.fig_budget(budget_curves, references={"null": run.result["null"]}))

    series = _nos_series(result)
    add("nos_at_k.png", "NOS@k against k",
        "Neighbourhood overlap shortfall (lower is better): the share of each test point's k nearest neighbours in "
        "B that are not among the k nearest neighbours of its mapped image"
        + (" (error bars: std over runs)" if result.get("seeds") else "")
        + ". The dotted curve is what unrelated spaces give.", F.fig_nos_curve(series, n_test=n_test))

    if layer_cka is not None:
        add("layer_cka.png", "Layerwise CKA",
            f"Linear CKA between each layer of A and each layer of B on {layer_cka['n']} test states (no map; CKA "
            "is invariant to rotations and isotropic scaling). A bright diagonal means corresponding depths share "
            "geometry.", F.fig_layer_cka(layer_cka["layers_a"], layer_cka["layers_b"], layer_cka["cka"],
                                         n=layer_cka["n"]))
    return out


def write_report(path: str | os.PathLike, result: dict, run, *, budget_curves: dict | None = None,
                 layer_cka: dict | None = None, force: bool = False, seed: int = 0) -> Path:
    """Write ``path``/index.html and one PNG per picture, atomically (temp folder + rename).

    Raises:
        SjalignError: see :func:`check_report_dir`; ``path`` appeared meanwhile; an I/O error.
    """
    from sjalign.report.html import render_page

    from sjalign.outputs import publish_folder

    path = check_report_dir(path, force)
    figures = report_figures(result, run, budget_curves=budget_curves, layer_cka=layer_cka, seed=seed)
    files = {name: png for name, _, _, png in figures}
    files["index.html"] = render_page(result, figures).encode("utf-8")
    publish_folder(files, path, REPORT_KIND, force=force)
    return path
