"""sjalign evaluate A B [--map MAP]: held-out metrics of a map beside the shuffled-pair null."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import (
    DeviceOpt, ForceOpt, JsonOpt, SeedOpt, cli_command, console, emit_json, parse_ks, parse_lambda, to_json,
)
from sjalign.cli.fit_map import LambdaOpt, MethodOpt, TestFracOpt, load_pairs

METRIC_ORDER = ("r2", "cka", "cka_raw", "dsc", "mse", "retrieval@1", "procrustes_error", "kappa", "orth_dev",
                "eff_rank_a", "eff_rank_b")
DIRECTION = {"r2": "↑", "cka": "↑", "cka_raw": "↑", "dsc": "↑", "mse": "↓", "retrieval@1": "↑",
             "procrustes_error": "↓", "kappa": "↓ (1 = isometry)", "orth_dev": "↓", "eff_rank_a": "", "eff_rank_b": ""}


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Resolved options of one evaluate run."""

    map: str | None
    method: str
    lam: float | str
    test_fraction: float
    seed: int
    ks: tuple[int, ...]
    permutations: int
    dsc_points: int
    pair_budget: tuple[int, ...] | None
    pair_noise: tuple[float, ...] | None


def print_report(result: dict) -> None:
    """The human table on stderr: each metric, the null beside it, and which way is better."""
    from rich.table import Table

    m, null = result["metrics"], result["null"]
    table = Table(title=f"{result['a']}  →  {result['b']}   (A mapped onto B; held-out test pairs)")
    table.add_column("metric")
    table.add_column("map", justify="right")
    table.add_column("shuffled-pair null", justify="right")
    table.add_column("better")
    keys = [k for k in METRIC_ORDER if k in m and not k.startswith("nos")]
    keys[4:4] = [k for k in m if k.startswith("nos@")]
    for k in keys:
        table.add_row(k, _fmt(m[k]), _fmt(null.get(k)), DIRECTION.get(k, "↓" if k.startswith("nos@") else ""))
    console.print(table)
    console.print(f"n_train = {result['n_train']}, n_test = {result['n_test']}; split: {result['split']}; "
                  f"map: {result['method']} (λ = {result['lambda']:g}); R² permutation p = "
                  f"{result['r2_p_value']:.3g} ({result['permutations']} shuffles). NOS@k: lower is better; "
                  f"retrieval@1 chance = {1 / result['n_test']:.2g}.")
    for note in result["warnings"]:
        console.print(f"[yellow]warning:[/] {note}")


def print_sweep(rows: list[dict], name: str, label: str) -> None:
    """One table for a sweep: a row per setting, the headline metrics as columns."""
    from rich.table import Table

    keys = ("r2", "cka", "dsc", "nos@10", "retrieval@1", "kappa")
    table = Table(title=f"{name} sweep (same test split; NOS@k lower is better)")
    table.add_column(label, justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    for row in rows:
        table.add_row(f"{row[label]:g}", *(_fmt(row["metrics"].get(key)) for key in keys))
    console.print(table)


def parse_list(text: str | None, kind, option: str) -> tuple | None:
    """'64,256' -> (64, 256) of ``kind``; None stays None."""
    from sjalign.errors import SjalignError

    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SjalignError(f"{option} '{text}': expected comma-separated {kind.__name__} values") from None
    if not values:
        raise SjalignError(f"{option} '{text}': give at least one value")
    return values


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4g}"


