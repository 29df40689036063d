"""Run directories: safetensors checkpoints, resume state, resolved config and log.

A run directory holds::

    checkpoint.safetensors   weights: encoder.*, target_encoder.*, predictor.* (the objective's
                             state dict); metadata: sjalign.format = "checkpoint/1", config (JSON
                             of the full PretrainConfig), objective, epoch, version
    train_state.safetensors  resume state, self-contained: the same weights as model.*, optimizer
                             tensors optimizer.<param>.<key>, RNG states rng.* (uint8); metadata:
                             sjalign.format = "train_state/1", param_groups, epoch, step,
                             scheduler, config, log, flops (JSON)
    config.json              the resolved config, pretty JSON
    log.jsonl                one JSON object per epoch (epoch, loss, img_per_s, flops, seconds, lr, ...)

Every file is written atomically (temp file in the same folder, fsync, then ``os.replace``)
and read with safetensors only: loading never unpickles. At the end of an epoch the trainer
writes ``train_state.safetensors`` first — the commit point — then the checkpoint and the log;
``--resume`` rebuilds the latter two from the train state, so a ``kill -9`` at any moment
loses at most the epoch in progress.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sjalign import __version__
from sjalign.errors import FileFormatError, SjalignError
from sjalign.io import atomic_write_bytes, write_safetensors_torch
from sjalign.io import read_safetensors as _read
from sjalign.jepa.config import PretrainConfig
from sjalign.jepa.vit import VisionTransformer

CHECKPOINT_FORMAT = "checkpoint/1"
TRAIN_STATE_FORMAT = "train_state/1"
CHECKPOINT_FILE = "checkpoint.safetensors"
TRAIN_STATE_FILE = "train_state.safetensors"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CURVES_FILE = "curves.png"  # drawn by the CLI from the log (sjalign.report.curves)


def read_safetensors(path: str | os.PathLike, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read all tensors (torch) and the metadata of a safetensors file and check its format tag.

    Raises:
        FileFormatError: missing file, not safetensors, or a ``sjalign.format`` other than
            ``expected_format`` (the message names the file).
    """
    return _read(path, expected_format, framework="pt")


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    path = Path(path)
    return path / CHECKPOINT_FILE if path.is_dir() else path


def _config_from_metadata(path: Path, metadata: dict[str, str]) -> PretrainConfig:
    if "config" not in metadata:
        raise FileFormatError(f"{path}: checkpoint metadata has no 'config'")
    try:
        return PretrainConfig.from_json(metadata["config"])
    except SjalignError as exc:
        raise FileFormatError(f"{path}: {exc}") from None


def save_checkpoint(run_dir: str | os.PathLike, model: torch.nn.Module, config: PretrainConfig, *,
                    epoch: int) -> Path:
    """Write ``checkpoint.safetensors``: the objective's full state dict plus its config.

    Args:
        run_dir: run directory (must exist).
        model: the objective module (submodules ``encoder``, ``target_encoder``, ``predictor``).
        config: the run's config (JSON-encoded into the metadata).
        epoch: epochs completed.

    Returns:
        The checkpoint's path.
    """
    path = Path(run_dir) / CHECKPOINT_FILE
    metadata = {"sjalign.format": CHECKPOINT_FORMAT, "config": config.to_json(), "objective": config.objective,
                "epoch": str(epoch), "version": __version__}
    write_safetensors_torch(path, dict(model.state_dict()), metadata, force=True)  # replaced every epoch
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], PretrainConfig, dict[str, str]]:
    """Read a checkpoint (run directory or file).

    Returns:
        (state dict, config, raw metadata).

    Raises:
        FileFormatError: missing/unreadable file, wrong format tag, or a bad config.
    """
    path = resolve_checkpoint_path(path)
    tensors, metadata = read_safetensors(path, CHECKPOINT_FORMAT)
    return tensors, _config_from_metadata(path, metadata), metadata


