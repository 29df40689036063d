"""The pretraining loop: one trainer for every objective, CPU or CUDA.

Each step reads as I-JEPA's: 1. forward (loss of the objective on a masked batch),
2. backward + AdamW step (learning rate from a per-step warm-up + cosine schedule),
3. the objective's ``after_step`` (EMA update of the target encoder). After every epoch
the run directory gets an atomic checkpoint, the resume state and one log line.

Example::

    from sjalign.data import load_dataset, view_images
    from sjalign.jepa import PretrainConfig, pretrain

    cfg = PretrainConfig(view="crop:top", epochs=5, max_states=10000)
    ds = load_dataset(cfg.dataset, max_states=cfg.max_states)
    summary = pretrain(cfg, view_images(ds.images, ds.state_ids, cfg.view), Path("runs/top"))
    # later, after an interruption: pretrain(cfg, images, Path("runs/top"), resume=True)
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sjalign import __version__
from sjalign.device import autocast, resolve_device
from sjalign.errors import SjalignError
from sjalign.jepa import checkpoint as ckpt
from sjalign.jepa.config import PretrainConfig
from sjalign.jepa.objectives import build_objective

StepCallback = Callable[[int, int, float, float], None]
EpochCallback = Callable[[dict[str, Any]], None]

__all__ = ["PretrainConfig", "pretrain", "lr_at"]


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    Linear warm-up lr·(step + 1)/warmup_steps for step < warmup_steps, then cosine decay
    min_lr + (lr − min_lr)·(1 + cos(π t))/2 with t = (step − warmup_steps)/(total_steps − warmup_steps).
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases and norm scales (1-D) get none (I-JEPA)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _check_resumable(path: Path, saved: PretrainConfig, config: PretrainConfig) -> None:
    """Refuse to resume a checkpoint made for another objective, architecture or data."""
    fields = [k for k in ("objective", "vit", "pred_dim", "pred_depth")
              if saved.architecture()[k] != config.architecture()[k]]
    fields += [k for k in ("dataset", "view") if getattr(saved, k) != getattr(config, k)]
    if fields:
        diffs = ", ".join(f"{k}: checkpoint {getattr(saved, k)!r} vs config {getattr(config, k)!r}" for k in fields)
        raise SjalignError(f"{path}: cannot resume, the config differs ({diffs})")


def pretrain(config: PretrainConfig, images: torch.Tensor, out_dir: str | Path, *, resume: bool = False,
             overwrite: bool = False, on_step: StepCallback | None = None,
             on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Train one encoder with ``config.objective`` and checkpoint it every epoch.

    Seeds torch's global RNG with ``config.seed`` (model initialisation) and draws
    shuffling and masks from a CPU ``torch.Generator`` seeded with it, so a run is
    reproducible on one machine and a resumed run continues the same stream.

    Args:
        config: the run's config (written into every output).
        images: (n, C, H, W) float32 observations in [0, 1] (one view of the dataset).
        out_dir: run directory (created if needed).
        resume: continue from ``out_dir``'s checkpoint and ``train_state.safetensors``.
        overwrite: start afresh (deleting its checkpoint, train state and log) even if
            ``out_dir`` already holds a run.
        on_step: called after every optimizer step with
            (step, total_steps, loss, img_per_s); step counts from 1.
        on_epoch: called after each epoch's checkpoint with the epoch's log record
            ``{"epoch", "loss", "img_per_s", "seconds", "lr", "momentum", "step"}``.

    Returns:
        Summary ``{"out_dir", "checkpoint", "epochs", "steps", "loss", "first_loss",
        "seconds", "img_per_s", "device", "num_params", "resumed_from"}``.

    Raises:
        SjalignError: empty dataset, images that do not fit the architecture, unknown
            objective, an existing run without ``resume``/``overwrite``, or a checkpoint
            that cannot be resumed with this config.
    """
    out_dir = Path(out_dir)
    vit = config.vit
    if images.ndim != 4 or images.shape[0] == 0:
        raise SjalignError(f"pretrain: no images to train on (got a tensor of shape {tuple(images.shape)})")
    if tuple(images.shape[1:]) != (vit.in_chans, vit.img_size, vit.img_size):
        raise SjalignError(f"pretrain: images of shape {tuple(images.shape[1:])} do not fit model '{config.model}' "
                           f"(expects {(vit.in_chans, vit.img_size, vit.img_size)})")
    device = resolve_device(config.device)
    if config.precision == "bf16" and device.type != "cuda":
        warnings.warn("precision bf16 is used on CUDA only; training in fp32 on the CPU", stacklevel=2)

    torch.manual_seed(config.seed)
    model = build_objective(config).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr,
                                  fused=device.type == "cuda" or None)
    generator = torch.Generator().manual_seed(config.seed)  # shuffling and masks (CPU)

    n = images.shape[0]
    batch_size = min(config.batch_size, n)
    steps_per_epoch = n // batch_size  # the last incomplete batch is dropped
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)

    start_epoch, step, log = 0, 0, []
    if resume:
        tensors, saved, meta = ckpt.load_checkpoint(out_dir)
        _check_resumable(out_dir / ckpt.CHECKPOINT_FILE, saved, config)
        model.load_state_dict({k: v.to(device) for k, v in tensors.items()})
        state = ckpt.load_train_state(out_dir, optimizer, generator)
        try:
            saved_epoch = int(meta["epoch"])
        except (KeyError, ValueError):
            raise SjalignError(f"{out_dir}: checkpoint metadata has no valid 'epoch'") from None
        start_epoch, step = state["epoch"], state["step"]
        if saved_epoch != start_epoch:
            raise SjalignError(f"{out_dir}: checkpoint (epoch {saved_epoch}) and train state (epoch "
                               f"{start_epoch}) disagree; the run was interrupted while saving")
        if step != start_epoch * steps_per_epoch:
            raise SjalignError(f"{out_dir}: cannot resume with a different dataset size or batch size "
                               f"({step} steps in {start_epoch} epochs, now {steps_per_epoch} steps per epoch)")
        log = [r for r in ckpt.read_log(out_dir) if r.get("epoch", 0) <= start_epoch]
    else:
        if (out_dir / ckpt.CHECKPOINT_FILE).exists() and not overwrite:
            raise SjalignError(f"{out_dir / ckpt.CHECKPOINT_FILE} already exists (resume it, or overwrite)")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in (ckpt.CHECKPOINT_FILE, ckpt.TRAIN_STATE_FILE, ckpt.LOG_FILE):
            (out_dir / name).unlink(missing_ok=True)  # a fresh run leaves nothing of an old one
    ckpt.write_config_json(out_dir, config)

    if config.compile:
        for module in model.children():
            module.compile()
    amp = autocast(device, config.precision)
    data = images.to(device, torch.float32)
    params = model.trainable_parameters()
    num_params = sum(p.numel() for p in model.export_encoder().parameters())
    t_run, seen_run, lr, momentum = time.perf_counter(), 0, config.lr, config.ema[0]
    model.train()

    for epoch in range(start_epoch, config.epochs):
        t_epoch, loss_sum = time.perf_counter(), torch.zeros((), device=device)
        order = torch.randperm(n, generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            masks = model.sample_masks(batch_size, generator)
            masks = type(masks)(*(m.to(device, non_blocking=True) for m in masks))
            lr = lr_at(step, total_steps, warmup_steps, config.lr, config.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # 1. forward
            with amp:
                loss = model(data[idx.to(device)], masks)
            # 2. backward + step
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            # 3. EMA (objective-specific)
            momentum = model.after_step(step, total_steps)
            step += 1
            loss_sum += loss.detach()
            if on_step is not None:
                img_s = (i + 1) * batch_size / max(time.perf_counter() - t_epoch, 1e-9)
                on_step(step, total_steps, loss.item(), img_s)  # the only per-step sync, and only with a listener

        seconds = time.perf_counter() - t_epoch
        seen_run += steps_per_epoch * batch_size
        record = {"epoch": epoch + 1, "loss": loss_sum.item() / steps_per_epoch, "lr": lr, "momentum": momentum,
                  "step": step, "seconds": round(seconds, 3),
                  "img_per_s": round(steps_per_epoch * batch_size / max(seconds, 1e-9), 1)}
        ckpt.save_train_state(out_dir, optimizer, epoch=epoch + 1, step=step, generator=generator,
                              scheduler={"step": step, "total_steps": total_steps, "warmup_steps": warmup_steps})
        ckpt.save_checkpoint(out_dir, model, config, epoch=epoch + 1)
        log.append(record)
        ckpt.write_log(out_dir, log)
        if on_epoch is not None:
            on_epoch(record)

    if config.epochs == 0:  # the untrained control: same architecture and seed, no step taken
        ckpt.save_checkpoint(out_dir, model, config, epoch=0)
    seconds = time.perf_counter() - t_run
    return {
        "out_dir": str(out_dir), "checkpoint": str(out_dir / ckpt.CHECKPOINT_FILE), "epochs": config.epochs,
        "steps": step, "loss": log[-1]["loss"] if log else None, "first_loss": log[0]["loss"] if log else None,
        "seconds": round(seconds, 3), "img_per_s": round(seen_run / max(seconds, 1e-9), 1), "device": str(device),
        "num_params": num_params, "resumed_from": start_epoch if resume else None, "version": __version__,
    }
