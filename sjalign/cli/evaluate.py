"""sjalign evaluate A B [--map MAP]: held-out metrics of a map beside the null and the controls."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import (
    DeviceOpt, ForceOpt, JsonOpt, SeedOpt, StrictOpt, cli_command, console, emit_json, error_text, is_stdout,
    output_path, parse_ks, parse_latents_list, to_json, write_text_output,
)
from sjalign.cli.fit_map import LambdaOpt, MethodOpt, TestFracOpt, resolve_lambda
from sjalign.errors import SjalignError

SWEEP_KEYS = ("r2", "cka", "dsc", "nos@10", "retrieval@1", "kappa")

SHIFT_HELP = ("Distribution shift: fit on the train states of some classes, test on the test states of others, "
              "beside an in-distribution map fitted on as many states of the test classes. Syntax "
              "'train-classes=LIST[,test-classes=LIST]', LIST = labels and ranges, e.g. "
              "'train-classes=0-4,test-classes=5-9' or 'train-classes=0,2,4' (test: every other label).")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Resolved options of one evaluate run."""

    map: str | None
    method: str
    lam: float | str
    test_fraction: float
    seed: int
    seeds: tuple[int, ...]
    resplit: bool
    ks: tuple[int, ...]
    permutations: int
    dsc_points: int
    pair_budget: tuple[int, ...] | None
    pair_noise: tuple[float, ...] | None
    shift: dict | None
    control_a: tuple[str, ...] | None
    control_b: tuple[str, ...] | None
    report: str | None
    max_test: int | None = None  # resolved: the library's DEFAULT_MAX_TEST when not given


def parse_list(text: str | None, kind, option: str) -> tuple | None:
    """'64,256' -> (64, 256) of ``kind``; None stays None."""
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SjalignError(f"{option} '{text}': expected comma-separated {kind.__name__} values") from None
    if not values:
        raise SjalignError(f"{option} '{text}': give at least one value")
    return values


def parse_shift(text: str):
    """'train-classes=0-4,test-classes=5-9' -> Shift((0..4), (5..9)); see SHIFT_HELP.

    Raises:
        SjalignError: unknown key, no train classes, a bad number or range, classes on both sides.
    """
    from sjalign.protocol import Shift

    values: dict[str, list[int]] = {}
    key = None
    for token in (t.strip() for t in text.split(",")):
        if "=" in token:
            key, token = (s.strip() for s in token.split("=", 1))
            if key not in ("train-classes", "test-classes") or key in values:
                raise SjalignError(f"--shift '{text}': unknown or repeated key '{key}' (use train-classes=, "
                                   "test-classes=)")
            values[key] = []
        if key is None or not token:
            raise SjalignError(f"--shift '{text}': expected train-classes=LIST[,test-classes=LIST], e.g. "
                               "train-classes=0-4,test-classes=5-9")
        try:
            lo, _, hi = token.partition("-")
            lo_i, hi_i = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise SjalignError(f"--shift '{text}': '{token}' is neither a class label nor a range like 0-4") from None
        if hi_i < lo_i:
            raise SjalignError(f"--shift '{text}': empty range '{token}'")
        values[key].extend(range(lo_i, hi_i + 1))
    if "train-classes" not in values:
        raise SjalignError(f"--shift '{text}': give train-classes=LIST")
    train = tuple(sorted(set(values["train-classes"])))
    test = tuple(sorted(set(values["test-classes"]))) if "test-classes" in values else None
    if test is not None and set(train) & set(test):
        raise SjalignError(f"--shift '{text}': class(es) {sorted(set(train) & set(test))} on both sides")
    return Shift(train, test)


