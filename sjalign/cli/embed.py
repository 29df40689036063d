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
    shard: Annotated[str | None, typer.Option("--shard", help="Embed only shard I of N (I from 0; e.g. 0/4) of the selected states into OUT's shard file; the last shard to finish writes OUT.index.json, which every command reads as one latents set. Under torchrun: RANK/WORLD_SIZE.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted embed of the same command: keep its saved parts, embed only the rest.")] = False,
    part_rows: Annotated[int, typer.Option("--part-rows", help="Rows per saved part (what --resume keeps); rounded up to a multiple of --batch-size.")] = 8192,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Embed every state of a dataset view with an encoder -> latents file (state ids, labels, split).

    Examples:

      sjalign embed --encoder jepa:runs/top --dataset fashion-mnist --view crop:top -o top.safetensors

      sjalign embed --encoder pixels --view crop:bottom --max-states 5000 -o pix_bottom.safetensors

      sjalign embed --encoder jepa:runs/az0 --dataset smallnorb --data-dir norb/ --view azimuth=0 -o az0.safetensors

      sjalign embed --encoder pixels --dataset photos/ --view aug-b --image-size 64 --num-workers 2 -o b.safetensors

      torchrun --nproc-per-node 4 -m sjalign embed --encoder jepa:runs/top -o top.safetensors   # -> top.safetensors.index.json

      sjalign embed --encoder jepa:runs/top --shard 2/4 -o top.safetensors --resume   # a scheduler's task 2 of 4
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
    from sjalign.io import Latents, check_output, concat_latents, load_latents, provenance, save_latents
    from sjalign.lazy_io import open_latents
    from sjalign.shards import (ShardLock, embed_in_parts, other_shard_counts, parse_shard, remove_parts, shard_path,
                                shard_rows, torchrun_shard, write_index_if_complete)
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
    if part_rows < 1:
        raise SjalignError(f"--part-rows must be at least 1, got {part_rows}")
    which = parse_shard(shard) if shard is not None else torchrun_shard()
    target = shard_path(output, *which) if which else output
    if resume and which:
        others = other_shard_counts(output, which[1])
        if others:
            raise SjalignError(f"{others[0][0]}: written as one of {others[0][1]} shards, but this run has "
                               f"{which[1]}; resume with the same number of shards")
    done_before = resume and target.is_file()  # this shard finished before the interruption
    if not done_before:
        check_output(target, force, inputs=_input_paths(encoder, dataset, data_dir))
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
    lo, hi = shard_rows(n, *which) if which else (0, n)
    if lo == hi:
        raise SjalignError(f"--shard {which[0]}/{which[1]}: no states fall in this shard ({n} selected); "
                           "use fewer shards")
    split_all = None if is_test is None else is_test.astype(np.uint8)
    desc = enc.describe()
    meta = provenance("embed", dataclasses.asdict(config))
    meta.update({"encoder": encoder, "dataset": dataset, "view": view_desc, "layer": str(desc.get("layer", "final")),
                 "pooling": str(desc.get("pooling", pooling)),
                 "encoder_config": json.dumps(desc.get("config", {}), default=str),
                 "subset": json.dumps(subset.to_dict())})
    if shape is not None:
        meta["image_shape"] = json.dumps(list(shape))
    if which:
        meta.update({"sjalign.shard": f"{which[0]}/{which[1]}", "sjalign.shard_count": str(which[1]),
                     "sjalign.shard_rows": f"{lo}:{hi}", "sjalign.selection_n": str(n)})

    def embed_range(a: int, b: int) -> Latents:  # rows [a, b) of the selection
        def on_batch(done: int) -> None:
            progress.update(task, completed=a - lo + done)

        if kind == "text":
            z = embed_observations(enc, items[a:b], batch_size=batch_size, all_layers=layer_opt == "all",
                                   on_batch=on_batch)
        else:
            z = embed_dataset(enc, ds.subset(np.arange(a, b)), batch_size=batch_size, num_workers=num_workers,
                              all_layers=layer_opt == "all", on_batch=on_batch)
        layers = None
        if layer_opt == "all":
            z, per_layer = z
            layers = {str(i + 1): arr for i, arr in enumerate(per_layer)}
        return Latents(z, state_ids[a:b], None if labels is None else labels[a:b],
                       None if split_all is None else split_all[a:b], layers=layers)

    def load_part(path: Path, a: int) -> Latents:  # a: the part's first row
        part = load_latents(path)
        if not np.array_equal(part.state_ids, state_ids[a:a + len(part.state_ids)]):
            raise SjalignError(f"{path}: its states are not this embed's rows {a}..; rerun with --force")
        return part

    step = -(-part_rows // batch_size) * batch_size  # whole batches: a resumed run forms the same batches
    parts_dir = target.with_name(target.name + ".parts")
    job = {**{k: v for k, v in dataclasses.asdict(config).items() if k != "num_workers"},
           "rows": [lo, hi], "part_rows": step, "n": n,
           "shard": list(which) if which else None}
    start = time.perf_counter()
    kept = 0
    if not done_before:
        lock = ShardLock(target.with_name(target.name + ".lock")).acquire()
        try:
            if force:
                remove_parts(parts_dir)
            with Progress(TextColumn(f"embed {encoder}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=console, transient=True, disable=json_out) as progress:
                task = progress.add_task("embed", total=hi - lo)
                parts, kept = embed_in_parts(
                    embed_range, lo, hi, part_rows=step, parts_dir=parts_dir, job=job, resume=resume,
                    save_part=lambda path, part: save_latents(path, part, meta), load_part=load_part,
                    on_rows=lambda rows: progress.update(task, completed=rows))
            lat = concat_latents(parts, metadata={})
            if lat.layers:
                meta["layers"] = json.dumps(list(lat.layers))
            save_latents(target, lat, meta, force=force)
            remove_parts(parts_dir)
        finally:
            lock.release()
    seconds = time.perf_counter() - start
    index = write_index_if_complete(output, which[1]) if which else None
    if done_before:
        lazy = open_latents(target)
        n_rows, dim = lazy.n, lazy.dim
    else:
        n_rows, dim = lat.latents.shape
    embedded = 0 if done_before else hi - lo - min(kept * step, hi - lo)
    result = {"output": str(target), "n": int(n_rows), "d": int(dim), "encoder": encoder,
              "dataset": dataset, "view": view_desc, "subset": subset.to_dict(),
              "image_shape": None if shape is None else list(shape), "seconds": seconds,
              "items_per_s": embedded / max(seconds, 1e-9), "embedded": embedded,
              "shard": list(which) if which else None, "index": None if index is None else str(index)}
    if json_out:
        emit_json(result)
    else:
        what = "already complete" if done_before else f"{result['n']} latents of dimension {result['d']}"
        console.print(f"wrote {target}: {what} from {encoder} on {dataset} view {view_desc}"
                      + (f" ({result['items_per_s']:.0f} items/s)" if embedded else "")
                      + (f"; all {which[1]} shards done: {index}" if index else
                         (f"; shard {which[0]} of {which[1]} (the index is written when all are done)" if which
                          else "")))