def load_encoder(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[VisionTransformer, PretrainConfig]:
    """Rebuild the exported encoder of a run from the checkpoint alone.

    The exported encoder is the EMA **target encoder** (``target_encoder.*``), as in
    I-JEPA's evaluations; objectives without one export ``encoder.*``.

    Args:
        path: run directory or its ``checkpoint.safetensors``.
        device: where to put the model.

    Returns:
        (VisionTransformer in eval mode with gradients off, PretrainConfig).

    Raises:
        FileFormatError: missing/unreadable file, wrong format tag, missing or mismatched weights.
    """
    file = resolve_checkpoint_path(path)
    tensors, config, _ = load_checkpoint(file)
    prefix = "target_encoder." if any(k.startswith("target_encoder.") for k in tensors) else "encoder."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model = VisionTransformer(config.vit)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise FileFormatError(f"{file}: weights do not match the config's architecture ({first})") from None
    return model.to(device).eval().requires_grad_(False), config


@dataclass(frozen=True)
class TrainState:
    """The contents of ``train_state.safetensors``, read without touching any model.

    Attributes:
        path: the file.
        epoch: epochs completed.   step: optimizer steps taken.
        config: the run's config as saved (compare before restoring).
        log: the epoch records written so far (``log.jsonl`` is rebuilt from them on resume).
        flops: cumulative training FLOPs so far (all ranks).
        scheduler: ``{"step", "total_steps", "warmup_steps"}``.
        tensors: ``model.*``, ``optimizer.*`` and ``rng.*`` tensors.
        metadata: the raw metadata.
    """

    path: Path
    epoch: int
    step: int
    config: PretrainConfig | None
    log: list[dict[str, Any]]
    flops: int
    scheduler: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]

    def model_state(self) -> dict[str, torch.Tensor]:
        """The objective's state dict (``model.`` prefix removed); empty for train states written before they held weights."""
        return {k[len("model."):]: v for k, v in self.tensors.items() if k.startswith("model.")}


def save_train_state(run_dir: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                     config: PretrainConfig, epoch: int, step: int, scheduler: dict[str, Any],
                     generator: torch.Generator, log: list[dict[str, Any]], flops: int) -> Path:
    """Write ``train_state.safetensors``: everything ``--resume`` needs, in one atomic file.

    The file is self-contained — the objective's full state dict (context encoder, EMA
    target encoder, predictor, heads) as ``model.<key>``, the optimizer per-parameter state
    as ``optimizer.<i>.<key>`` (i = index in the optimizer's parameter order), RNG states as
    uint8 tensors ``rng.torch``, ``rng.generator`` (shuffling and masks), ``rng.numpy`` and
    ``rng.cuda.<k>``, and in the metadata the param groups, scheduler position, config, the
    epoch log and the FLOP count — so it is the run's single commit point: the trainer writes
    it before ``checkpoint.safetensors`` and ``log.jsonl``, and a process killed at any moment
    leaves a resumable run (the other two files are rebuilt from it on resume).

    Args:
        run_dir: run directory (must exist).
        model: the objective module (not a DDP wrapper).
        optimizer: its optimizer.
        config: the run's config.
        epoch: epochs completed.   step: optimizer steps taken.
        scheduler: the learning-rate schedule's position (JSON-able).
        generator: the trainer's CPU generator (shuffling and masks).
        log: epoch records so far.   flops: cumulative training FLOPs.

    Returns:
        The file's path.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.ascontiguousarray(np_keys).view(np.uint8).copy())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for k, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{k}"] = s
    metadata = {
        "sjalign.format": TRAIN_STATE_FORMAT, "epoch": str(epoch), "step": str(step), "version": __version__,
        "param_groups": json.dumps(sd["param_groups"]), "scheduler": json.dumps(scheduler),
        "rng.numpy": json.dumps({"name": np_name, "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                                 "cached_gaussian": float(np_gauss)}),
        "config": config.to_json(), "log": json.dumps(log, sort_keys=True), "flops": str(int(flops)),
    }
    path = Path(run_dir) / TRAIN_STATE_FILE
    write_safetensors_torch(path, tensors, metadata, force=True)  # replaced every epoch
    return path


def load_train_state(run_dir: str | os.PathLike) -> TrainState:
    """Read ``train_state.safetensors`` (nothing is restored yet; see :func:`restore_train_state`).

    Raises:
        FileFormatError: missing/unreadable file, wrong format tag, or missing/corrupt fields.
    """
    path = Path(run_dir) / TRAIN_STATE_FILE
    tensors, metadata = read_safetensors(path, TRAIN_STATE_FORMAT)
    try:
        config = _config_from_metadata(path, metadata) if "config" in metadata else None
        log = json.loads(metadata.get("log", "[]"))
        if not isinstance(log, list) or not all(isinstance(r, dict) for r in log):
            raise ValueError("'log' is not a list of records")
        return TrainState(path=path, epoch=int(metadata["epoch"]), step=int(metadata["step"]), config=config,
                          log=log, flops=int(metadata.get("flops", "0")),
                          scheduler=json.loads(metadata["scheduler"]), tensors=tensors, metadata=metadata)
    except (KeyError, ValueError, TypeError) as exc:
        raise FileFormatError(f"{path}: incomplete or corrupt train state ({type(exc).__name__}: {exc})") from None


def restore_train_state(state: TrainState, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        generator: torch.Generator) -> None:
    """Load a :class:`TrainState` into the objective, its optimizer and the RNGs, in place.

    Weights come from the train state itself; an older train state without ``model.*``
    tensors takes them from the sibling checkpoint, which must be of the same epoch.

    Raises:
        FileFormatError: missing/corrupt fields, or an old train state whose checkpoint is of
            another epoch.
        SjalignError: weights or optimizer state that do not fit the model.
    """
    path = state.path
    weights = state.model_state()
    if not weights:
        tensors, _, meta = load_checkpoint(path.parent)
        if meta.get("epoch") != str(state.epoch):
            raise FileFormatError(f"{path}: checkpoint (epoch {meta.get('epoch')}) and train state (epoch "
                                  f"{state.epoch}) disagree; the run was interrupted while saving")
        weights = tensors
    device = next(iter(model.state_dict().values()), torch.zeros(0)).device
    try:
        model.load_state_dict({k: v.to(device) for k, v in weights.items()})
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SjalignError(f"{path}: weights do not fit this model ({first})") from None
    try:
        _restore_optimizer_and_rng(path, state.tensors, state.metadata, optimizer, generator)
    except (KeyError, ValueError, TypeError) as exc:
        raise FileFormatError(f"{path}: incomplete or corrupt train state ({type(exc).__name__}: {exc})") from None


def _restore_optimizer_and_rng(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                               optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise SjalignError(f"{path}: optimizer state does not fit this model ({exc})") from None
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    np_meta = json.loads(metadata["rng.numpy"])
    np_keys = tensors["rng.numpy"].numpy().view(np.uint32)
    np.random.set_state((np_meta["name"], np_keys, np_meta["pos"], np_meta["has_gauss"], np_meta["cached_gaussian"]))
    cuda_states = [tensors[f"rng.cuda.{k}"] for k in range(sum(n.startswith("rng.cuda.") for n in tensors))]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def checkpoint_epoch(run_dir: str | os.PathLike) -> int | None:
    """The ``epoch`` in a run's checkpoint metadata (tensors are not read); None if missing or unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(resolve_checkpoint_path(run_dir)), framework="pt") as fh:
            meta = fh.metadata() or {}
        return int(meta["epoch"]) if meta.get("sjalign.format") == CHECKPOINT_FORMAT else None
    except Exception:  # noqa: BLE001 - missing, not safetensors (SafetensorError), no epoch
        return None