def load_model_pairs(a_paths: list[Path], b_paths: list[Path], *, lazy: bool = False):
    """Pair file i of A with file i of B by state id; returns ([A sets], [B sets], [pairs]).

    ``lazy``: open the files without reading their latents (:class:`sjalign.lazy_io.LatentsSet`) and
    pair them as :class:`sjalign.align.streaming.FilePairs`, which the protocol reads in chunks (each
    file is scanned once for NaN/Inf first); else read them whole (:class:`sjalign.io.Latents`, :class:`Pairs`).
    """
    from sjalign.align.pairing import pair_by_state_id
    from sjalign.align.streaming import FilePairs, pair_rows
    from sjalign.io import load_latents
    from sjalign.lazy_io import open_latents_set

    if len(a_paths) != len(b_paths):
        raise SjalignError(f"{len(a_paths)} latents file(s) for A but {len(b_paths)} for B; several files per side "
                           "are models of different seeds, file i of A paired with file i of B")
    lat_a, lat_b, pairs = [], [], []
    for a_path, b_path in zip(a_paths, b_paths):
        if lazy:
            a, b = open_latents_set([a_path]), open_latents_set([b_path])
            a.check_finite()
            b.check_finite()
            p = FilePairs(a, b, pair_rows(a, b))
        else:
            a, b = load_latents(a_path), load_latents(b_path)
            p = pair_by_state_id(a, b)
        if p.dropped_a or p.dropped_b:
            console.print(f"[yellow]note:[/] paired {len(p.state_ids)} states by id; dropped {p.dropped_a} ids only "
                          f"in {a_path} and {p.dropped_b} only in {b_path}")
        lat_a.append(a)
        lat_b.append(b)
        pairs.append(p)
    for side, paths, lats in (("A", a_paths, lat_a), ("B", b_paths, lat_b)):
        kinds = [(model_kind(lat.metadata), lat.dim) for lat in lats]
        other = next((i for i, kind in enumerate(kinds) if kind != kinds[0]), None)
        if other is not None:
            raise SjalignError(f"{side}: {paths[0]} ({kinds[0][0][0]}, {kinds[0][1]} dims) and {paths[other]} "
                               f"({kinds[other][0][0]}, {kinds[other][1]} dims) are different encoders, not seeds of "
                               f"one model; compare different encoders with 'sjalign compare FILE FILE ...'")
    return lat_a, lat_b, pairs


def model_kind(metadata: dict) -> tuple:
    """What must agree between files given as seeds of one model: the encoder's kind without its weights
    (``jepa``: objective, preset, view; ``timm:ARCH``, ``hf:NAME``: without ``@weights``; a plugin: its
    scheme), layer and pooling; the width is compared beside it."""
    import json

    spec = metadata.get("encoder", "?")
    scheme = spec.split(":", 1)[0]
    if scheme == "jepa":
        try:
            cfg = json.loads(metadata.get("encoder_config", "{}"))
        except ValueError:
            cfg = {}
        name = f"jepa ({cfg.get('objective', '?')} {cfg.get('model', '?')}, view {cfg.get('view', '?')})"
    elif scheme in ("timm", "hf"):
        name = spec.split("@", 1)[0]  # the architecture, whatever weights file each seed has
    else:
        name = scheme  # a plugin's or pixels: what follows the scheme may name each seed's weights
    return name, metadata.get("layer"), metadata.get("pooling")


def print_report(result: dict) -> None:
    """The human table on stderr: each metric beside the null and the controls, with its direction."""
    from rich.table import Table

    from sjalign.report.tables import convention_lines, metric_table

    header, rows = metric_table(result, short=True)
    runs = f"; mean ± std over {result['seeds']['runs']} runs" if "seeds" in result else ""
    table = Table(title=f"A → B: A mapped onto B's space (held-out test pairs{runs})")
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if i else "left", no_wrap=not i)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in convention_lines(result):
        console.print(line)
    if "shift" in result:
        sh = result["shift"]
        console.print(f"Shift: fitted on classes {sh['train_classes']}, tested on classes {sh['test_classes']}; "
                      f"the in-distribution map is fitted on {sh['in_distribution_n_train']} states of the test "
                      "classes (same number of pairs).")
    if "control" in result:
        console.print(f"Control: {', '.join(result['control']['a'])} → {', '.join(result['control']['b'])}, "
                      "fitted and scored on the same state ids.")
    for note in result["warnings"]:
        console.print(f"[yellow]warning:[/] {note}")


