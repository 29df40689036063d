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
    layer: str | None
    device: str
    dtype: str


def parse_layer(text: str | None) -> int | str | None:
    """--layer: None, 'all' or an integer."""
    from sjalign.errors import SjalignError

    if text is None or text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise SjalignError(f"--layer '{text}': expected a block number or 'all'") from None


@cli_command
def embed_command(
    encoder: Annotated[str, typer.Option("--encoder", help="Encoder spec: pixels, jepa:RUN_DIR, timm:NAME@WEIGHTS, hf:DIR, or PREFIX:ARG of a plugin (see 'sjalign encoders').")],
    output: OutOpt,
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name (see 'sjalign datasets') or a text file (.txt, .csv).")] = "fashion-mnist",
    view: Annotated[str, typer.Option("--view", help="View spec, e.g. crop:top, azimuth:30, aug-a, crop:top+pixel-shuffle.")] = "identity",
    split: Annotated[str, typer.Option("--split", help="train, test or all.")] = "all",
    max_states: Annotated[int | None, typer.Option("--max-states", help="Keep at most N states (train and test in proportion).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 256,
    pooling: Annotated[str, typer.Option("--pooling", help="mean, cls or tokens (what the encoder supports).")] = "mean",
    layer: Annotated[str | None, typer.Option("--layer", help="Hidden state after block N, or 'all' (one layer.N tensor per layer; 'latents' then holds the last one); default: the final output.")] = None,
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

    from sjalign.data import load_observations
    from sjalign.embed import embed_observations
    from sjalign.encoders import EncoderOptions, create_encoder
    from sjalign.errors import SjalignError
    from sjalign.io import Latents, check_output, provenance, save_latents

    if batch_size < 1:
        raise SjalignError(f"--batch-size must be at least 1, got {batch_size}")
    if dtype not in ("fp32", "bf16"):
        raise SjalignError(f"--dtype '{dtype}': use fp32 or bf16")
    layer_opt = parse_layer(layer)
    check_output(output, force)
    config = EmbedConfig(encoder, dataset, view, split, max_states, batch_size, pooling, layer, device, dtype)
    enc = create_encoder(encoder, EncoderOptions(pooling=pooling, layer=layer_opt, device=device, dtype=dtype))
    if layer_opt == "all" and not hasattr(enc, "embed_batch_layers"):
        raise SjalignError(f"encoder {encoder} does not support --layer all")
    obs = load_observations(dataset, view=view, data_dir=data_dir, split=split, max_states=max_states)
    if obs.modality != getattr(enc, "modality", "image"):
        raise SjalignError(f"encoder {encoder} embeds {getattr(enc, 'modality', 'image')} but dataset {dataset} "
                           f"holds {obs.modality}")
    start = time.perf_counter()
    with Progress(TextColumn(f"embed {encoder}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=json_out) as progress:
        task = progress.add_task("embed", total=len(obs.items))
        z = embed_observations(enc, obs.items, batch_size=batch_size, all_layers=layer_opt == "all",
                               on_batch=lambda done: progress.update(task, completed=done))
    seconds = time.perf_counter() - start
    layers = None
    if layer_opt == "all":
        z, per_layer = z
        layers = {str(i + 1): arr for i, arr in enumerate(per_layer)}
    desc = enc.describe()
    split_t = None if obs.is_test is None else obs.is_test.astype(np.uint8)
    lat = Latents(z, obs.state_ids, obs.labels, split_t, layers=layers)
    meta = provenance("embed", dataclasses.asdict(config))
    meta.update({"encoder": encoder, "dataset": dataset, "view": view, "layer": str(desc.get("layer", "final")),
                 "pooling": str(desc.get("pooling", pooling)),
                 "encoder_config": json.dumps(desc.get("config", {}), default=str),
                 "subset": json.dumps({"split": split, "max_states": max_states})})
    if layers:
        meta["layers"] = json.dumps(list(layers))
    save_latents(output, lat, meta, force=force)
    result = {"output": str(output), "n": int(z.shape[0]), "d": int(z.shape[1]), "encoder": encoder,
              "dataset": dataset, "view": view, "seconds": seconds, "items_per_s": len(z) / max(seconds, 1e-9)}
    if json_out:
        emit_json(result)
    else:
        console.print(f"wrote {output}: {result['n']} latents of dimension {result['d']} from {encoder} on "
                      f"{dataset} view {view} ({result['items_per_s']:.0f} items/s)")
