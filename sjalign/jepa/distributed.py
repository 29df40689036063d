"""Data-parallel pretraining across processes (``torchrun``): process group, sharding, rank 0 writes.

Launch one process per device; the trainer sees ``WORLD_SIZE > 1`` and joins the group::

    torchrun --standalone --nproc-per-node 2 -m sjalign pretrain --view crop:top --epochs 4 -o runs/top

Semantics (every rank runs the same code on the same seeded streams):

- ``--batch-size B`` is the **global** batch: each optimizer step consumes B images in all,
  B / world_size per rank (B must be divisible by the world size).
- Every rank draws the same permutation and the same masks for the whole global batch from
  the trainer's seeded generator, and keeps its own contiguous slice (rank r: rows
  [r·b, (r+1)·b) with b = B / world_size) of the indices and of every masks field (the
  objective contract makes every field batch-first).
- Gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`, so a step
  on W ranks is the step of one process on the whole global batch for losses that are means
  over samples (up to float summation order). Losses built on batch statistics (SIGReg,
  VICReg, RDMReg, InfoNCE negatives) see each rank's slice only, as unsynchronised BatchNorm.
- The objective's ``after_step`` (EMA) runs on every rank on identical weights, so the ranks
  stay bit-identical; rank 0 alone writes checkpoints, logs and config and reports progress.
- Backend: NCCL on CUDA (rank r uses ``cuda:LOCAL_RANK``), gloo on the CPU.

Debugging: with ``SJALIGN_DUMP_RANK_WEIGHTS=DIR`` every rank writes its final objective state
dict to ``DIR/rank{R}.safetensors`` (used by the tests to check that ranks agree).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from sjalign.errors import SjalignError

DUMP_ENV = "SJALIGN_DUMP_RANK_WEIGHTS"


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the process group (a single process: rank 0 of 1).

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this machine (selects the CUDA device).
        owns_group: this module created the process group and destroys it in :func:`teardown`.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and reports."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    With ``WORLD_SIZE`` unset or 1 (and no group initialised by the caller) this is a
    no-op. Otherwise the group is initialised from ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``
    (``env://``) with NCCL when ``device`` is CUDA — each rank then uses
    ``cuda:LOCAL_RANK`` — and gloo on the CPU. A group the caller already initialised is
    used as it is and left alone by :func:`teardown`.

    Args:
        device: the device the config resolved to.

    Returns:
        (DistInfo, the device this rank trains on).

    Raises:
        SjalignError: ``WORLD_SIZE > 1`` without the rest of torchrun's environment.
    """
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        return info, _rank_device(device, info)
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise SjalignError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (launch with torchrun)") from None
    if world <= 1:
        return DistInfo(), device
    if not dist.is_available():
        raise SjalignError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    info = DistInfo(rank, world, local, owns_group=True)
    device = _rank_device(device, info)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SjalignError(f"WORLD_SIZE={world}: cannot join the process group ({first}); "
                           f"launch with torchrun --nproc-per-node N") from None
    return info, device


def _rank_device(device: torch.device, info: DistInfo) -> torch.device:
    if device.type != "cuda" or not info.enabled:
        return device
    device = torch.device("cuda", info.local_rank)
    torch.cuda.set_device(device)
    return device


def teardown(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``model`` itself for one process, else ``DistributedDataParallel(model)``.

    ``static_graph=True`` lets objectives leave some trainable parameters unused in the
    forward (the set must not change between steps) and skips DDP's per-step search.
    """
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, static_graph=True)


def local_slice(batch_size: int, info: DistInfo) -> slice:
    """Rows of a global batch of ``batch_size`` that this rank trains on.

    Raises:
        SjalignError: ``batch_size`` is not divisible by the world size.
    """
    if batch_size % info.world_size:
        raise SjalignError(f"batch size {batch_size} is the global batch and must be divisible by the "
                           f"{info.world_size} processes (choose --batch-size accordingly)")
    b = batch_size // info.world_size
    return slice(info.rank * b, (info.rank + 1) * b)


def shard_masks(masks: NamedTuple, rows: slice, batch_size: int) -> NamedTuple:
    """This rank's rows of every field of a global batch's masks (fields are batch-first).

    Args:
        masks: the objective's masks NamedTuple for the global batch, each field (B, ...).
        rows: this rank's rows (see :func:`local_slice`).
        batch_size: B, the global batch size.

    Returns:
        The same NamedTuple type with each field (b, ...).

    Raises:
        SjalignError: a field whose first dimension is not B (it breaks the objective contract).
    """
    fields = []
    for name, value in zip(getattr(masks, "_fields", range(len(masks))), masks):
        if value.ndim == 0 or value.shape[0] != batch_size:
            raise SjalignError(f"objective masks field '{name}' of shape {tuple(value.shape)} is not batch-first "
                               f"(first dimension {batch_size}); it cannot be split across processes")
        fields.append(value[rows])
    return masks._make(fields) if hasattr(masks, "_make") else type(masks)(fields)


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (the tensor itself for one process)."""
    if not info.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.enabled:
        dist.barrier()


def dump_rank_weights(model: nn.Module, info: DistInfo) -> Path | None:
    """With ``$SJALIGN_DUMP_RANK_WEIGHTS`` set, write this rank's state dict to ``DIR/rank{R}.safetensors``."""
    folder = os.environ.get(DUMP_ENV)
    if not folder:
        return None
    from sjalign.io import write_safetensors_torch

    path = Path(folder) / f"rank{info.rank}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"rank": info.rank, "world_size": info.world_size}
    return write_safetensors_torch(path, dict(model.state_dict()), meta, force=True)