def print_sweep(rows: list[dict], name: str, label: str) -> None:
    """One table for a sweep: a row per setting, the headline metrics (with directions) as columns."""
    from rich.table import Table

    from sjalign.report.tables import better, fmt

    keys = [k for k in SWEEP_KEYS if k in rows[0]["metrics"]]
    table = Table(title=f"{name} sweep, A → B (same test split; ↑ higher / ↓ lower is better)")
    table.add_column(label, justify="right")
    for key in keys:
        table.add_column(f"{key} {better(key)}", justify="right")
    for row in rows:
        table.add_row(f"{row[label]:g}", *(fmt(row["metrics"].get(key)) for key in keys))
    console.print(table)


@cli_command
def evaluate_command(
    a_arg: Annotated[str, typer.Argument(metavar="A", help="Source latents (.safetensors); several comma-separated files = models of different seeds, file i paired with file i of B.")],
    b_arg: Annotated[str, typer.Argument(metavar="B", help="Target latents (.safetensors), as many files as A.")],
    map_path: Annotated[Path | None, typer.Option("--map", help="Map file from fit-map; without it a map is fitted on the train split.")] = None,
    k: Annotated[str | None, typer.Option("--k", help="Neighbourhood sizes for NOS@k, comma-separated. [default: 1,5,10,20,50, leaving out the k >= n_test]")] = None,
    method: MethodOpt = None,
    lam: LambdaOpt = None,
    test_fraction: TestFracOpt = 0.2,
    seed: SeedOpt = 0,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Split seeds, e.g. 0,1,2,3,4: fit and score once per seed (and per model), report mean ± std; latents that carry a split need --resplit.")] = None,
    resplit: Annotated[bool, typer.Option("--resplit", help="Draw a seeded split by state id even when the files carry a split.")] = False,
    shift: Annotated[str | None, typer.Option("--shift", help=SHIFT_HELP)] = None,
    control_a: Annotated[str | None, typer.Option("--control-a", help="Random-init control: latents of an untrained encoder of A's architecture (needs --control-b).")] = None,
    control_b: Annotated[str | None, typer.Option("--control-b", help="Random-init control for B; fitted and scored on the same state ids.")] = None,
    permutations: Annotated[int, typer.Option("--permutations", help="Shuffled-pair refits for the R² p-value.")] = 99,
    dsc_points: Annotated[int, typer.Option("--dsc-points", help="At most this many test points for DSC.")] = 2000,
    max_test: Annotated[int | None, typer.Option("--max-test", help="NOS@k and retrieval@1 (exact nearest neighbours, quadratic in the test pairs) use a seeded subsample of this many test pairs when there are more; the result says so (n_neighbour_test and a warning). The other metrics use every test pair. [default: 50,000]")] = None,
    pair_budget: Annotated[str | None, typer.Option("--pair-budget", help="Sweep: refit on this many train pairs each (e.g. 64,256,1024), same test split.")] = None,
    pair_noise: Annotated[str | None, typer.Option("--pair-noise", help="Sweep: refit with this fraction of train pairs mismatched (e.g. 0,0.1,0.3).")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write PNG pictures and a self-contained index.html into this new folder.")] = None,
    device: DeviceOpt = "auto",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON result to this file ('-' = stdout).", parser=output_path)] = None,
    strict: StrictOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Score A → B (A mapped onto B's space) on held-out states: R², CKA, DSC, NOS@k, retrieval@1, κ(W), ...
    beside the shuffled-pair null, a permutation p-value for R² and, when given, a random-init control.

    Examples:

      sjalign evaluate a.safetensors b.safetensors --map a2b.safetensors

      sjalign evaluate a.safetensors b.safetensors --json --k 1,10 > metrics.json

      sjalign evaluate a.safetensors b.safetensors --seeds 0,1,2,3,4 --resplit --control-a a0.safetensors --control-b b0.safetensors

      sjalign evaluate a_s0.safetensors,a_s1.safetensors b_s0.safetensors,b_s1.safetensors   # two model seeds

      sjalign evaluate a.safetensors b.safetensors --shift train-classes=0-4,test-classes=5-9

      sjalign evaluate a.safetensors b.safetensors --pair-budget 64,256,1024 --report report_dir
    """
    from sjalign.align import METHODS, check_pair, check_source, load_map
    from sjalign.cli.common import check_choice, check_device, check_fraction, flag_conflicts
    from sjalign.io import check_output
    from sjalign.protocol import (
        DEFAULT_KS, DEFAULT_MAX_TEST, EvalOptions, build_result, choose_split, default_budgets, evaluate_runs,
        layerwise_cka, pair_budget_sweep, pair_noise_sweep,
    )

    ks = parse_ks(k or ",".join(map(str, DEFAULT_KS)))
    budgets = parse_list(pair_budget, int, "--pair-budget")
    noises = parse_list(pair_noise, float, "--pair-noise")
    split_seeds = parse_list(seeds, int, "--seeds") or (seed,)
    shift_spec = None if shift is None else parse_shift(shift)
    if map_path is not None:
        flag_conflicts({"--method": method is not None, "--lambda": lam is not None, "--resplit": resplit},
                       "the map is fitted already (on its own train states)", "--map")
    method = check_choice("--method", method or "ridge", METHODS)
    lam_value = resolve_lambda(method, lam)
    check_fraction("--test-fraction", test_fraction)
    check_device(device)
    if permutations < 1:
        raise SjalignError(f"--permutations must be at least 1, got {permutations}")
    if dsc_points < 3:
        raise SjalignError(f"--dsc-points must be at least 3, got {dsc_points}")
    max_test = DEFAULT_MAX_TEST if max_test is None else max_test
    if max_test < 2:
        raise SjalignError(f"--max-test must be at least 2 test pairs, got {max_test}")
    if (control_a is None) != (control_b is None):
        raise SjalignError("--control-a and --control-b go together: give the random-init latents of both sides")
    if shift_spec is not None and map_path is not None:
        raise SjalignError(f"{map_path}: --shift fits its own maps on the shift's train classes; drop --map")
    a_paths, b_paths = parse_latents_list(a_arg, "A"), parse_latents_list(b_arg, "B")
    c_paths = None
    if control_a is not None:
        c_paths = (parse_latents_list(control_a, "--control-a"), parse_latents_list(control_b, "--control-b"))
    inputs = [*a_paths, *b_paths, *(c_paths[0] + c_paths[1] if c_paths else ()), *([map_path] if map_path else ())]
    if is_stdout(output) and json_out:
        raise SjalignError("-o - and --json would both write the result to stdout; keep one")
    if report is not None and output is not None and not is_stdout(output) \
            and output.resolve().parent == report.resolve():
        raise SjalignError(f"{output}: lies inside --report {report}, which is replaced whole; write it elsewhere")
    if output is not None and not is_stdout(output):
        check_output(output, force, inputs=inputs)
    if report is not None:
        from sjalign.report import check_report_dir

        check_report_dir(report, force, inputs=inputs)
    amap = None
    if map_path is not None:
        amap, map_meta = load_map(map_path)
        check_source(map_meta, map_path, a_paths[0])
        check_pair(map_meta, map_path, {"a": a_paths, "b": b_paths}, strict=strict)
    # sweeps and the report refit on subsets and draw from whole arrays: they read the files whole; otherwise the
    # protocol reads the pairs in chunks from the files (memory O(d² + chunk + max_test · d))
    whole = budgets is not None or noises is not None or report is not None
    lat_a, lat_b, models = load_model_pairs(a_paths, b_paths, lazy=not whole)
    if amap is not None:
        if amap.d_a != lat_a[0].dim or amap.d_b != lat_b[0].dim:
            raise SjalignError(f"{map_path}: map is {amap.d_a} -> {amap.d_b} but the latents are "
                               f"{lat_a[0].dim} ({a_paths[0]}) -> {lat_b[0].dim} ({b_paths[0]})")
        try:
            choose_split(models[0], train_state_ids=amap.train_state_ids)
        except SjalignError as exc:
            raise SjalignError(f"{map_path}: {error_text(exc)}") from None
    controls, control_names = None, None
    if c_paths is not None:
        _, _, controls = load_model_pairs(*c_paths, lazy=not whole)
        control_names = [f"control {ca} / {cb}" for ca, cb in zip(*c_paths)]
    opts = EvalOptions(method, lam_value, ks, k is None, permutations, dsc_points, device, test_fraction, not resplit,
                       max_test)
    runs = evaluate_runs(models, opts, seeds=split_seeds, amap=amap, controls=controls, shift=shift_spec,
                         control_names=control_names)

    first = runs[0]
    ks = tuple(first.result["ks"])  # without --k, the defaults below n_test
    if report is not None and budgets is None:
        budgets = default_budgets(int(first.split.train.sum()))
    config = EvaluateConfig(None if map_path is None else str(map_path), first.amap.method, lam_value,
                            test_fraction, seed, tuple(split_seeds), resplit, ks, permutations, dsc_points, budgets,
                            noises, None if shift_spec is None else dataclasses.asdict(shift_spec),
                            None if c_paths is None else tuple(map(str, c_paths[0])),
                            None if c_paths is None else tuple(map(str, c_paths[1])),
                            None if report is None else str(report), max_test)
    result = build_result(runs, a_paths=a_paths, b_paths=b_paths, encoder_a=lat_a[0].metadata.get("encoder"),
                          encoder_b=lat_b[0].metadata.get("encoder"), map_path=config.map, ks=ks,
                          config=dataclasses.asdict(config), control_paths=c_paths,
                          shift_train_classes=None if shift_spec is None else shift_spec.train_classes)
    sweep_kw = dict(**first.amap.refit_options(), ks=ks, seed=split_seeds[0], device=device,
                    dsc_points=dsc_points, max_test=max_test)
    if budgets:
        result.pair_budget = pair_budget_sweep(first.pairs, first.split, budgets, **sweep_kw)
    if noises:
        result.pair_noise = pair_noise_sweep(first.pairs, first.split, noises, **sweep_kw)
    if report is not None:
        from sjalign.report import write_report

        curves = {"map": result.pair_budget}
        if first.control is not None:
            c_pairs, c_split, _ = first.control
            c_budgets = [b for b in budgets if b <= c_split.train.sum()]
            if c_budgets:
                curves["control"] = pair_budget_sweep(c_pairs, c_split, c_budgets, **sweep_kw)
        layers = layerwise_cka(lat_a[0], lat_b[0], first.pairs.state_ids[first.split.test], seed=split_seeds[0])
        result.layer_cka = layers
        clean = json.loads(to_json(result.to_json()))
        write_report(report, clean, first, budget_curves=curves, layer_cka=layers, force=force, seed=split_seeds[0])
    out = result.to_json()
    if output is not None:
        write_text_output(output, to_json(out) + "\n", replace=True)
    if json_out:
        emit_json(out)
    else:
        print_report(out)
        for key, label in (("pair_budget", "n_train"), ("pair_noise", "noise")):
            if key in out:
                print_sweep(out[key], key, label)
        if report is not None:
            console.print(f"wrote {report}/index.html")
