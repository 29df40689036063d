"""The pretraining loop: one trainer for every objective, CPU or CUDA, one process or many.

Each step reads as I-JEPA's: 1. forward (loss of the objective on a masked batch),
2. backward + AdamW step (learning rate from a per-step warm-up + cosine schedule),
3. the objective's ``after_step`` (EMA update of the target encoder). After every epoch
the run directory gets an atomic resume state, checkpoint and log line (with the
cumulative training FLOPs, see :mod:`sjalign.jepa.flops`).

Example (one process; for several, launch the CLI with ``torchrun``, see
:mod:`sjalign.jepa.distributed`)::

    from sjalign.data import load_dataset, view_images
    from sjalign.jepa import PretrainConfig, pretrain

    cfg = PretrainConfig(view="crop:top", epochs=5, max_states=10000)
    ds = load_dataset(cfg.dataset, max_states=cfg.max_states)
    summary = pretrain(cfg, view_images(ds.images, ds.state_ids, cfg.view), Path("runs/top"))
    # later, after an interruption: pretrain(cfg, images, Path("runs/top"), resume=True)

``images`` may also be a map-style ``torch.utils.data.Dataset`` whose items are (C, H, W)
float32 tensors: batches are then read through a DataLoader (``config.num_workers``) in the
same seeded order, with the same results as the tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sjalign import __version__
from sjalign.device import autocast, resolve_device
from sjalign.errors import SjalignError
from sjalign.jepa import checkpoint as ckpt
from sjalign.jepa import distributed as ddp
from sjalign.jepa.config import PretrainConfig
from sjalign.jepa.flops import StepFlops, signature
from sjalign.jepa.monitor import EvalSet, evaluate_encoder, non_finite
from sjalign.jepa.objectives import build_objective
from sjalign.jepa.teacher import TeacherLatents, attach_alignment, fit_before_training

StartCallback = Callable[[dict[str, Any]], None]
StepCallback = Callable[[int, int, float, float], None]
EpochCallback = Callable[[dict[str, Any]], None]
Images = Union[torch.Tensor, Dataset]

PROGRESS_EVERY = 10  # steps between on_step calls: each reads the loss, a host sync on CUDA

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
    """Refuse to resume a run made for another objective, architecture or data (one line)."""
    old, new = saved.architecture(), config.architecture()
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}"
                      for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key}: checkpoint {a!r} vs config {b!r}")
    diffs += [f"{k}: checkpoint {getattr(saved, k)!r} vs config {getattr(config, k)!r}"
              for k in ("dataset", "view") if getattr(saved, k) != getattr(config, k)]
    if diffs:
        raise SjalignError(f"{path}: cannot resume, the config differs ({', '.join(diffs)})")


INPUT_STATS_IMAGES = 10_000  # images (evenly spaced over the training set) whose pixels give input_mean/std


def with_input_stats(config: PretrainConfig, feed: "_Feed", saved: PretrainConfig | None = None) -> PretrainConfig:
    """``config`` with the per-channel pixel mean and std in ``vit`` when ``input_norm`` is on and ``vit`` has
    none yet: a resumed run's own (``saved``, its checkpoint's config) when it has them — not measured again,
    whose last bits could depend on the thread count — else the training images'.

    Measured on at most :data:`INPUT_STATS_IMAGES` images evenly spaced over the feed, in float64.
    """
    if not config.input_norm or config.vit.input_mean is not None:
        return config
    if saved is not None and saved.vit.input_mean is not None:
        vit = dataclasses.replace(config.vit, input_mean=saved.vit.input_mean, input_std=saved.vit.input_std)
        return dataclasses.replace(config, vit=vit)
    rows = np.unique(np.linspace(0, feed.n - 1, min(feed.n, INPUT_STATS_IMAGES)).round().astype(np.int64))
    pixels = feed.take(rows).double().transpose(0, 1).reshape(config.vit.in_chans, -1)  # (C, m·H·W)
    mean, std = pixels.mean(1), pixels.std(1, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: centred only
    vit = dataclasses.replace(config.vit, input_mean=tuple(mean.tolist()), input_std=tuple(std.tolist()))
    return dataclasses.replace(config, vit=vit)


class _EpochPlan(torch.utils.data.Sampler):
    """The DataLoader's batch sampler: this epoch's index batches, set by the trainer."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Feed:
    """This rank's batches, in the order the trainer drew: from a tensor, or a Dataset via a DataLoader.

    Args:
        images: (n, C, H, W) float tensor, or a map-style Dataset of (C, H, W) float32 tensors.
        expected: (C, H, W) the architecture takes.
        model_name: for messages.
    """

    def __init__(self, images: Images, expected: tuple[int, int, int], model_name: str) -> None:
        self.images = images
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[0] == 0:
                raise SjalignError(f"pretrain: no images to train on (got a tensor of shape {tuple(images.shape)})")
            self.n, item = images.shape[0], tuple(images.shape[1:])
        elif isinstance(images, Dataset):
            try:
                self.n = len(images)  # type: ignore[arg-type]
            except TypeError:
                raise SjalignError(f"pretrain: the dataset {type(images).__name__} has no length "
                                   f"(a map-style Dataset is needed)") from None
            if self.n == 0:
                raise SjalignError(f"pretrain: no images to train on (the dataset {type(images).__name__} is empty)")
            first = images[0]
            if not isinstance(first, torch.Tensor):
                raise SjalignError(f"pretrain: items of the dataset {type(images).__name__} must be (C, H, W) "
                                   f"float tensors, got {type(first).__name__}")
            item = tuple(first.shape)
        else:
            raise SjalignError(f"pretrain: images must be a tensor or a torch Dataset, got {type(images).__name__}")
        if item != expected:
            raise SjalignError(f"pretrain: images of shape {item} do not fit model '{model_name}' "
                               f"(expects {expected})")

    def take(self, rows: np.ndarray) -> torch.Tensor:
        """(m, C, H, W) float32 images of rows ``rows``, on the CPU (outside the epoch's order)."""
        if isinstance(self.images, torch.Tensor):
            return self.images[torch.from_numpy(rows)].float()
        return torch.stack([self.images[int(i)] for i in rows]).float()

    def start(self, device: torch.device, num_workers: int, seed: int) -> None:
        """Put a tensor on the device, or open the DataLoader (workers persist across epochs)."""
        self.device = device
        if isinstance(self.images, torch.Tensor):
            self.data = self.images.to(device, torch.float32)
            return
        self.plan = _EpochPlan()
        self.loader = DataLoader(self.images, batch_sampler=self.plan, num_workers=num_workers,
                                 pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                                 generator=torch.Generator().manual_seed(seed))  # not the global RNG

    def epoch(self, batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Yield (b, C, H, W) float32 batches on the device for each index batch."""
        if isinstance(self.images, torch.Tensor):
            for idx in batches:
                yield self.data[idx.to(self.device)]
            return
        self.plan.batches = [idx.tolist() for idx in batches]
        try:
            for x in self.loader:
                yield x.to(self.device, torch.float32, non_blocking=True)
        except SjalignError as exc:  # raised in a worker: keep the original one-line message
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            if len(lines) > 1 and "Original Traceback" in str(exc):
                last = lines[-1].split(": ", 1)
                raise type(exc)(last[-1]) from None
            raise


def _masks_to(masks: Any, device: torch.device) -> Any:
    """Move every masks field to the device; a stride-0 batch-shared field moves one row and is re-expanded."""
    fields = []
    for t in masks:
        if t.device == device:
            fields.append(t)
        elif t.ndim and t.shape[0] > 1 and t.stride(0) == 0:
            fields.append(t[:1].to(device, non_blocking=True).expand(t.shape))
        else:
            fields.append(t.to(device, non_blocking=True))
    return masks._make(fields) if hasattr(masks, "_make") else type(masks)(fields)


def pretrain(config: PretrainConfig, images: Images, out_dir: str | Path, *, resume: bool = False,
             overwrite: bool = False, eval_set: EvalSet | None = None, eval_every: int = 1,
             teacher: TeacherLatents | None = None,
             on_start: StartCallback | None = None, on_step: StepCallback | None = None,
             on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Train one encoder with ``config.objective`` and checkpoint it every epoch.

    Seeds torch's (and numpy's) global RNG with ``config.seed`` (model initialisation) and draws
    shuffling and masks from a CPU ``torch.Generator`` seeded with it, so a run is
    reproducible on one machine and a resumed run continues the same stream (a run killed
    with ``kill -9`` and resumed ends with the same weights, bit for bit, on the CPU).

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1), it trains with DistributedDataParallel:
    ``config.batch_size`` is the global batch, split evenly across ranks, every rank draws
    the same order and masks and trains on its slice, and rank 0 alone writes files and
    calls the callbacks (see :mod:`sjalign.jepa.distributed`).

    Args:
        config: the run's config (written into every output).
        images: (n, C, H, W) float32 observations in [0, 1] (one view of the dataset), or a
            map-style ``torch.utils.data.Dataset`` whose item i is such a (C, H, W) float32
            tensor (read through a DataLoader with ``config.num_workers`` workers).
        out_dir: run directory (created if needed).
        resume: continue from ``out_dir``'s ``train_state.safetensors``.
        overwrite: start afresh (deleting its checkpoint, train state and log) even if
            ``out_dir`` already holds a run.
        eval_set: held-out labelled states to score the exported encoder on (see
            :mod:`sjalign.jepa.monitor`) before the first step (epoch 0), every ``eval_every``
            epochs and after the last; None: no evaluation. The figures go into the epoch's
            log record under ``"eval"``; evaluation never changes the weights.
        eval_every: evaluate every this many epochs (>= 1).
        teacher: a frozen teacher's latents of the training states (row i for image i) when
            ``config.teacher`` is set: the student adds the alignment term of
            :mod:`sjalign.jepa.teacher` (one process only). Epoch records then carry
            ``teacher_flops``, ``map_flops`` and ``align_fits``, and the terms ``align``.
        on_start: called once every check has passed, before the first step, with
            ``{"device", "world_size", "n", "steps_per_epoch", "total_steps", "start_epoch",
            "resumed"}`` (so a caller prints nothing for a refused run).
        on_step: called every :data:`PROGRESS_EVERY` optimizer steps and after each epoch's
            last step, with (step, total_steps, loss, img_per_s); step counts from 1; the loss
            is that step's, rank 0's (reading it is the loop's only host sync, hence the
            interval); img/s counts all ranks.
        on_epoch: called after each epoch's checkpoint with the epoch's log record
            ``{"epoch", "loss", "terms", "img_per_s", "flops", "seconds", "lr", "momentum", "step"}``
            (plus ``"eval"`` when the epoch was evaluated; ``terms``: each loss term's epoch
            mean, e.g. ``{"pred": .., "sigreg": ..}``), and once with the epoch-0 record
            ``{"epoch": 0, "step": 0, "flops": 0, "eval"}`` before the first step;
            ``flops`` is the cumulative training FLOPs of all ranks (forward + backward, with
            ``torch.utils.flop_counter``'s formulas; see :mod:`sjalign.jepa.flops`).

    Returns:
        Summary ``{"out_dir", "checkpoint", "epochs", "steps", "loss", "first_loss",
        "seconds", "img_per_s", "flops", "device", "world_size", "num_params",
        "resumed_from", "version", "eval"}`` (with a teacher also ``teacher_flops``, ``map_flops``,
        ``align_fits``; with ``config.target_acc`` also ``target``: ``{"acc", "epoch", "flops",
        "total_flops"}`` of the first evaluated epoch whose probe accuracy reached it, None when none
        did); ``eval`` lists ``{"epoch", "flops", **figures}``
        for every evaluated epoch (epoch 0 first), empty without ``eval_set``.

    Raises:
        SjalignError: empty dataset, images that do not fit the architecture, unknown
            objective, an existing run without ``resume``/``overwrite``, a run that cannot be
            resumed with this config, a global batch not divisible by the world size,
            ``eval_every`` < 1, or a loss term or evaluation figure that is NaN or infinite
            (the run stops before that epoch is saved: the last good checkpoint stays).
    """
    if eval_every < 1:
        raise SjalignError(f"pretrain: eval_every must be >= 1, got {eval_every} (pass eval_set=None for no evaluation)")
    out_dir = Path(out_dir)
    vit = config.vit
    feed = _Feed(images, (vit.in_chans, vit.img_size, vit.img_size), config.model)
    state = saved = None
    if resume:
        if not (out_dir / ckpt.TRAIN_STATE_FILE).is_file():
            raise SjalignError(f"{out_dir / ckpt.TRAIN_STATE_FILE}: no such file, nothing to resume (no epoch of this "
                               f"run has finished; start it afresh)")
        state = ckpt.load_train_state(out_dir)
        saved = state.config if state.config is not None else ckpt.load_checkpoint(out_dir)[1]
    elif (out_dir / ckpt.CHECKPOINT_FILE).exists() and not overwrite:
        raise SjalignError(f"{out_dir / ckpt.CHECKPOINT_FILE} already exists (resume it, or overwrite)")
    config = with_input_stats(config, feed, saved)
    if state is not None:
        _check_resumable(state.path, saved, config)
    device = resolve_device(config.device)
    if config.precision == "bf16" and device.type != "cuda":
        warnings.warn("precision bf16 is used on CUDA only; training in fp32 on the CPU", stacklevel=2)

    info, device = ddp.setup(device)
    created = not out_dir.exists()
    try:
        return _train(config, feed, out_dir, state, info, device, on_start, on_step, on_epoch,
                      eval_set if info.is_main else None, eval_every, teacher)
    except BaseException:
        if state is None and info.is_main:
            _undo_fresh_start(out_dir, created)
        raise
    finally:
        ddp.teardown(info)


def _undo_fresh_start(out_dir: Path, created: bool) -> None:
    """A fresh run that failed before its first checkpoint leaves nothing: its config, log, curves
    and temp files go, and the folder too when this run created it and nothing else is in it."""
    if (out_dir / ckpt.CHECKPOINT_FILE).exists():
        return  # an epoch finished: the run can be resumed
    ckpt.remove_stale_temp_files(out_dir)
    for name in (ckpt.CONFIG_FILE, ckpt.LOG_FILE, ckpt.CURVES_FILE):
        (out_dir / name).unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):
            out_dir.rmdir()  # only if empty


