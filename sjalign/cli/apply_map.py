"""sjalign apply-map MAP A -o OUT: push latents through a map (streamed, shards allowed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import ForceOpt, JsonOpt, OutOpt, StrictOpt, cli_command, console, emit_json


@cli_command
def apply_map_command(
    map_path: Annotated[Path, typer.Argument(metavar="MAP", help="Map file from fit-map.")],
    a_arg: Annotated[str, typer.Argument(
        metavar="A", help="Latents in the map's source space, or comma-separated shards of one latent set.")],
    output: OutOpt,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, help="Rows mapped per chunk.")] = 8192,
    strict: StrictOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write b̂ = ((a − a_mean)/a_std) Wᵀ · b_std + b_mean for every row of A, in B's raw units.

    Rows are read, mapped and written chunk by chunk, so A may be larger than memory. Several
    A files (shards) give one output file with their rows concatenated in the order given.
    A comes from the map's A encoder (new states are fine); latents of another encoder, layer
    or pooling than the map recorded get a warning (--strict: an error).

    Examples:

      sjalign apply-map a2b.safetensors a.safetensors -o a_in_b.safetensors

      sjalign apply-map a2b.safetensors a0.safetensors,a1.safetensors -o a_in_b.safetensors
    """
    import numpy as np

    from sjalign.align import check_encoder, check_source, load_map
    from sjalign.cli.common import parse_latents_list
    from sjalign.shards import expand_index_paths
    from sjalign.errors import ShapeError, SjalignError
    from sjalign.io import check_output, provenance
    from sjalign.lazy_io import open_latents_set, quick_finite, write_latents_stream

    a_paths = expand_index_paths(parse_latents_list(a_arg, "A"))  # an index: its shards
    check_output(output, force, inputs=[map_path, *a_paths])
    amap, meta = load_map(map_path)
    for p in a_paths:
        check_source(meta, map_path, p)
    a_set = open_latents_set(a_paths)
    for shard in a_set.shards:
        check_encoder(meta, map_path, shard.path, shard.metadata, strict=strict)
    if a_set.dim != amap.d_a:
        raise ShapeError(f"{map_path}: map expects source latents of dimension {amap.d_a}, "
                         f"but {a_set.name} has dimension {a_set.dim}")

    def mapped_blocks():
        for shard in a_set.shards:
            for start, block in shard.iter_rows(chunk_rows):
                if not quick_finite(block) and not np.isfinite(block).all():
                    shard.check_finite()  # counts the bad rows and raises, naming the file
                with np.errstate(over="ignore", invalid="ignore"):
                    mapped = amap.apply(block)
                if not quick_finite(mapped) and not np.isfinite(mapped).all():
                    raise SjalignError(f"{shard.name}: mapping rows {start}-{start + len(block) - 1} through "
                                       f"{map_path} overflows float32")
                yield mapped

    extra = provenance("apply-map", {"chunk_rows": chunk_rows}, {"map": map_path, "a": a_paths})
    extra.update({"encoder": f"map({a_set.metadata.get('encoder', '?')} -> {meta.get('encoder_b', '?')})",
                  "layer": a_set.metadata.get("layer", "?")})
    write_latents_stream(output, mapped_blocks(), n=a_set.n, dim=amap.d_b, state_ids=a_set.state_ids,
                         labels=a_set.labels, split=a_set.split, metadata={**a_set.metadata, **extra}, force=force)
    result = {"output": str(output), "n": a_set.n, "d": amap.d_b, "shards": len(a_paths)}
    if json_out:
        emit_json(result)
    else:
        console.print(f"wrote {output}: {result['n']} latents of dimension {amap.d_b}")
