"""sjalign fit-map A B -o MAP: fit an alignment map from latents A to latents B."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import ForceOpt, JsonOpt, OutOpt, SeedOpt, cli_command, console, emit_json, parse_lambda

MethodOpt = Annotated[str, typer.Option("--method", help="ridge (default), lstsq (λ = 0, pseudoinverse) or procrustes.")]
LambdaOpt = Annotated[str, typer.Option("--lambda", help="Ridge λ ≥ 0 in standardised units, or 'auto' (k-fold CV).")]
TestFracOpt = Annotated[float, typer.Option("--test-fraction", help="Held-out fraction of states, when the files carry no split.")]


@dataclasses.dataclass(frozen=True)
class FitMapConfig:
    """Resolved options of one fit-map run (written into the map's metadata)."""

    method: str
    lam: float | str
    test_fraction: float
    seed: int


def load_pairs(a_path: Path, b_path: Path):
    """Read both latents files and pair them by state id, saying how many ids were dropped."""
    from sjalign.data.pairing import pair_by_state_id
    from sjalign.io import load_latents

    a, b = load_latents(a_path), load_latents(b_path)
    pairs = pair_by_state_id(a, b)
    if pairs.dropped_a or pairs.dropped_b:
        console.print(f"[yellow]note:[/] paired {len(pairs.state_ids)} states by id; dropped "
                      f"{pairs.dropped_a} ids only in {a_path} and {pairs.dropped_b} only in {b_path}")
    return a, b, pairs


@cli_command
def fit_map_command(
    a_path: Annotated[Path, typer.Argument(metavar="A", help="Source latents (.safetensors).")],
    b_path: Annotated[Path, typer.Argument(metavar="B", help="Target latents (.safetensors).")],
    output: OutOpt,
    method: MethodOpt = "ridge",
    lam: LambdaOpt = "1e-3",
    test_fraction: TestFracOpt = 0.2,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Fit W with z_b ≈ W z_a on the train split (by state id) and write a map file.

    Examples:

      sjalign fit-map a.safetensors b.safetensors -o a2b.safetensors

      sjalign fit-map a.safetensors b.safetensors -o a2b.safetensors --method procrustes --json
    """
    from sjalign.align import METHODS, save_map
    from sjalign.errors import SjalignError
    from sjalign.io import check_output, provenance
    from sjalign.metrics import kappa
    from sjalign.protocol import choose_split, fit_on_split

    if method not in METHODS:
        raise SjalignError(f"--method '{method}': use one of {', '.join(METHODS)}")
    lam_value = parse_lambda(lam)
    check_output(output, force)
    a, b, pairs = load_pairs(a_path, b_path)
    split = choose_split(pairs, test_fraction=test_fraction, seed=seed)
    amap = fit_on_split(pairs, split, method=method, lam=lam_value, seed=seed)
    config = FitMapConfig(method, lam_value, test_fraction, seed)
    meta = provenance("fit-map", dataclasses.asdict(config), {"a": a_path, "b": b_path})
    meta.update({"encoder_a": a.metadata.get("encoder", "?"), "encoder_b": b.metadata.get("encoder", "?"),
                 "direction": "a->b", "split": split.how})
    save_map(output, amap, meta, force=force)
    result = {"map": str(output), "method": amap.method, "lambda": amap.lam, "n_train": int(split.train.sum()),
              "n_test": int(split.test.sum()), "d_a": amap.d_a, "d_b": amap.d_b, "direction": "a->b",
              "kappa": kappa(amap.W), "split": split.how}
    if "kappa_caa" in amap.info:
        result["kappa_caa"] = amap.info["kappa_caa"]
    if json_out:
        emit_json(result)
    else:
        console.print(f"wrote {output}: {amap.method} map {amap.d_a} -> {amap.d_b} (A -> B), λ = {amap.lam:g}, "
                      f"n_train = {result['n_train']}, κ(W) = {result['kappa']:.3g}")
