"""sjalign apply-map MAP A -o OUT: push latents through a map."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import ForceOpt, JsonOpt, OutOpt, cli_command, console, emit_json


@cli_command
def apply_map_command(
    map_path: Annotated[Path, typer.Argument(metavar="MAP", help="Map file from fit-map.")],
    a_path: Annotated[Path, typer.Argument(metavar="A", help="Latents in the map's source space.")],
    output: OutOpt,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write b̂ = ((a − a_mean)/a_std) Wᵀ · b_std + b_mean for every row of A, in B's raw units.

    Example:

      sjalign apply-map a2b.safetensors a.safetensors -o a_in_b.safetensors
    """
    from sjalign.align import check_source, load_map
    from sjalign.errors import ShapeError
    from sjalign.io import Latents, check_output, load_latents, provenance, save_latents

    check_output(output, force)
    amap, meta = load_map(map_path)
    check_source(meta, map_path, a_path)
    a = load_latents(a_path)
    if a.dim != amap.d_a:
        raise ShapeError(f"{map_path}: map expects source latents of dimension {amap.d_a}, "
                         f"but {a_path} has dimension {a.dim}")
    mapped = Latents(amap.apply(a.latents), a.state_ids, a.labels, a.split, dict(a.metadata))
    extra = provenance("apply-map", {}, {"map": map_path, "a": a_path})
    extra.update({"encoder": f"map({a.metadata.get('encoder', '?')} -> {meta.get('encoder_b', '?')})",
                  "layer": a.metadata.get("layer", "?")})
    save_latents(output, mapped, extra, force=force)
    result = {"output": str(output), "n": len(a.state_ids), "d": amap.d_b}
    if json_out:
        emit_json(result)
    else:
        console.print(f"wrote {output}: {result['n']} latents of dimension {amap.d_b}")
