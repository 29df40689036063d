"""The pictures of an evaluate report, as pure functions of arrays (matplotlib, no pyplot state).

Each ``*_data`` function computes what is drawn (tested on planted data); each ``fig_*``
function draws it and returns a :class:`matplotlib.figure.Figure`. Figures are built with
``Figure()`` directly, so no GUI backend or global pyplot state is involved (PNG via Agg).
"""

from __future__ import annotations

import io

import numpy as np

SIDE_COLOURS = {"a": "#1f77b4", "b": "#ff7f0e", "mapped": "#2ca02c"}
SERIES_STYLE = {"map": ("#2ca02c", "o", "-"), "null": ("#7f7f7f", "s", "--"), "control": ("#d62728", "^", "-."),
                "in-distribution": ("#9467bd", "D", ":")}
SERIES_LABEL = {"map": "map", "null": "shuffled-pair null", "control": "random-init control",
                "in-distribution": "in-distribution map"}


def _style(name: str) -> tuple[str, str, str, str]:
    colour, marker, line = SERIES_STYLE.get(name, ("k", ".", "-"))
    return colour, marker, line, SERIES_LABEL.get(name, name)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (Agg)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


# ---------------------------------------------------------------- (a) PCA of test pairs before / after the map

def pca_pairs_data(za: np.ndarray, zb: np.ndarray, p: np.ndarray, *, max_points: int = 1500, lines: int = 60,
                   seed: int = 0) -> dict:
    """2-D coordinates of test pairs before and after the map, in B's principal-component basis.

    The basis is a PCA (2 components) fitted on the target test latents Ẑb. After the map,
    P = Ẑa Wᵀ and Ẑb are both projected onto it, so a perfect map puts each pair on one
    point. Before the map, Ẑa is projected onto the same basis when d_a = d_b (the identity
    map: shared coordinates taken at face value); otherwise each side is shown in its own
    PCA basis, which is all that can be drawn without a map.

    Args:
        za: (n, d_a) standardised test source latents.  zb: (n, d_b) standardised test targets.
        p: (n, d_b) mapped source, Ẑa Wᵀ.
        max_points: seeded subsample drawn.  lines: how many pairs get a joining line.

    Returns:
        {"a_before", "b_before", "p_after", "b_after": (m, 2) arrays, "lines": (l,) row indices
        into them, "shared_basis_before": bool, "explained": (2,) variance ratios of B's PCA}.
    """
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    n = len(zb)
    rows = np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
    pca_b = PCA(n_components=2, random_state=seed).fit(zb)
    shared = za.shape[1] == zb.shape[1]
    a_before = pca_b.transform(za[rows]) if shared else PCA(n_components=2, random_state=seed).fit(za).transform(
        za[rows])
    b2 = pca_b.transform(zb[rows])
    return {
        "a_before": a_before, "b_before": b2, "p_after": pca_b.transform(p[rows]), "b_after": b2,
        "lines": np.sort(rng.choice(len(rows), min(lines, len(rows)), replace=False)),
        "shared_basis_before": shared, "explained": pca_b.explained_variance_ratio_,
    }


