"""evaluate's runs: one fit + score per model seed × split seed, with controls, summarised.

Built on :mod:`sjalign.protocol.split` and :mod:`sjalign.protocol.score`; the CLI's ``--seeds``,
several files per side, ``--control-a/-b``, ``--shift`` and the layerwise CKA of ``--report``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sjalign.align import AlignmentMap
from sjalign.align.pairing import Pairs
from sjalign.errors import OptionError, SjalignError
from sjalign.io import Latents
from sjalign.metrics import DEFAULT_KS
from sjalign.metrics.cka import linear_cka_matrix
from sjalign.protocol.score import DEFAULT_MAX_TEST, evaluate_pairs, fit_on_split, null_map
from sjalign.protocol.split import Shift, Split, choose_split, shift_split, transfer_split


@dataclass(frozen=True)
class EvalOptions:
    """How each run fits and scores (the options of ``sjalign evaluate``)."""

    method: str = "ridge"
    lam: float | str = 1e-3
    ks: tuple[int, ...] = DEFAULT_KS
    trim_ks: bool = False  # the default --k: drop the k >= n_test with a warning instead of failing
    permutations: int = 99
    dsc_points: int = 2000
    device: str = "auto"
    test_fraction: float = 0.2
    use_file_split: bool = True
    max_test: int | None = DEFAULT_MAX_TEST  # NOS@k and retrieval@1 on a seeded subsample above this


@dataclass
class Run:
    """One fit + score: its JSON result and the objects a report draws from.

    Attributes:
        result: the :func:`evaluate_pairs` dict, plus ``split_seed``, ``model`` and, when asked,
            ``control`` and ``in_distribution`` (each {"metrics", "n_train", "n_test", "warnings"}).
        pairs, split, amap: the paired latents, the split and the map that was judged.
        null: the shuffled-pair null map it was judged against.
        control: (pairs, split, map) of the random-init control, or None.
    """

    result: dict
    pairs: Pairs
    split: Split
    amap: AlignmentMap
    null: AlignmentMap
    control: tuple[Pairs, Split, AlignmentMap] | None = None


def run_once(pairs: Pairs, opts: EvalOptions, *, seed: int = 0, amap: AlignmentMap | None = None,
             control: Pairs | None = None, shift: Shift | None = None, model: int = 0,
             control_name: str = "control") -> Run:
    """Split (seed ``seed``), fit unless ``amap`` is given, score beside the null; then the controls.

    The random-init control (``control``: latents of untrained encoders, paired) is split on
    the same state ids (:func:`transfer_split`) and fitted the same way (``amap.refit_options``).
    With ``shift`` the map fits on some classes and scores on others, beside an in-distribution
    map fitted on as many pairs of the test classes (:func:`shift_split`).

    Raises:
        SjalignError: from the split, the fit or the scoring (bad k, uncovered control, ...).
    """
    split = choose_split(pairs, test_fraction=opts.test_fraction, seed=seed, use_file_split=opts.use_file_split,
                         train_state_ids=None if amap is None else amap.train_state_ids)
    in_split = None
    if shift is not None:
        split, in_split = shift_split(pairs, split, shift, seed=seed)
    if amap is None:
        amap = fit_on_split(pairs, split, method=opts.method, lam=opts.lam, seed=seed)
    kw = dict(ks=opts.ks, seed=seed, device=opts.device, dsc_points=opts.dsc_points, trim_ks=opts.trim_ks,
              max_test=opts.max_test)
    nmap = null_map(pairs, split, amap, seed=seed)
    result = evaluate_pairs(pairs, split, amap, permutations=opts.permutations, null=nmap, **kw)
    result.update(split_seed=seed if split.seed is not None else None, model=model)
    if in_split is not None:
        in_map = fit_on_split(pairs, in_split, **amap.refit_options())
        res = evaluate_pairs(pairs, in_split, in_map, with_null=False, **kw)
        result["in_distribution"] = {key: res[key] for key in ("metrics", "n_train", "n_test", "split", "warnings")}
    run = Run(result, pairs, split, amap, nmap)
    if control is not None:
        c_split, lacking = transfer_split(split, pairs, control, name=control_name)
        c_map = fit_on_split(control, c_split, **amap.refit_options())
        res = evaluate_pairs(control, c_split, c_map, with_null=False, **kw)
        notes = [f"control: {n}" for n in res["warnings"]]
        if lacking:
            notes.append(f"control: {lacking} train state id(s) missing from its latents; its map used the other "
                         f"{res['n_train']}")
        result["control"] = {"metrics": res["metrics"], "n_train": res["n_train"], "n_test": res["n_test"],
                             "warnings": notes}
        run.control = (control, c_split, c_map)
    return run


def evaluate_runs(models: list[Pairs], opts: EvalOptions, *, seeds=(0,), amap: AlignmentMap | None = None,
                  controls: list[Pairs] | None = None, shift: Shift | None = None,
                  control_names: list[str] | None = None) -> list[Run]:
    """One :func:`run_once` per model × split seed (``evaluate --seeds``, several files per side).

    Args:
        models: paired latents of each model seed (file i of A with file i of B).
        seeds: split seeds; more than one needs a seeded split.
        controls: one paired control for all models, or one per model.
        control_names: how errors name each control (e.g. its two files).

    Raises:
        SjalignError: several seeds where the split is fixed (a map's ids or the files' split),
            a map with several models, or a control count that fits neither rule.
    """
    seeds = tuple(dict.fromkeys(seeds))
    if amap is not None and len(models) > 1:
        raise OptionError("{amap}: a map belongs to one model pair; with several latents files per side, drop {amap} "
                          "and let evaluate fit one map per model")
    if len(seeds) > 1:
        first = choose_split(models[0], test_fraction=opts.test_fraction, seed=seeds[0],
                             use_file_split=opts.use_file_split,
                             train_state_ids=None if amap is None else amap.train_state_ids)
        if first.kind == "map":
            raise OptionError("{seeds}: the map's train ids fix the split, so split seeds change nothing; "
                              "drop {amap} to fit one map per split seed")
        if first.kind == "file":
            raise OptionError("{seeds}: the latents carry a fixed train/test split (their 'split' tensor), so "
                              "split seeds change nothing; add {resplit} to draw seeded splits by state id",
                              resplit="use_file_split=False")
    if controls is not None and len(controls) not in (1, len(models)):
        raise SjalignError(f"{len(controls)} control latents files per side for {len(models)} models: give one, "
                           f"or one per model")
    runs = []
    for i, pairs in enumerate(models):
        j = i if controls is not None and len(controls) > 1 else 0
        control = None if controls is None else controls[j]
        name = control_names[j] if control_names else "control"
        for seed in seeds:
            runs.append(run_once(pairs, opts, seed=seed, amap=amap, control=control, shift=shift, model=i,
                                 control_name=name))
    return runs


def mean_std(values) -> dict:
    """{"mean", "std", "n"} of the finite values: sample std (ddof 1), 0 for one value; None when none."""
    arr = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(arr):
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": int(len(arr))}


def summarise_runs(runs: list[Run]) -> dict:
    """Mean ± std of every metric over runs, for the map, the null and each control present in all runs.

    Returns:
        {"runs", "split_seeds", "models", "std": how, "metrics"|"null"|"control"|"in_distribution":
        {metric: {"mean", "std", "n"}}, "r2_p_value": {...}, "per_run": [{"split_seed", "model",
        "n_train", "n_test", "r2_p_value", "metrics", ...}]}.
    """
    results = [r.result for r in runs]
    sections = {"metrics": [r["metrics"] for r in results], "null": [r["null"] for r in results]}
    for key in ("control", "in_distribution"):
        if all(key in r for r in results):
            sections[key] = [r[key]["metrics"] for r in results]
    split_seeds = sorted({r["split_seed"] for r in results if r["split_seed"] is not None})
    out = {"runs": len(results), "split_seeds": split_seeds,
           "models": len({r["model"] for r in results}), "std": "sample standard deviation (ddof 1) over runs"}
    for name, dicts in sections.items():
        out[name] = {k: mean_std([d.get(k) for d in dicts]) for k in dicts[0]}
    out["r2_p_value"] = mean_std([r["r2_p_value"] for r in results])
    out["per_run"] = [{key: r[key] for key in ("split_seed", "model", "n_train", "n_test", "r2_p_value", "metrics",
                                               "null")}
                      | {key: r[key]["metrics"] for key in ("control", "in_distribution") if key in r}
                      for r in results]
    return out


def layer_rows(lat: Latents, state_ids: np.ndarray) -> tuple[list[str], dict[str, np.ndarray]]:
    """A latents file's layer names in depth order (numeric first) and each layer's rows of ``state_ids``
    (ids the file holds, in that order): ({name: (m, d_l)})."""
    order = np.argsort(lat.state_ids)
    rows = order[np.searchsorted(lat.state_ids, state_ids, sorter=order)]
    names = sorted(lat.layers, key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s))
    return names, {name: lat.layers[name][rows] for name in names}


def layerwise_cka(a: Latents, b: Latents, state_ids: np.ndarray, *, max_points: int = 1000,
                  seed: int = 0) -> dict | None:
    """Linear CKA between every layer of A and every layer of B on the states ``state_ids``.

    :func:`sjalign.metrics.cka.linear_cka_matrix` (Kornblith et al. 2019, arXiv:1905.00414) over
    a seeded subsample of at most ``max_points`` states; no map is needed (CKA is invariant to
    orthogonal transforms and isotropic scaling).

    Args:
        a, b: latents files whose ``layers`` hold (n, d_l) tensors ``layer.NAME``.
        state_ids: (m,) ids present in both files (e.g. the test split).

    Returns:
        {"layers_a": [...], "layers_b": [...], "cka": (L_a, L_b) nested list, "n": points}, or
        None when either file carries no layers.
    """
    if not a.layers or not b.layers:
        return None
    ids = np.asarray(state_ids)
    if len(ids) > max_points:
        ids = np.sort(np.random.default_rng(seed).choice(ids, max_points, replace=False))

    names_a, xa = layer_rows(a, ids)
    names_b, xb = layer_rows(b, ids)
    cka = linear_cka_matrix([xa[name] for name in names_a], [xb[name] for name in names_b])
    return {"layers_a": names_a, "layers_b": names_b, "cka": cka, "n": int(len(ids))}
