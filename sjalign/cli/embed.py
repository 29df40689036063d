"""sjalign embed: run an encoder over a dataset view and write a latents file."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import (
    ClassesOpt,
    DataDirOpt,
    DeviceOpt,
    ForceOpt,
    ImageSizeOpt,
    JsonOpt,
    NumWorkersOpt,
    OutOpt,
    cli_command,
    console,
    emit_json,
)


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
    classes: str | None = None
    image_size: int | None = None
    num_workers: int = 0
    seed: int | None = None


def parse_layer(text: str | None) -> int | str | None:
    """--layer: None, 'all' or an integer."""
    from sjalign.errors import SjalignError

    if text is None or text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise SjalignError(f"--layer '{text}': expected a block number or 'all'") from None


def _input_paths(encoder: str, dataset: str, data_dir: Path | None) -> list[Path]:
    """The files and folders an embed run reads: the encoder's (``jepa:RUN``, ``timm:NAME@WEIGHTS``,
    ``hf:DIR``), the dataset's (a manifest, an image folder, a text file) and ``--data-dir``."""
    candidates = [dataset, *encoder.split(":", 1)[1:], *encoder.split("@", 1)[1:]]
    found = [Path(c) for c in candidates if c and Path(c).exists()]
    return found + ([data_dir] if data_dir is not None else [])


