"""sjalign embed: run an encoder over a dataset view and write a latents file."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import DataDirOpt, DeviceOpt, ForceOpt, JsonOpt, OutOpt, cli_command, console, emit_json


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """Resolved options of one embed run (written into the latents' metadata)."""

    encoder: str
    dataset: str
    view: str
    split: str
    max_states: int | None
    batch_size: int
    pooling: str
    layer: int | None
    device: str
    dtype: str


@cli_command
def embed_command(
    encoder: Annotated[str, typer.Option("--encoder", help="Encoder spec: pixels, jepa:RUN_DIR, or PREFIX:ARG of a plugin.")],
    output: OutOpt,
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name (see 'sjalign datasets').")] = "fashion-mnist",
    view: Annotated[str, typer.Option("--view", help="View spec, e.g. crop:top, azimuth:30, aug-a, crop:top+pixel-shuffle.")] = "identity",
    split: Annotated[str, typer.Option("--split", help="train, test or all.")] = "all",
    max_states: Annotated[int | None, typer.Option("--max-states", help="Keep at most N states (train and test in proportion).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 256,
    pooling: Annotated[str, typer.Option("--pooling", help="mean, cls or tokens (what the encoder supports).")] = "mean",
    layer: Annotated[int | None, typer.Option("--layer", help="Hidden state after block N, 1..depth (default: the final output).")] = None,
    device: DeviceOpt = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="fp32 or bf16 (autocast on CUDA).")] = "fp32",
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Embed every state of a dataset view with an encoder -> latents file (state ids, labels, split).

    Examples:

      sjalign embed --encoder jepa:runs/top --dataset fashion-mnist --view crop:top -o top.safetensors

      sjalign embed --encoder pixels --view crop:bottom --max-states 5000 -o pix_bottom.safetensors
    """
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sjalign.data import load_dataset, view_images
    from sjalign.embed import embed_observations
    from sjalign.encoders import EncoderOptions, create_encoder
    from sjalign.errors import SjalignError
    from sjalign.io import Latents, check_output, provenance, save_latents

    if batch_size < 1:
        raise SjalignError(f"--batch-size must be at least 1, got {batch_size}")
    if dtype not in ("fp32", "bf16"):
        raise SjalignError(f"--dtype '{dtype}': use fp32 or bf16")
    check_output(output, force)
    config = EmbedConfig(encoder, dataset, view, split, max_states, batch_size, pooling, layer, device, dtype)
    enc = create_encoder(encoder, EncoderOptions(pooling=pooling, layer=layer, device=device, dtype=dtype))
    data = load_dataset(dataset, data_dir=data_dir, split=split, max_states=max_states)
    obs = view_images(data.images, data.state_ids, view)
    start = time.perf_counter()
    with Progress(TextColumn(f"embed {encoder}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=json_out) as progress:
        task = progress.add_task("embed", total=len(obs))
        z = embed_observations(enc, obs, batch_size=batch_size,
                               on_batch=lambda done: progress.update(task, completed=done))
    seconds = time.perf_counter() - start
    desc = enc.describe()
    lat = Latents(z, data.state_ids, data.labels, data.is_test.astype(np.uint8))
    meta = provenance("embed", dataclasses.asdict(config))
    meta.update({"encoder": encoder, "dataset": dataset, "view": view, "layer": str(desc.get("layer", "final")),
                 "pooling": str(desc.get("pooling", pooling)),
                 "encoder_config": json.dumps(desc.get("config", {}), default=str),
                 "subset": json.dumps({"split": split, "max_states": max_states})})
    save_latents(output, lat, meta, force=force)
    result = {"output": str(output), "n": int(z.shape[0]), "d": int(z.shape[1]), "encoder": encoder,
              "dataset": dataset, "view": view, "seconds": seconds, "images_per_s": len(z) / max(seconds, 1e-9)}
    if json_out:
        emit_json(result)
    else:
        console.print(f"wrote {output}: {result['n']} latents of dimension {result['d']} from {encoder} on "
                      f"{dataset} view {view} ({result['images_per_s']:.0f} images/s)")
