"""sjalign pretrain: train one JEPA encoder on one view of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import DataDirOpt, DeviceOpt, ForceOpt, JsonOpt, SeedOpt, cli_command, console, emit_json


@cli_command
def pretrain_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder (checkpoint, train state, config.json, log.jsonl).", file_okay=False)],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name (see 'sjalign datasets').")] = "fashion-mnist",
    view: Annotated[str, typer.Option("--view", help="View spec the encoder sees, e.g. crop:top, azimuth:30.")] = "identity",
    objective: Annotated[str, typer.Option("--objective", help="Training objective.")] = "ijepa",
    model: Annotated[str, typer.Option("--model", help="ViT preset: vit_tiny (28 px, patch 4) or vit_small (ViT-S/16, 224 px).")] = "vit_tiny",
    epochs: Annotated[int | None, typer.Option("--epochs", help="Passes over the data; 0 writes the randomly initialised model (a control). [default: 10]")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per optimizer step. [default: 128]")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (AdamW, linear warm-up then cosine). [default: 3e-4]")] = None,
    max_states: Annotated[int | None, typer.Option("--max-states", help="Use at most N states (train and test in proportion; only train ones are trained on).")] = None,
    split: Annotated[str, typer.Option("--split", help="States to train on: train (default), test or all.")] = "train",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option("--precision", help="fp32 or bf16 (autocast, CUDA only).")] = "fp32",
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the modules (CUDA; no gain on CPU).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output from its last epoch.")] = False,
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train a JEPA world model on one view; checkpoints every epoch (safetensors), resumable.

    Examples:

      sjalign pretrain --dataset fashion-mnist --view crop:top --epochs 4 --max-states 12000 -o runs/top

      sjalign pretrain --view crop:top --epochs 4 --max-states 12000 -o runs/top --resume   # after an interruption
    """
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sjalign.data import load_dataset, view_images
    from sjalign.errors import SjalignError
    from sjalign.jepa import PretrainConfig, pretrain

    if resume and force:
        raise SjalignError("--resume and --force contradict each other (continue a run, or start it afresh)")
    if output.exists() and not output.is_dir():
        raise SjalignError(f"{output}: exists and is not a folder")
    if resume and not output.is_dir():
        raise SjalignError(f"{output}: no run to resume")
    if not resume and not force and output.is_dir() and any(output.iterdir()):
        raise SjalignError(f"{output}: run folder already holds files (use --resume to continue or --force to restart)")
    given = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)) if v is not None}
    config = PretrainConfig(dataset=dataset, view=view, objective=objective, model=model, max_states=max_states,
                            seed=seed, device=device, precision=precision, compile=compile_model, **given)
    if split not in ("train", "test", "all"):
        raise SjalignError(f"--split '{split}': use train, test or all")
    # the same selection as `sjalign embed --max-states N`, then only its train (or test) states
    data = load_dataset(dataset, data_dir=data_dir, split="all", max_states=max_states)
    keep = np.ones(len(data.state_ids), bool) if split == "all" else data.is_test == (split == "test")
    if not keep.any():
        raise SjalignError(f"no {split} states in the selection (--max-states {max_states}); nothing to train on")
    images = view_images(data.images[keep], data.state_ids[keep], view)
    if not json_out:
        console.print(f"pretrain {objective} {model} on {dataset} view {view}: {len(images)} states, "
                      f"{config.epochs} epoch(s) -> {output}")
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.0f} img/s"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=json_out) as progress:
        task = progress.add_task("steps", total=None, loss=float("nan"), ips=0.0)

        def on_step(step: int, total: int, loss: float, img_s: float) -> None:
            progress.update(task, completed=step, total=total, loss=loss, ips=img_s)

        def on_epoch(record: dict) -> None:
            progress.console.print(f"epoch {record['epoch']}: loss {record['loss']:.4f}, "
                                   f"{record['img_per_s']:.0f} img/s, {record['seconds']:.1f} s")

        summary = pretrain(config, images, output, resume=resume, overwrite=force, on_step=on_step,
                           on_epoch=on_epoch)
    if json_out:
        emit_json(summary)
    else:
        console.print(f"wrote {summary['checkpoint']} ({summary['num_params']:,} encoder parameters, "
                      f"{summary['seconds']:.0f} s on {summary['device']})")
