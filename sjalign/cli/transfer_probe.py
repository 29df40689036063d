"""sjalign transfer-probe A B --map MAP: move a linear probe from A to B with zero gradient steps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import ForceOpt, JsonOpt, SeedOpt, StrictOpt, cli_command, console, emit_json, error_text, output_path
from sjalign.cli.fit_map import load_pairs


@cli_command
def transfer_probe_command(
    a_path: Annotated[Path, typer.Argument(metavar="A", help="Source latents with labels (the probe is trained here).")],
    b_path: Annotated[Path, typer.Argument(metavar="B", help="Target latents (the probe is moved here).")],
    map_path: Annotated[Path, typer.Option("--map", help="Map file: B -> A is used as is, A -> B through its pseudoinverse.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the transferred head (probe file).", parser=output_path)] = None,
    reverse: Annotated[str, typer.Option("--reverse", help="For an A -> B map: 'fit' a B -> A map on the same train split "
                                                         "(same method and λ), or use 'pinv' (W⁺).")] = "fit",
    seed: SeedOpt = 0,
    strict: StrictOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a logistic-regression probe on A, compose it with the map into a head on raw B latents, score it.

    Example:

      sjalign transfer-probe a.safetensors b.safetensors --map a2b.safetensors --json
    """
    import numpy as np

    from sjalign.align import check_pair, fit_map, load_map, map_direction, pseudo_inverse
    from sjalign.io import PROBE_FORMAT, check_output, provenance, write_safetensors
    from sjalign.protocol import choose_split
    from sjalign.errors import SjalignError

    if reverse not in ("fit", "pinv"):
        raise SjalignError(f"--reverse '{reverse}': use fit or pinv")
    if output is not None:
        check_output(output, force, inputs=[a_path, b_path, map_path])
    amap, meta = load_map(map_path)
    a, b, pairs = load_pairs(a_path, b_path)
    direction = map_direction(meta, map_path, a_path, b_path, a.dim, b.dim, amap.W.shape)
    sides = {"a": [a_path], "b": [b_path]} if direction == "a->b" else {"a": [b_path], "b": [a_path]}
    check_pair(meta, map_path, sides, strict=strict)
    try:
        split = choose_split(pairs, train_state_ids=amap.train_state_ids)
    except SjalignError as exc:
        raise SjalignError(f"{map_path}: {error_text(exc)}") from None
    from sjalign.probe import transfer_probe

    if direction == "b->a":
        m, how = amap, "the given B -> A map"
    elif reverse == "pinv":
        m, how = pseudo_inverse(amap), "W⁺ of the A -> B map"
    else:
        m = fit_map(pairs.y[split.train], pairs.x[split.train], pairs.state_ids[split.train],
                    **amap.refit_options())
        how = f"a B -> A {m.method} map fitted on the map's train split"
    others = {"pinv": pseudo_inverse(amap)} if direction == "a->b" and reverse == "fit" else None
    result = transfer_probe(pairs, split.train, m, seed=seed, other_maps=others)
    head = result.pop("head")
    result.update({"map": str(map_path), "map_direction": direction, "reverse_map": how})
    if output is not None:
        meta_out = provenance("transfer-probe", {"seed": seed}, {"a": a_path, "b": b_path, "map": map_path})
        meta_out.update({"sjalign.format": PROBE_FORMAT, "latent_source": str(b_path),
                         "encoder": b.metadata.get("encoder", "?"), "trained_on": str(a_path)})
        write_safetensors(output, {"weight": head.weight, "bias": head.bias,
                                   "classes": head.classes.astype(np.int64)}, meta_out, force=force)
        result["probe"] = str(output)
    if json_out:
        emit_json(result)
        return
    from rich.table import Table

    table = Table(title=f"probe trained on {a_path}, moved to {b_path} ({result['reverse_map']})")
    table.add_column("probe")
    table.add_column("test accuracy", justify="right")
    table.add_row("source (A-trained on A)", f"{result['source_acc']:.4f}")
    table.add_row("transferred (A-trained, on B through the map)", f"{result['transferred_acc']:.4f}")
    table.add_row("target-trained on B (upper bound)", f"{result['target_acc']:.4f}")
    if "transferred_acc_pinv" in result:
        table.add_row("transferred through W⁺ of the A -> B map", f"{result['transferred_acc_pinv']:.4f}")
    table.add_row("A-probe on B without the map", "—" if result["a_probe_acc"] is None else f"{result['a_probe_acc']:.4f}")
    table.add_row("chance (majority class)", f"{result['chance']:.4f}")
    console.print(table)
    console.print(f"target-side gradient steps: 0; n_train = {result['n_train']}, n_test = {result['n_test']}")