def is_run_folder(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a pretraining run sjalign wrote: a ``config.json`` that reads as its config
    (an object with at least ``objective``, ``model`` and ``vit``, and no key a PretrainConfig lacks)."""
    import warnings

    try:
        text = (Path(run_dir) / CONFIG_FILE).read_text()
        raw = json.loads(text)
        if not isinstance(raw, dict) or not {"objective", "model", "vit"} <= raw.keys():
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an unknown key: not ours
            PretrainConfig.from_json(text)
    except Exception:  # noqa: BLE001 - missing, unreadable, not JSON, not a PretrainConfig
        return False
    return True


def remove_stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp files a killed writer left beside the run's files (:func:`sjalign.outputs.sweep_stale`,
    and the ``.NAME.*.tmp`` names of earlier versions)."""
    from sjalign.outputs import sweep_stale

    removed = sweep_stale(run_dir)
    for name in (CHECKPOINT_FILE, TRAIN_STATE_FILE, CONFIG_FILE, LOG_FILE, CURVES_FILE):
        for tmp in Path(run_dir).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def write_config_json(run_dir: str | os.PathLike, config: PretrainConfig) -> Path:
    """Write the resolved config as pretty JSON (``config.json``)."""
    path = Path(run_dir) / CONFIG_FILE
    atomic_write_bytes(path, (config.to_json(indent=2) + "\n").encode())
    return path


def read_log(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Epoch records of ``log.jsonl`` (empty when the file does not exist)."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path}: not one JSON object per line ({exc})") from None


def write_log(run_dir: str | os.PathLike, records: list[dict[str, Any]]) -> Path:
    """Rewrite ``log.jsonl`` atomically with one JSON line per record."""
    path = Path(run_dir) / LOG_FILE
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())
    return path