@cli_command
def evaluate_command(
    a_path: Annotated[Path, typer.Argument(metavar="A", help="Source latents (.safetensors).")],
    b_path: Annotated[Path, typer.Argument(metavar="B", help="Target latents (.safetensors).")],
    map_path: Annotated[Path | None, typer.Option("--map", help="Map file from fit-map; without it a map is fitted on the train split.")] = None,
    k: Annotated[str, typer.Option("--k", help="Neighbourhood sizes for NOS@k, comma-separated.")] = "1,5,10,20,50",
    method: MethodOpt = "ridge",
    lam: LambdaOpt = "1e-3",
    test_fraction: TestFracOpt = 0.2,
    seed: SeedOpt = 0,
    permutations: Annotated[int, typer.Option("--permutations", help="Shuffled-pair refits for the R² p-value.")] = 99,
    dsc_points: Annotated[int, typer.Option("--dsc-points", help="At most this many test points for DSC.")] = 2000,
    pair_budget: Annotated[str | None, typer.Option("--pair-budget", help="Sweep: refit on this many train pairs each (e.g. 64,256,1024), same test split.")] = None,
    pair_noise: Annotated[str | None, typer.Option("--pair-noise", help="Sweep: refit with this fraction of train pairs mismatched (e.g. 0,0.1,0.3).")] = None,
    device: DeviceOpt = "auto",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON result to this file.")] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Score A → B on held-out states: R², CKA, DSC, NOS@k, retrieval@1, Procrustes error, κ(W), beside the null.

    Examples:

      sjalign evaluate a.safetensors b.safetensors --map a2b.safetensors

      sjalign evaluate a.safetensors b.safetensors --json --k 1,10 > metrics.json
    """
    from sjalign.align import check_source, load_map
    from sjalign.errors import SjalignError
    from sjalign.io import atomic_write_bytes, check_output
    from sjalign.protocol import choose_split, evaluate_pairs, fit_on_split, pair_budget_sweep, pair_noise_sweep

    ks = parse_ks(k)
    budgets = parse_list(pair_budget, int, "--pair-budget")
    noises = parse_list(pair_noise, float, "--pair-noise")
    lam_value = parse_lambda(lam)
    if permutations < 1:
        raise SjalignError(f"--permutations must be at least 1, got {permutations}")
    if dsc_points < 3:
        raise SjalignError(f"--dsc-points must be at least 3, got {dsc_points}")
    if output is not None:
        check_output(output, force)
    amap = None
    if map_path is not None:
        amap, map_meta = load_map(map_path)
        check_source(map_meta, map_path, a_path)
    a, b, pairs = load_pairs(a_path, b_path)
    if amap is not None and (amap.d_a != a.dim or amap.d_b != b.dim):
        raise SjalignError(f"{map_path}: map is {amap.d_a} -> {amap.d_b} but the latents are "
                           f"{a.dim} ({a_path}) -> {b.dim} ({b_path})")
    try:
        split = choose_split(pairs, test_fraction=test_fraction, seed=seed,
                             train_state_ids=None if amap is None else amap.train_state_ids)
    except SjalignError as exc:
        raise SjalignError(f"{map_path}: {exc}" if map_path else str(exc)) from None
    if amap is None:
        amap = fit_on_split(pairs, split, method=method, lam=lam_value, seed=seed)
    result = evaluate_pairs(pairs, split, amap, ks=ks, permutations=permutations, seed=seed, device=device,
                            dsc_points=dsc_points)
    config = EvaluateConfig(None if map_path is None else str(map_path), amap.method, amap.lam, test_fraction,
                            seed, ks, permutations, dsc_points, budgets, noises)
    sweep_kw = dict(**amap.refit_options(), ks=ks, seed=seed, device=device, dsc_points=dsc_points)
    if budgets:
        result["pair_budget"] = pair_budget_sweep(pairs, split, budgets, **sweep_kw)
    if noises:
        result["pair_noise"] = pair_noise_sweep(pairs, split, noises, **sweep_kw)
    result = {**result, "direction": "a->b", "a": str(a_path), "b": str(b_path),
              "encoder_a": a.metadata.get("encoder"), "encoder_b": b.metadata.get("encoder"),
              "map": config.map, "method": amap.method, "lambda": amap.lam, "ks": list(ks),
              "dropped": {"a": pairs.dropped_a, "b": pairs.dropped_b}, "config": dataclasses.asdict(config)}
    if output is not None:
        atomic_write_bytes(output, (to_json(result) + "\n").encode())
    if json_out:
        emit_json(result)
    else:
        print_report(result)
        for key, label in (("pair_budget", "n_train"), ("pair_noise", "noise")):
            if key in result:
                print_sweep(result[key], key, label)