def fig_pca_pairs(data: dict, *, name_a: str = "A", name_b: str = "B"):
    """Two panels: test pairs before and after the map, lines joining a sample of pairs."""
    fig = _figure(11, 5)
    axes = fig.subplots(1, 2)
    ev = data["explained"]
    panels = (("before the map", data["a_before"], data["b_before"], f"{name_a} (source)"),
              ("after the map", data["p_after"], data["b_after"], f"{name_a} mapped, " + r"$\hat Z_a W^\top$"))
    for ax, (when, src, tgt, src_label) in zip(axes, panels):
        for i in data["lines"]:
            ax.plot([src[i, 0], tgt[i, 0]], [src[i, 1], tgt[i, 1]], color="0.55", lw=0.6, alpha=0.7, zorder=1)
        colour = SIDE_COLOURS["a"] if when.startswith("before") else SIDE_COLOURS["mapped"]
        ax.scatter(tgt[:, 0], tgt[:, 1], s=7, alpha=0.5, color=SIDE_COLOURS["b"], label=f"{name_b} (target)",
                   zorder=2, linewidths=0)
        ax.scatter(src[:, 0], src[:, 1], s=7, alpha=0.5, color=colour, label=src_label, zorder=3, linewidths=0)
        ax.plot([], [], color="0.55", lw=0.8, label=f"{len(data['lines'])} pairs joined")
        ax.set_xlabel(f"PC 1 of {name_b} test latents ({ev[0]:.0%} of variance; standardised units)")
        ax.set_ylabel(f"PC 2 of {name_b} ({ev[1]:.0%}; standardised units)")
        ax.legend(loc="best", fontsize=8, markerscale=2)
    if data["shared_basis_before"]:
        axes[0].set_title(f"Before: {name_a} and {name_b} in {name_b}'s PCA basis (no map)")
    else:
        axes[0].set_title("Before: each side in its own PCA basis (d differ, no map)")
        axes[0].set_xlabel("PC 1 of each side's test latents (standardised units)")
        axes[0].set_ylabel("PC 2 of each side (standardised units)")
    axes[1].set_title(f"After: {name_a} mapped onto {name_b}'s space")
    fig.suptitle("Held-out test pairs, PCA fitted on the target's test latents (short lines = pairs land together)")
    return fig


# ---------------------------------------------------------------- (b) singular values of W

def singular_values(w: np.ndarray) -> np.ndarray:
    """σ(W) in decreasing order; w (d_b, d_a) in standardised units. Returns (min(d_a, d_b),)."""
    return np.linalg.svd(np.asarray(w, dtype=np.float64), compute_uv=False)


