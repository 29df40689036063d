"""The metric table of an evaluate result, shared by the terminal output and the HTML page.

Plain data (no rich, no matplotlib): columns and rows of strings, and the convention lines
that every result prints (direction, split, metric directions).
"""

from __future__ import annotations

import math

METRIC_ORDER = ("r2", "cka", "cka_raw", "dsc", "retrieval@1", "mse", "procrustes_error", "kappa", "orth_dev",
                "eff_rank_a", "eff_rank_b")
BETTER = {"r2": "↑", "cka": "↑", "cka_raw": "↑", "dsc": "↑", "mse": "↓", "retrieval@1": "↑", "procrustes_error": "↓",
          "kappa": "↓", "orth_dev": "↓", "eff_rank_a": "", "eff_rank_b": ""}
COLUMNS = (("metrics", "map", "map"), ("in_distribution", "in-distribution map", "in-dist."),
           ("null", "shuffled-pair null", "null"), ("control", "random-init control", "control"))


def fmt(value) -> str:
    """4 significant digits; an em dash for missing or non-finite values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.4g}"


def fmt_stats(stats: dict | None) -> str:
    """'mean ± std' of a {"mean", "std", "n"} dict (std to 2 significant digits)."""
    if not stats or stats.get("mean") is None:
        return "—"
    return f"{fmt(stats['mean'])} ± {stats['std']:.2g}"


def metric_keys(metrics: dict) -> list[str]:
    """Metric names in reading order: R², CKA, DSC, NOS@k (increasing k), retrieval@1, the rest."""
    keys = [k for k in METRIC_ORDER if k in metrics]
    nos = sorted((k for k in metrics if k.startswith("nos@")), key=lambda k: int(k[4:]))
    at = keys.index("retrieval@1") if "retrieval@1" in keys else len(keys)
    keys[at:at] = nos
    return keys


def better(key: str) -> str:
    """'↑' / '↓' (and a note) for a metric name."""
    return "↓" if key.startswith("nos@") else BETTER.get(key, "")


def metric_table(result: dict, *, short: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the result's metrics: the name with its direction (↑/↓), then one column per
    series present (map, in-distribution, null, control); cells are 'mean ± std' when the result
    summarises several runs (``seeds``). ``short``: terse column names for a terminal."""
    seeds = result.get("seeds")
    present = []
    for key, long_label, short_label in COLUMNS:
        label = short_label if short else long_label
        section = result.get(key)
        if section is None:
            continue
        values = section.get("metrics", section) if key in ("control", "in_distribution") else section
        summarised = seeds is not None and key in seeds
        if summarised:
            values = seeds[key]
        if key == "metrics" and "shift" in result:
            label = "shifted map"
        if summarised and not short:
            label += " (mean ± std)"
        present.append((label, values, summarised))
    header = ["metric" if short else "metric (↑/↓ better)"] + [label for label, _, _ in present]
    rows = []
    for k in metric_keys(result["metrics"]):
        rows.append([f"{k} {better(k)}".strip()] + [fmt_stats(v.get(k)) if stats else fmt(v.get(k))
                                                    for _, v, stats in present])
    return header, rows


def convention_lines(result: dict) -> list[str]:
    """The facts every result states: which side is mapped onto which, the split, the metric directions."""
    split = result["split"]
    lines = [f"Direction: A → B, A mapped onto B's space (z_b ≈ W z_a, W is d_b × d_a = "
             f"{result.get('d_b', '?')} × {result.get('d_a', '?')}); A = {result['a']}"
             f" ({result.get('encoder_a') or '?'}), B = {result['b']} ({result.get('encoder_b') or '?'}).",
             f"Split: n_train = {split['n_train']}, n_test = {split['n_test']}; how: {split['how']}. Latents are "
             "standardised with train statistics; every metric is on held-out test pairs."]
    seeds = result.get("seeds")
    if seeds is not None:
        split_seeds = ", ".join(map(str, seeds["split_seeds"]))
        lines.append(f"Runs: {seeds['runs']} = {seeds['models']} model(s) × "
                     + (f"{len(seeds['split_seeds'])} split seed(s) ({split_seeds})" if split_seeds
                        else "a fixed split")
                     + f"; ± is the {seeds['std']}; sweeps and pictures use the first run.")
    names = [("null", "null = the same fit on shuffled training pairs"),
             ("control", "control = the same protocol on the random-init latents, same state ids"),
             ("in_distribution", "in-dist. = a map fitted on as many train states of the test classes")]
    lines.append("Columns: " + "; ".join(text for key, text in names if key in result) + ".")
    lines.append("Metric directions: ↑ higher is better (R², CKA, DSC, retrieval@1), ↓ lower is better (MSE, "
                 "NOS@k, Procrustes error, κ(W) with 1 = isometry, orth_dev); NOS@k ↓: 0 = same neighbours, "
                 f"≈ 1 − k/(n_test − 1) for unrelated spaces; retrieval@1 chance = {1 / split['n_test']:.2g}.")
    p = result.get("r2_p_value")
    if p is not None:
        lines.append(f"Map: {result.get('method')} (λ = {fmt(result.get('lambda'))}); R² permutation p = {p:.3g} "
                     f"({result.get('permutations')} shuffled-pair refits"
                     + (f" per run; the largest over {seeds['runs']} runs" if seeds is not None else "") + ").")
    return lines