class _Trainee:
    """One model's training: its objective, optimizer, seeded generator, schedule, FLOPs and log.

    :func:`pretrain` trains one; :mod:`sjalign.jepa.mutual` trains two in lockstep on paired
    batches. Building it seeds torch's and numpy's global RNG with ``config.seed`` (model
    initialisation), then restores ``state`` (a resumed run) or clears ``out_dir`` of an old
    run's files, writes ``config.json`` and starts the feed.

    Raises:
        SjalignError: a teacher under torchrun, a batch of fewer than 2 images per process, or a
            resumed state made with another dataset or batch size.
    """

    def __init__(self, config: PretrainConfig, feed: _Feed, out_dir: Path, state: ckpt.TrainState | None,
                 info: ddp.DistInfo, device: torch.device, eval_set: EvalSet | None, eval_every: int,
                 teacher: TeacherLatents | None = None) -> None:
        self.config, self.feed, self.out_dir, self.state, self.info = config, feed, out_dir, state, info
        self.device, self.eval_set, self.eval_every = device, eval_set, eval_every
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)  # saved and restored with the train state; nothing here draws from it
        model = build_objective(config)
        self.align = attach_alignment(model, config, teacher)
        if self.align is not None and info.enabled:
            raise SjalignError("pretrain: --teacher runs in one process (not under torchrun)")
        self.model = model.to(device)
        self.optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, fused=True)
        self.generator = torch.Generator().manual_seed(config.seed)  # shuffling and masks (CPU), the same on every rank

        self.n = n = feed.n
        self.batch_size = batch_size = min(config.batch_size, n)  # global
        self.rows = ddp.local_slice(batch_size, info)
        if self.rows.stop - self.rows.start < 2:  # batch statistics (SIGReg, VICReg, BatchNorm, NT-Xent) need two rows
            raise SjalignError(f"pretrain: a batch of {self.rows.stop - self.rows.start} image(s) per process is too "
                               f"small (at least 2: {n} training image(s), --batch-size {config.batch_size}, "
                               f"{info.world_size} process(es))")
        self.steps_per_epoch = n // batch_size  # the last incomplete batch is dropped
        self.total_steps = self.steps_per_epoch * config.epochs
        self.warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)

        self.start_epoch, self.step, self.log, self.flops = 0, 0, [], 0
        if state is not None:
            ckpt.restore_train_state(state, model, self.optimizer, self.generator)
            self.start_epoch, self.step, self.log, self.flops = state.epoch, state.step, list(state.log), state.flops
            if self.step != self.start_epoch * self.steps_per_epoch:
                raise SjalignError(f"{out_dir}: cannot resume with a different dataset size or batch size "
                                   f"({self.step} steps in {self.start_epoch} epochs, now {self.steps_per_epoch} "
                                   f"steps per epoch)")
            if info.is_main:  # a kill after the train state but before these: rebuild them from it
                ckpt.remove_stale_temp_files(out_dir)
                if ckpt.checkpoint_epoch(out_dir) != self.start_epoch:
                    ckpt.save_checkpoint(out_dir, model, config, epoch=self.start_epoch)
                ckpt.write_log(out_dir, self.log)
        elif info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in (ckpt.CHECKPOINT_FILE, ckpt.TRAIN_STATE_FILE, ckpt.LOG_FILE, ckpt.CURVES_FILE):
                (out_dir / name).unlink(missing_ok=True)  # a fresh run leaves nothing of an old one
        if info.is_main:
            ckpt.write_config_json(out_dir, config)
        ddp.barrier(info)

        if config.compile:
            for module in model.children():
                module.compile()
        self.amp = autocast(device, config.precision)
        feed.start(device, config.num_workers, config.seed)
        self.net = ddp.wrap(model, info, device)  # forward through DDP; everything else on the objective
        self.params = model.trainable_parameters()
        self.num_params = sum(p.numel() for p in model.export_encoder().parameters())
        self.counter = StepFlops()
        self.lr, self.momentum = config.lr, config.ema[0]
        model.train()

    def run_info(self) -> dict[str, Any]:
        """What ``on_start`` receives."""
        return {"device": str(self.device), "world_size": self.info.world_size, "n": self.n,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "start_epoch": self.start_epoch, "resumed": self.state is not None}

    def evaluate_init(self, on_epoch: EpochCallback | None) -> None:
        """Epoch 0 of a fresh run with an eval set: the run's own random-init baseline, logged and reported."""
        if self.eval_set is None or self.state is not None:
            return
        record = {"epoch": 0, "step": 0, "flops": 0,
                  "eval": evaluate_encoder(self.model.export_encoder(), self.eval_set, self.device)}
        _stop_on_non_finite(self.out_dir, record, last_good=None)
        self.log.append(record)
        if on_epoch is not None:
            on_epoch(record)

    def begin_epoch(self) -> list[torch.Tensor]:
        """Start an epoch: this epoch's index batches (this rank's rows of each), drawn from the generator."""
        self.t_epoch, self.loss_sum, self.term_sums = time.perf_counter(), torch.zeros((), device=self.device), {}
        order = torch.randperm(self.n, generator=self.generator)
        return [order[i * self.batch_size:(i + 1) * self.batch_size][self.rows] for i in range(self.steps_per_epoch)]

    def begin_step(self) -> Any:
        """The step's masks (the global batch's, on every rank; this rank's rows, on the device); sets the lr."""
        masks = self.model.sample_masks(self.batch_size, self.generator)
        if self.info.enabled:
            masks = ddp.shard_masks(masks, self.rows, self.batch_size)
        self.lr = lr_at(self.step, self.total_steps, self.warmup_steps, self.config.lr, self.config.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        return _masks_to(masks, self.device)

    def loss(self, x: torch.Tensor, masks: Any, batch_rows: torch.Tensor) -> torch.Tensor:
        """The objective's loss of batch x (b, C, H, W), plus the teacher's alignment term when there is one."""
        with self.amp:
            loss = self.net(x, masks)
            if self.align is not None:  # the alignment term on the student's pooled latents
                self.align_term = self.align(self.pooled(x), batch_rows.numpy())
                loss = loss + self.align_term
        return loss

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(b, C, H, W) -> (b, d) float32: the encoder's mean-pooled tokens, with gradient (what the
        teacher and cross-model terms compare)."""
        with self.amp:
            return self.model.encoder(x).float().mean(1)

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of ``loss`` (DDP averages them over ranks)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def update(self, loss: torch.Tensor, extra_terms: dict[str, torch.Tensor] | None = None) -> None:
        """Clip, AdamW step, the objective's ``after_step`` (EMA), and the epoch's sums of the loss and its terms."""
        if self.config.grad_clip:
            nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        self.momentum = self.model.after_step(self.step, self.total_steps)  # identical on every rank
        self.step += 1
        self.loss_sum += loss.detach()
        terms = dict(getattr(self.model, "last_terms", {}))
        if self.align is not None:
            self.align.after_step(self.step)  # refit W every N steps
            terms["align"] = self.align_term.detach()
        terms.update(extra_terms or {})
        for name, value in terms.items():  # detached, on the device: no sync
            self.term_sums[name] = self.term_sums.get(name, 0.0) + value.float()

    def train_step(self, x: torch.Tensor, batch_rows: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this rank's batch x (b, C, H, W) of training rows ``batch_rows``; returns the loss."""
        masks = self.begin_step()
        with self.counter.count(signature(x, masks)) as key:
            loss = self.loss(x, masks, batch_rows)
            self.backward(loss)
        self.flops += self.counter[key] * self.info.world_size
        self.update(loss)
        return loss

    def end_epoch(self, epoch: int, on_epoch: EpochCallback | None,
                  costs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Close epoch ``epoch`` (0-based): its log record (with ``costs`` and the evaluation when due), checked
        for NaN, then the train state, checkpoint and log on disk (rank 0), then ``on_epoch``."""
        info, config = self.info, self.config
        loss_mean = ddp.all_mean(self.loss_sum, info).item() / self.steps_per_epoch
        seconds = time.perf_counter() - self.t_epoch
        record = {"epoch": epoch + 1, "loss": loss_mean, "lr": self.lr, "momentum": self.momentum, "step": self.step,
                  "seconds": round(seconds, 3),
                  "img_per_s": round(self.steps_per_epoch * self.batch_size / max(seconds, 1e-9), 1),
                  "flops": self.flops,
                  "terms": {k: ddp.all_mean(v, info).item() / self.steps_per_epoch
                            for k, v in sorted(self.term_sums.items())}}
        if self.align is not None:
            record.update(self.align.costs())
        record.update(costs or {})
        if self.eval_set is not None and (epoch + 1 == config.epochs or (epoch + 1) % self.eval_every == 0):
            record["eval"] = evaluate_encoder(self.model.export_encoder(), self.eval_set, self.device)
            if config.target_acc is not None and not any(r.get("target_reached") for r in self.log):
                probe = record["eval"].get("probe_acc")
                if probe is not None and probe >= config.target_acc:
                    record["target_reached"] = True
        _stop_on_non_finite(self.out_dir, record, last_good=epoch if epoch > 0 else None)
        self.log.append(record)
        if info.is_main:  # the train state first: it is the commit point
            ckpt.save_train_state(self.out_dir, self.model, self.optimizer, config=config, epoch=epoch + 1,
                                  step=self.step, generator=self.generator, log=self.log, flops=self.flops,
                                  scheduler={"step": self.step, "total_steps": self.total_steps,
                                             "warmup_steps": self.warmup_steps})
            ckpt.save_checkpoint(self.out_dir, self.model, config, epoch=epoch + 1)
            ckpt.write_log(self.out_dir, self.log)
            if on_epoch is not None:
                on_epoch(record)
        return record

    def finish(self) -> None:
        """After the last epoch: the untrained control's checkpoint (``epochs`` 0), the ranks' debug dump."""
        if self.config.epochs == 0 and self.info.is_main:  # same architecture and seed, no step taken
            ckpt.save_checkpoint(self.out_dir, self.model, self.config, epoch=0)
            ckpt.write_log(self.out_dir, self.log)
        ddp.dump_rank_weights(self.model, self.info)

    def summary(self, seconds: float, seen: int, costs: dict[str, Any] | None = None) -> dict[str, Any]:
        """What :func:`pretrain` returns for this model (``seen``: images trained on in this call)."""
        log = self.log
        trained = [r for r in log if "loss" in r]  # the epoch-0 record has no loss
        return {
            "out_dir": str(self.out_dir), "checkpoint": str(self.out_dir / ckpt.CHECKPOINT_FILE),
            "epochs": self.config.epochs, "steps": self.step, "loss": trained[-1]["loss"] if trained else None,
            "first_loss": trained[0]["loss"] if trained else None,
            "seconds": round(seconds, 3), "img_per_s": round(seen / max(seconds, 1e-9), 1), "flops": self.flops,
            "device": str(self.device), "world_size": self.info.world_size, "num_params": self.num_params,
            "resumed_from": self.state.epoch if self.state is not None else None, "version": __version__,
            "eval": [{"epoch": r["epoch"], "flops": r["flops"], **r["eval"]} for r in log if "eval" in r],
            **_cost_summary(self.config, log, costs if costs is not None else
                            (self.align.costs() if self.align is not None else None)),
        }


def _train(config: PretrainConfig, feed: _Feed, out_dir: Path, state: ckpt.TrainState | None,
           info: ddp.DistInfo, device: torch.device, on_start: StartCallback | None,
           on_step: StepCallback | None, on_epoch: EpochCallback | None, eval_set: EvalSet | None,
           eval_every: int, teacher: TeacherLatents | None) -> dict[str, Any]:
    run = _Trainee(config, feed, out_dir, state, info, device, eval_set, eval_every, teacher)
    t_run, seen_run = time.perf_counter(), 0
    if on_start is not None and info.is_main:
        on_start(run.run_info())
    if run.align is not None:
        fit_before_training(run.align, run.model.encoder, feed.take, run.n, config.seed, device)
    run.evaluate_init(on_epoch)
    for epoch in range(run.start_epoch, config.epochs):
        batches = run.begin_epoch()
        for i, x in enumerate(feed.epoch(batches)):  # x: (b, C, H, W), this rank's rows
            loss = run.train_step(x, batches[i])
            if on_step is not None and info.is_main and ((i + 1) % PROGRESS_EVERY == 0 or i + 1 == len(batches)):
                img_s = (i + 1) * run.batch_size / max(time.perf_counter() - run.t_epoch, 1e-9)
                on_step(run.step, run.total_steps, loss.item(), img_s)  # the only host sync, once per interval
        seen_run += run.steps_per_epoch * run.batch_size
        run.end_epoch(epoch, on_epoch)
    run.finish()
    return run.summary(time.perf_counter() - t_run, seen_run)


def _cost_summary(config: PretrainConfig, log: list[dict[str, Any]], costs: dict[str, Any] | None) -> dict[str, Any]:
    """The run's cost figures: ``costs`` (teacher forwards and map fits: the migration or coupling overhead),
    and with ``target_acc`` the first evaluated epoch whose probe accuracy reached it (None when none did),
    with its FLOPs."""
    out: dict[str, Any] = dict(costs or {})
    if config.target_acc is not None:
        hit = next((r for r in log if r.get("target_reached")), None)
        out["target"] = {"acc": config.target_acc, "epoch": None if hit is None else hit["epoch"],
                         "flops": None if hit is None else hit["flops"],
                         "total_flops": None if hit is None else hit["flops"] + hit.get("teacher_flops", 0)
                         + hit.get("map_flops", 0)}
    return out


def _stop_on_non_finite(out_dir: Path, record: dict[str, Any], *, last_good: int | None) -> None:
    """Stop the run, before the epoch is saved, when its loss, a loss term or an evaluation figure is NaN/inf.

    Raises:
        SjalignError: one line naming the epoch, the figure and what stays on disk.
    """
    bad = non_finite({"loss": record.get("loss")}) + [f"loss term '{k}'" for k in non_finite(record.get("terms", {}))]
    bad += [f"evaluation figure '{k}'" for k in non_finite(record.get("eval") or {})]
    if bad:
        kept = (f"the checkpoint of epoch {last_good} stays in {out_dir}" if last_good is not None
                else "no epoch was saved")
        raise SjalignError(f"pretrain: epoch {record['epoch']}: {', '.join(bad)} is not finite (NaN or inf); "
                           f"training stopped and {kept}")