@cli_command
def embed_command(
    encoder: Annotated[str, typer.Option("--encoder", help="Encoder spec: pixels, jepa:RUN_DIR, timm:NAME@WEIGHTS, hf:DIR, or PREFIX:ARG of a plugin (see 'sjalign encoders').")],
    output: OutOpt,
    dataset: Annotated[str, typer.Option("--dataset", help="fashion-mnist, smallnorb, a manifest (.csv/.jsonl), an image folder, or a text file (.txt/.csv); see 'sjalign datasets'.")] = "fashion-mnist",
    view: Annotated[str, typer.Option("--view", help="View spec: the dataset's image selector (azimuth=8,camera=left; a manifest's view name) then transforms joined by +, e.g. crop:top, aug-a, azimuth=0+pixel-shuffle.")] = "identity",
    split: Annotated[str, typer.Option("--split", help="train, test or all.")] = "all",
    max_states: Annotated[int | None, typer.Option("--max-states", help="Keep at most N states (train and test in proportion).")] = None,
    classes: ClassesOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 256,
    num_workers: NumWorkersOpt = 0,
    image_size: ImageSizeOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of pixel-/patch-shuffle views without an explicit :SEED. [default: the jepa run's seed, else 0]")] = None,
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

      sjalign embed --encoder jepa:runs/az0 --dataset smallnorb --data-dir norb/ --view azimuth=0 -o az0.safetensors

      sjalign embed --encoder pixels --dataset photos/ --view aug-b --image-size 64 --num-workers 2 -o b.safetensors
    """
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sjalign.cli.common import check_choice, check_data_dir, check_device, check_image_size
    from sjalign.data import dataset_kind, load_text, open_dataset
    from sjalign.data.selection import Subset, parse_classes
    from sjalign.embed import embed_dataset, embed_observations
    from sjalign.encoders import EncoderOptions, create_encoder
    from sjalign.encoders.base import POOLINGS
    from sjalign.errors import SjalignError
    from sjalign.io import Latents, check_output, provenance, save_latents
    from sjalign.jepa.config import PretrainConfig

    if batch_size < 1:
        raise SjalignError(f"--batch-size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise SjalignError(f"--num-workers must be >= 0, got {num_workers}")
    if dtype not in ("fp32", "bf16"):
        raise SjalignError(f"--dtype '{dtype}': use fp32 or bf16")
    layer_opt = parse_layer(layer)
    check_choice("--pooling", pooling, POOLINGS)
    check_device(device)
    check_image_size(image_size)
    check_data_dir(data_dir)
    check_output(output, force, inputs=_input_paths(encoder, dataset, data_dir))
    subset = Subset(split, parse_classes(classes), max_states)
    kind = dataset_kind(dataset)
    enc = create_encoder(encoder, EncoderOptions(pooling=pooling, layer=layer_opt, device=device, dtype=dtype,
                                                 image_size=image_size))
    if layer_opt == "all" and not hasattr(enc, "embed_batch_layers"):
        raise SjalignError(f"encoder {encoder} does not support --layer all")
    modality = "text" if kind == "text" else "image"
    if modality != getattr(enc, "modality", "image"):
        raise SjalignError(f"encoder {encoder} embeds {getattr(enc, 'modality', 'image')} but dataset {dataset} "
                           f"holds {modality}")
    run = getattr(enc, "config", None)
    run = run if isinstance(run, PretrainConfig) else None  # a jepa run: its image size and seed are the defaults
    view_seed = seed if seed is not None else (run.seed if run is not None else 0)
    size = image_size if image_size is not None else (run.vit.img_size if run is not None else None)
    if kind == "text":
        obs = load_text(dataset, view=view, subset=subset)
        items, n = obs.items, len(obs.items)
        state_ids, labels, is_test, view_desc, shape = obs.state_ids, obs.labels, obs.is_test, view, None
    else:
        ds = open_dataset(dataset, view=view, data_dir=data_dir, subset=subset, image_size=size, seed=view_seed)
        n, state_ids, labels, is_test, view_desc, shape = len(ds), ds.state_ids, ds.labels, ds.is_test, ds.view, ds.shape
        if run is not None and shape != (run.vit.in_chans, run.vit.img_size, run.vit.img_size):
            raise SjalignError(f"{encoder}: the model takes {run.vit.in_chans}x{run.vit.img_size}x{run.vit.img_size} "
                               f"images, {dataset} view {view} gives {shape[0]}x{shape[1]}x{shape[2]} "
                               "(match --image-size to the run, or pretrain on this data)")
    config = EmbedConfig(encoder, dataset, view_desc, split, max_states, batch_size, pooling, layer, device, dtype,
                         classes, size, num_workers, view_seed)
    start = time.perf_counter()
    with Progress(TextColumn(f"embed {encoder}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=json_out) as progress:
        task = progress.add_task("embed", total=n)

        def on_batch(done: int) -> None:
            progress.update(task, completed=done)

        if kind == "text":
            z = embed_observations(enc, items, batch_size=batch_size, all_layers=layer_opt == "all", on_batch=on_batch)
        else:
            z = embed_dataset(enc, ds, batch_size=batch_size, num_workers=num_workers,
                              all_layers=layer_opt == "all", on_batch=on_batch)
    seconds = time.perf_counter() - start
    layers = None
    if layer_opt == "all":
        z, per_layer = z
        layers = {str(i + 1): arr for i, arr in enumerate(per_layer)}
    desc = enc.describe()
    split_t = None if is_test is None else is_test.astype(np.uint8)
    lat = Latents(z, state_ids, labels, split_t, layers=layers)
    meta = provenance("embed", dataclasses.asdict(config))
    meta.update({"encoder": encoder, "dataset": dataset, "view": view_desc, "layer": str(desc.get("layer", "final")),
                 "pooling": str(desc.get("pooling", pooling)),
                 "encoder_config": json.dumps(desc.get("config", {}), default=str),
                 "subset": json.dumps(subset.to_dict())})
    if shape is not None:
        meta["image_shape"] = json.dumps(list(shape))
    if layers:
        meta["layers"] = json.dumps(list(layers))
    save_latents(output, lat, meta, force=force)
    result = {"output": str(output), "n": int(z.shape[0]), "d": int(z.shape[1]), "encoder": encoder,
              "dataset": dataset, "view": view_desc, "subset": subset.to_dict(),
              "image_shape": None if shape is None else list(shape), "seconds": seconds,
              "items_per_s": len(z) / max(seconds, 1e-9)}
    if json_out:
        emit_json(result)
    else:
        console.print(f"wrote {output}: {result['n']} latents of dimension {result['d']} from {encoder} on "
                      f"{dataset} view {view_desc} ({result['items_per_s']:.0f} items/s)")
