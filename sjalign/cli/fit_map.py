"""sjalign fit-map A B -o MAP: fit an alignment map from latents A to latents B (streamed from the files)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import ForceOpt, JsonOpt, OutOpt, SeedOpt, cli_command, console, emit_json, error_text, parse_lambda, progress_bar

MethodOpt = Annotated[str | None, typer.Option(
    "--method", help="ridge (default), lstsq (λ = 0, pseudoinverse) or procrustes; not with --map.")]
LambdaOpt = Annotated[str | None, typer.Option(
    "--lambda", help="Ridge λ ≥ 0 in standardised units, per sample: it minimises mean‖ẑ_b − Wẑ_a‖² + λ‖W‖², i.e. scikit-learn's Ridge alpha = λ·n_train; or 'auto' (k-fold CV); ridge only. [default: 1e-3]")]
DEFAULT_LAMBDA = "1e-3"
TestFracOpt = Annotated[float, typer.Option("--test-fraction", help="Held-out fraction of states, in (0, 1), when the files carry no split.")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision",
    help="auto (default): float32 chunk products where the fit's conditioning makes them harmless (κ ≤ 1,678, "
         "estimated on a pilot of the pairs), float64 elsewhere; float64: always the exact in-memory result; "
         "float32: always float32 products (about 2x faster; W moves by about κ·1e-8 relative).")]
FitMethodOpt = Annotated[str, typer.Option(
    "--method", help="ridge (default), lstsq (λ = 0, pseudoinverse; ridge with a warning when n_train < d_a) "
                     "or procrustes.")]
ChunkOpt = Annotated[int, typer.Option("--chunk-rows", min=1,
                                       help="Rows in flight per side (memory: one chunk of rows per side).")]


@dataclasses.dataclass(frozen=True)
class FitMapConfig:
    """Resolved options of one fit-map run (written into the map's metadata)."""

    method: str
    lam: float | str
    test_fraction: float
    seed: int
    precision: str = "auto"
    chunk_rows: int = 8192


def resolve_lambda(method: str, lam: str | None) -> float | str:
    """λ of ``--method`` and ``--lambda``: the given value for ridge (default 1e-3), 0 for the others.

    Raises:
        SjalignError: ``--lambda`` given with lstsq or procrustes (both flags named), or a bad λ.
    """
    from sjalign.errors import SjalignError

    if lam is not None and method != "ridge":
        raise SjalignError(f"--method {method} and --lambda {lam} contradict each other: λ applies to ridge only "
                           f"({method} {'has no λ' if method == 'procrustes' else 'is λ = 0'})")
    return parse_lambda(DEFAULT_LAMBDA if lam is None else lam)


def load_pairs(a_path: Path, b_path: Path):
    """Read both latents files and pair them by state id, saying how many ids were dropped."""
    from sjalign.align.pairing import pair_by_state_id
    from sjalign.io import load_latents

    a, b = load_latents(a_path), load_latents(b_path)
    pairs = pair_by_state_id(a, b)
    if pairs.dropped_a or pairs.dropped_b:
        console.print(f"[yellow]note:[/] paired {len(pairs.state_ids)} states by id; dropped "
                      f"{pairs.dropped_a} ids only in {a_path} and {pairs.dropped_b} only in {b_path}")
    return a, b, pairs


def _fit(a_set, b_set, method: str, lam: float, test_fraction: float, seed: int, chunk_rows: int,
         precision: str, quiet: bool):
    """Pair both sides by state id, split, and fit the map in one streamed pass.

    Returns (map, split, n_train); problems are warnings (collected by the caller) or SjalignError
    naming the files."""
    from sjalign.align.streaming import fit_map_streaming, pair_rows
    from sjalign.errors import SjalignError
    from sjalign.protocol import choose_split

    paired = pair_rows(a_set, b_set)
    if paired.dropped_a or paired.dropped_b:
        console.print(f"[yellow]note:[/] paired {len(paired.state_ids)} states by id; dropped "
                      f"{paired.dropped_a} ids only in {a_set.name} and {paired.dropped_b} only in {b_set.name}")
    try:
        split = choose_split(paired.as_pairs(), test_fraction=test_fraction, seed=seed)
    except SjalignError as exc:
        raise SjalignError(f"{a_set.name} and {b_set.name}: {error_text(exc)}") from None
    n_train = int(split.train.sum())
    bar, advance = progress_bar("moments", n_train, not quiet)
    with bar:
        amap = fit_map_streaming(a_set, b_set, paired, split.train, method=method, lam=lam, seed=seed,
                                 chunk=chunk_rows, precision=precision, progress=advance)
    for lset, idx in ((a_set, amap.info["constant_a"]), (b_set, amap.info["constant_b"])):
        if len(idx) == lset.dim:
            raise SjalignError(f"{lset.name}: all {lset.dim} features are constant on the train split (std 0); "
                               "there is nothing to fit")
        if idx:
            shown = ", ".join(map(str, idx[:8])) + (", ..." if len(idx) > 8 else "")
            warnings.warn(f"{lset.name}: {len(idx)} constant feature(s) on the train split (std 0; dims {shown}) "
                          "are left at 0 after standardising and carry no signal", stacklevel=1)
    return amap, split, n_train


@cli_command
def fit_map_command(
    a_arg: Annotated[str, typer.Argument(
        metavar="A", help="Source latents (.safetensors), or comma-separated shards of one latent set.")],
    b_arg: Annotated[str, typer.Argument(
        metavar="B", help="Target latents (.safetensors), or comma-separated shards of one latent set.")],
    output: OutOpt,
    method: FitMethodOpt = "ridge",
    lam: LambdaOpt = None,
    test_fraction: TestFracOpt = 0.2,
    seed: SeedOpt = 0,
    precision: PrecisionOpt = "auto",
    chunk_rows: ChunkOpt = 8192,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Fit W with z_b ≈ W z_a on the train split (by state id) and write a map file.

    The latents are streamed from the files chunk by chunk (memory: one chunk of rows per side
    plus O(d²) moments), so A and B may be larger than memory. A side given as several files is one
    latent set in shards (e.g. written by several machines): their rows are concatenated, their
    state ids must be disjoint, and the map records every file's SHA-256.

    Examples:

      sjalign fit-map a.safetensors b.safetensors -o a2b.safetensors

      sjalign fit-map a.safetensors b.safetensors -o a2b.safetensors --method procrustes --json

      sjalign fit-map a0.safetensors,a1.safetensors b0.safetensors,b1.safetensors -o a2b.safetensors
    """
    from sjalign.align import METHODS, fitted_on, save_map
    from sjalign.align.mapfile import ENCODER_KEYS
    from sjalign.align.streaming import PRECISIONS
    from sjalign.cli.common import check_choice, check_fraction, parse_latents_list
    from sjalign.errors import SjalignError
    from sjalign.io import check_output, provenance
    from sjalign.lazy_io import BackgroundScan, open_latents_set
    from sjalign.metrics import kappa, numerical_rank
    from sjalign.shards import expand_index_paths

    check_choice("--method", method, METHODS)
    check_choice("--precision", precision, PRECISIONS)
    check_fraction("--test-fraction", test_fraction)
    lam_value = resolve_lambda(method, lam)
    a_paths, b_paths = parse_latents_list(a_arg, "A"), parse_latents_list(b_arg, "B")
    a_paths, b_paths = expand_index_paths(a_paths), expand_index_paths(b_paths)  # an index: its shards
    check_output(output, force, inputs=[*a_paths, *b_paths])
    with warnings.catch_warnings(record=True) as caught:  # shown at the end, and listed in --json
        warnings.simplefilter("always")
        a_set, b_set = open_latents_set(a_paths), open_latents_set(b_paths)
        scan = BackgroundScan([a_set, b_set])  # SHA-256 and NaN/Inf rows of every file: one read, beside the fit
        try:
            amap, split, n_train = _fit(a_set, b_set, method, lam_value, test_fraction, seed, chunk_rows, precision,
                                        json_out)
        except SjalignError:
            scan.result()  # a NaN/Inf row is reported first, as the files' own problem
            raise
        hashes = scan.result()  # raises for a NaN/Inf row the fit did not read (a test row), naming the file
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    for note in notes:
        warnings.warn(note, stacklevel=1)
    config = FitMapConfig(method, lam_value, test_fraction, seed, precision, chunk_rows)

    meta = provenance("fit-map", dataclasses.asdict(config), {"a": a_paths, "b": b_paths},
                      hashes=hashes)
    meta.update({"encoder_a": a_set.metadata.get("encoder", "?"), "encoder_b": b_set.metadata.get("encoder", "?"),
                 "direction": "a->b", "split": split.how, **fitted_on(a_paths, b_paths),
                 "encoder_a_spec": json.dumps({k: a_set.metadata[k] for k in ENCODER_KEYS if k in a_set.metadata})})
    save_map(output, amap, meta, force=force)
    result = {"map": str(output), "method": amap.method, "lambda": amap.lam, "n_train": n_train,
              "n_test": int(split.test.sum()), "d_a": amap.d_a, "d_b": amap.d_b, "direction": "a->b",
              "kappa": kappa(amap.W), "rank": numerical_rank(amap.W), "split": split.describe(),
              "shards_a": len(a_paths), "shards_b": len(b_paths), "precision": amap.info["precision"], "warnings": notes}
    if "precision_auto" in amap.info:
        result["precision_auto"] = amap.info["precision_auto"]
    if "kappa_caa" in amap.info:
        result["kappa_caa"] = amap.info["kappa_caa"]
    if "requested_method" in amap.info:
        result["requested_method"] = amap.info["requested_method"]
    if json_out:
        emit_json(result)
    else:
        fell_back = f" (lstsq requested; {amap.info['fallback']})" if "fallback" in amap.info else ""
        console.print(f"wrote {output}: {amap.method} map {amap.d_a} -> {amap.d_b} (A -> B), λ = {amap.lam:g}, "
                      f"n_train = {n_train}, n_test = {result['n_test']} ({split.how}), "
                      f"κ(W) = {result['kappa']:.3g}, rank {result['rank']} of {min(amap.d_a, amap.d_b)}{fell_back}")
