"""The result of ``sjalign evaluate``: one typed record of its runs, and its JSON form (SPEC §1).

:func:`build_result` turns the runs of :func:`sjalign.protocol.evaluate_runs` into an
:class:`EvaluateResult`: the first run's figures, or their means when there are several runs
(model seeds × split seeds, whose mean ± std go under ``seeds``), with what was compared and how.
:meth:`EvaluateResult.to_json` gives the dict ``evaluate --json`` prints and ``-o`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sjalign.metrics import higher_is_better
from sjalign.protocol.runs import Run, summarise_runs


@dataclass
class EvaluateResult:
    """What ``sjalign evaluate`` found, in the order of its JSON form.

    Attributes:
        metrics: the map's held-out figures (r2, cka, dsc, nos@k, retrieval@1, kappa, ...);
            the mean over runs when there are several.
        null: the same figures of the shuffled-pair null map (map-free ones left out), or None.
        r2_p_value: permutation p-value of R² (the largest over runs), or None without a null.
        permutations: shuffled-pair refits behind it.
        n_train, n_test: pairs that fitted and scored the (first run's) map.
        n_neighbour_test: the test pairs NOS@k and retrieval@1 used (a seeded subsample above
            ``max_test``).
        split: the first run's :meth:`sjalign.protocol.Split.describe`.
        ks: the k of NOS@k that were scored.
        warnings: every run's warnings, each once, then the control's.
        split_seed, model: the first run's split seed (None for a fixed split) and model index.
        direction, mapped: "a->b" and the sentence saying so.
        a, b: the latents files of each side, comma-separated.
        d_a, d_b: latent widths.
        encoder_a, encoder_b: the files' ``encoder`` metadata.
        map: the map file that was judged, or None (maps fitted here).
        method, lam: the map's method and ridge λ (JSON key ``lambda``).
        higher_is_better: per metric, its direction (:func:`sjalign.metrics.higher_is_better`).
        dropped: {"a", "b"}: state ids of one side with no partner.
        config: every resolved option (the CLI's ``EvaluateConfig`` as a dict).
        in_distribution, control: {"metrics", "n_train", "n_test", "warnings", ...} of the shift's
            in-distribution map and of the random-init control (with its files), or None.
        seeds: :func:`sjalign.protocol.summarise_runs` when there are several runs, else None.
        shift: train/test classes of a shift evaluation, or None.
        pair_budget, pair_noise: sweep rows (:mod:`sjalign.protocol.sweeps`), or None.
        layer_cka: :func:`sjalign.protocol.layerwise_cka` of a report, or None.
    """

    metrics: dict[str, Any]
    null: dict[str, Any] | None
    r2_p_value: float | None
    permutations: int
    n_train: int
    n_test: int
    n_neighbour_test: int
    split: dict[str, Any]
    ks: list[int]
    warnings: list[str]
    split_seed: int | None
    model: int
    direction: str
    mapped: str
    a: str
    b: str
    d_a: int
    d_b: int
    encoder_a: str | None
    encoder_b: str | None
    map: str | None
    method: str
    lam: float
    higher_is_better: dict[str, bool]
    dropped: dict[str, int]
    config: dict[str, Any]
    in_distribution: dict[str, Any] | None = None
    control: dict[str, Any] | None = None
    seeds: dict[str, Any] | None = None
    shift: dict[str, Any] | None = None
    pair_budget: list[dict] | None = None
    pair_noise: list[dict] | None = None
    layer_cka: dict[str, Any] | None = None
    runs: list[Run] = field(default_factory=list, repr=False)  # not in the JSON: the report draws from them

    ORDER = ("metrics", "null", "r2_p_value", "permutations", "n_train", "n_test", "n_neighbour_test", "split",
             "ks", "warnings", "split_seed", "model", "in_distribution", "control", "seeds", "direction", "mapped",
             "a", "b", "d_a", "d_b", "encoder_a", "encoder_b", "map", "method", "lambda", "higher_is_better",
             "dropped", "config", "shift", "pair_budget", "pair_noise", "layer_cka")
    OPTIONAL = ("in_distribution", "control", "seeds", "shift", "pair_budget", "pair_noise", "layer_cka")

    def to_json(self) -> dict[str, Any]:
        """The JSON form (SPEC §1): every field in :attr:`ORDER`; optional sections only when present."""
        out = {}
        for key in self.ORDER:
            value = getattr(self, "lam" if key == "lambda" else key)
            if value is None and key in self.OPTIONAL:
                continue
            out[key] = value
        return out


def build_result(runs: list[Run], *, a_paths: list[Path], b_paths: list[Path], encoder_a: str | None,
                 encoder_b: str | None, map_path: str | None, ks, config: dict[str, Any],
                 control_paths: tuple[list[Path], list[Path]] | None = None,
                 shift_train_classes=None) -> EvaluateResult:
    """The result of ``evaluate``'s runs: the first run's figures, or means with ``seeds`` when there are several.

    Args:
        runs: from :func:`sjalign.protocol.evaluate_runs` (at least one).
        a_paths, b_paths: each side's latents files.
        encoder_a, encoder_b: the files' ``encoder`` metadata.
        map_path: the map file judged, or None.
        ks: the k of NOS@k scored.
        config: every resolved option, as a dict.
        control_paths: the control's (A files, B files), when the runs have a control.
        shift_train_classes: the shift's train classes, when the runs are a shift evaluation.

    Returns:
        :class:`EvaluateResult`; with several runs the headline metrics, null and control are
        means (the per-run values are in ``seeds.per_run``) and ``r2_p_value`` the largest.
    """
    first = runs[0]
    res = first.result
    metrics, null, p_value = res["metrics"], res["null"], res["r2_p_value"]
    warnings = list(res["warnings"])
    control, in_dist, seeds = res.get("control"), res.get("in_distribution"), None
    if len(runs) > 1:
        seeds = summarise_runs(runs)
        metrics = {k: v["mean"] for k, v in seeds["metrics"].items()}
        null = {k: v["mean"] for k, v in seeds["null"].items()}
        p_value = max(r.result["r2_p_value"] for r in runs)  # the most conservative run
        if "control" in seeds:
            control = {**control, "metrics": {k: v["mean"] for k, v in seeds["control"].items()}}
        if "in_distribution" in seeds:
            in_dist = {**in_dist, "metrics": {k: v["mean"] for k, v in seeds["in_distribution"].items()}}
        warnings = list(dict.fromkeys(w for r in runs for w in r.result["warnings"]))
    if control is not None:
        control = {**control, "a": [str(p) for p in control_paths[0]], "b": [str(p) for p in control_paths[1]]}
        warnings += [w for w in control["warnings"] if w not in warnings]
    shift = None
    if shift_train_classes is not None:
        shift = {"train_classes": list(shift_train_classes),
                 "test_classes": sorted({int(c) for c in first.pairs.labels[first.split.test]}),
                 "in_distribution_n_train": res["in_distribution"]["n_train"]}
    amap = first.amap
    return EvaluateResult(
        metrics=metrics, null=null, r2_p_value=p_value, permutations=res["permutations"], n_train=res["n_train"],
        n_test=res["n_test"], n_neighbour_test=res["n_neighbour_test"], split=res["split"], ks=list(ks),
        warnings=warnings, split_seed=res["split_seed"],
        model=res["model"], direction="a->b", mapped="A onto B's space: z_b ≈ W z_a, W (d_b, d_a)",
        a=",".join(map(str, a_paths)), b=",".join(map(str, b_paths)), d_a=amap.d_a, d_b=amap.d_b,
        encoder_a=encoder_a, encoder_b=encoder_b, map=map_path, method=amap.method, lam=amap.lam,
        higher_is_better=higher_is_better(metrics), dropped={"a": first.pairs.dropped_a, "b": first.pairs.dropped_b},
        config=config, in_distribution=in_dist, control=control, seeds=seeds, shift=shift, runs=list(runs))


__all__ = ["EvaluateResult", "build_result"]