def fig_spectrum(maps: dict[str, np.ndarray], kappas: dict[str, float]):
    """Singular-value spectrum of each map (log y); κ(W) of each in the title and legend.

    Args:
        maps: {"map": W, "null": W_null, "control": W_control, ...}, each (d_b, d_a).
        kappas: κ of each (σ_max / σ_min over σ > 1e-6·σ_max, as in ``metrics.kappa``).
    """
    fig = _figure(7.5, 4.5)
    ax = fig.subplots()
    for name, w in maps.items():
        s = singular_values(w)
        colour, marker, style, label = _style(name)
        ax.plot(np.arange(1, len(s) + 1), np.maximum(s, 1e-12), color=colour, ls=style, marker=marker,
                ms=3 if len(s) > 30 else 5, label=f"{label} (κ = {kappas.get(name, float('nan')):.3g})")
    if "map" in maps:
        top = singular_values(maps["map"])[0]
        ax.axhline(1e-6 * top, color="k", lw=0.8, ls=":", label=r"κ ignores $\sigma < 10^{-6}\,\sigma_{max}$ (map)")
    ax.set_yscale("log")
    ax.set_xlabel("index i (singular values in decreasing order)")
    ax.set_ylabel(r"$\sigma_i(W)$ (standardised units, log scale)")
    ax.set_title(f"Singular values of W: κ(W) = {kappas.get('map', float('nan')):.3g} (1 = isometry)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- (c) pair-budget curves

BUDGET_PANELS = (("r2", "R² (↑ higher is better)"), ("nos", "NOS@{k} (↓ lower is better)"),
                 ("kappa", "κ(W) (↓, 1 = isometry; log scale)"))


def nos_key(keys, want: int = 10) -> str | None:
    """The ``nos@k`` key among ``keys`` with k closest to ``want`` (None if there is none)."""
    ks = [int(k[4:]) for k in keys if k.startswith("nos@")]
    return f"nos@{min(ks, key=lambda k: (abs(k - want), k))}" if ks else None


def fig_budget(curves: dict[str, list[dict]], *, references: dict[str, dict] | None = None):
    """R², NOS@10 and κ(W) against the number of training pairs (log x), one line per series.

    Args:
        curves: {"map": pair_budget rows, "control": rows, ...}; a row is {"n_train", "metrics"}.
        references: {"null": metrics, ...} drawn as horizontal dashed lines (full train split).
    """
    from matplotlib.ticker import NullFormatter

    first = next(iter(curves.values()))
    nos = nos_key(first[0]["metrics"]) or "nos@10"
    fig = _figure(13, 4.2)
    axes = fig.subplots(1, 3)
    for ax, (key, label) in zip(axes, BUDGET_PANELS):
        metric = nos if key == "nos" else key
        for name, rows in curves.items():
            colour, marker, style, label_ = _style(name)
            xs = [r["n_train"] for r in rows]
            ys = [r["metrics"].get(metric) for r in rows]
            ys = [np.nan if v is None else v for v in ys]
            ax.plot(xs, ys, color=colour, marker=marker, ls=style, label=label_)
        for name, metrics in (references or {}).items():
            value = metrics.get(metric)
            if value is not None and np.isfinite(value):
                colour, _, _, label_ = _style(name)
                ax.axhline(value, color=colour, ls="--", lw=1, label=f"{label_} (all train pairs)")
        ax.set_xscale("log")
        budgets = sorted({r["n_train"] for rows in curves.values() for r in rows})
        ax.set_xticks(budgets, [str(b) for b in budgets], rotation=45 if len(budgets) > 5 else 0)
        ax.xaxis.set_minor_formatter(NullFormatter())
        if key == "kappa":
            ax.set_yscale("log")
        ax.set_xlabel("training pairs (log scale)")
        ax.set_ylabel(label.format(k=metric[4:]) if key == "nos" else label)
        ax.set_title(label.format(k=metric[4:]).split(" (")[0] + " vs training pairs")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Pair budget: the map refitted on nested subsets of the train split, scored on one fixed test split")
    return fig


# ---------------------------------------------------------------- (d) NOS@k against k

def fig_nos_curve(series: dict[str, tuple[list[int], list[float], list[float] | None]], *, n_test: int):
    """NOS@k against k for the map, the null, the controls; dotted: unrelated spaces, 1 − k/(n_test − 1).

    Args:
        series: {name: (ks, values, stds or None)}; error bars when stds are given (seeds).
        n_test: number of test pairs (for the chance curve).
    """
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    all_ks = sorted({k for ks, _, _ in series.values() for k in ks})
    for name, (ks, values, stds) in series.items():
        colour, marker, style, label = _style(name)
        ax.errorbar(ks, values, yerr=stds, color=colour, marker=marker, ls=style, capsize=3, label=label)
    grid = np.unique(np.geomspace(all_ks[0], all_ks[-1], 50).round().astype(int)) if all_ks else []
    ax.plot(grid, 1 - np.asarray(grid) / (n_test - 1), color="k", ls=":", lw=1,
            label="unrelated spaces, 1 − k/(n_test − 1)")
    if len(all_ks) > 1:
        ax.set_xscale("log")
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.set_xlabel("k (neighbours, log scale)")
    ax.set_ylabel("NOS@k (↓ lower is better; 0 = same neighbours)")
    ax.set_ylim(top=1.01)
    ax.set_title(f"Neighbourhood overlap shortfall on {n_test} test pairs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------- (e) layerwise CKA

def fig_layer_cka(layers_a: list[str], layers_b: list[str], cka, *, name_a: str = "A", name_b: str = "B",
                  n: int | None = None):
    """Heatmap of linear CKA between layer i of A (rows) and layer j of B (columns), colour scale 0–1."""
    m = np.asarray(cka, dtype=np.float64)
    fig = _figure(max(6.0, 2.0 + 0.6 * len(layers_b)), max(4.5, 1.2 + 0.45 * len(layers_a)))
    ax = fig.subplots()
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
    ax.set_xticks(range(len(layers_b)), layers_b)
    ax.set_yticks(range(len(layers_a)), layers_a)
    ax.set_xlabel(f"layer of {name_b} (target)")
    ax.set_ylabel(f"layer of {name_a} (source)")
    if m.size <= 256:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="linear CKA (↑; 1 = same geometry)")
    ax.set_title("Layerwise linear CKA on test states" + (f" (n = {n})" if n else ""))
    return fig
