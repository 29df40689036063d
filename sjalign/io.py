"""safetensors files: latents, maps, probes; validation, atomic writes, provenance (SPEC §2).

Never unpickles: every file sjalign reads or writes is safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sjalign import __version__
from sjalign.errors import FileFormatError, ShapeError, SjalignError
from sjalign.outputs import atomic_file, atomic_write_bytes, check_output  # noqa: F401 - re-exported

# Files sjalign never loads (pickled PyTorch / NumPy checkpoints); named in error messages.
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".pkl", ".ckpt", ".pickle")
LATENTS_FORMAT = "latents/1"
MAP_FORMAT = "map/1"
PROBE_FORMAT = "probe/1"


_DIGESTS: dict[tuple[int, int, int, int], str] = {}  # (device, inode, size, mtime ns) -> digest, this process


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes.

    A file hashed before in this process and not changed since (same device, inode, size and
    modification time in ns) is not read again: checking a shard index and recording the same
    shards' digests in a map's provenance cost one read, not two."""
    key = file_identity(path)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def file_identity(path: str | os.PathLike) -> tuple[int, int, int, int]:
    """(device, inode, size, modification time in ns): a file's identity for the digest cache."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def remember_sha256(path: str | os.PathLike, digest: str, key: tuple[int, int, int, int]) -> None:
    """Record a digest computed elsewhere (e.g. while scanning the file) for :func:`sha256_file`;
    ``key`` is the file's identity taken *before* it was read, so a file changed meanwhile is read again."""
    if file_identity(path) == key:
        _DIGESTS[key] = digest


def nonfinite_error(name: str, key: str, bad: int, n: int) -> SjalignError:
    """The one error for a tensor with NaN/Inf rows: ``"{name}: '{key}' contains NaN or Inf in {bad} of {n} rows"``."""
    return SjalignError(f"{name}: '{key}' contains NaN or Inf in {bad} of {n} rows")


def provenance(command: str, config: Mapping | None = None,
               inputs: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]] | None = None, *,
               hashes: Mapping[str, str] | None = None) -> dict[str, str]:
    """Metadata entries that say how a file was made: command line, version, config, inputs' SHA-256.

    Args:
        inputs: role -> one path, or a list of paths (the shards of one side). One path is
            recorded as ``{"path", "sha256"}``; several as ``{"shards": [{"path", "sha256"}, ...]}``.
        hashes: ``str(path) -> sha256`` already computed (e.g. by :class:`sjalign.lazy_io.BackgroundScan`
            while the inputs were being read); the others are hashed here.
    """
    meta = {
        "sjalign.command": command,
        "sjalign.argv": json.dumps(sys.argv),
        "version": __version__,
        "config": json.dumps(dict(config or {}), sort_keys=True, default=str),
    }
    known = dict(hashes or {})

    def entry(p) -> dict[str, str]:
        return {"path": str(p), "sha256": known.get(str(p)) or sha256_file(p)}

    if inputs:
        record = {}
        for role, p in inputs.items():
            if isinstance(p, (list, tuple)):
                record[role] = entry(p[0]) if len(p) == 1 else {"shards": [entry(q) for q in p]}
            else:
                record[role] = entry(p)
        meta["inputs"] = json.dumps(record)
    return meta


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str],
                      *, force: bool = False) -> Path:
    """Atomically write numpy arrays as a safetensors file with str -> str metadata.

    Without ``force`` an output that exists, or appears while the file is written, is refused
    (:func:`sjalign.outputs.publish`).
    """
    from safetensors.numpy import save

    path = check_output(path, force)
    arrays = {k: np.require(v, requirements="C") for k, v in tensors.items()}  # keeps 0-d arrays 0-d
    atomic_write_bytes(path, save(arrays, metadata={k: str(v) for k, v in metadata.items()}), replace=force)
    return path


def write_safetensors_torch(path: str | os.PathLike, tensors: Mapping, metadata: Mapping[str, str], *,
                            force: bool = False) -> Path:
    """Atomically write torch tensors (moved to CPU, contiguous; 0-d buffers kept 0-d) as safetensors."""
    from safetensors.torch import save

    path = check_output(path, force)
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={k: str(v) for k, v in metadata.items()})
    atomic_write_bytes(path, data, replace=force)
    return path


def read_safetensors(path: str | os.PathLike, expected_format: str | None = None, *,
                     framework: str = "numpy") -> tuple[dict, dict[str, str]]:
    """Read a safetensors file into arrays (numpy, or torch with ``framework="pt"``) and its metadata.

    Raises:
        FileFormatError: missing file, not safetensors, or ``sjalign.format`` differs from
            ``expected_format``.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework=framework) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a corrupt header
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FileFormatError(f"{path}: not a valid safetensors file ({reason})") from None
    if expected_format is not None:
        tag = metadata.get("sjalign.format")
        if tag != expected_format:
            got = f"'{tag}'" if tag else "no sjalign.format tag"
            raise FileFormatError(f"{path}: expected an sjalign {expected_format} file, found {got}")
    return tensors, metadata


@dataclass
class Latents:
    """One latents file: rows are states, paired across files by state id.

    Attributes:
        latents: (n, d) float32.
        state_ids: (n,) int64, unique.
        labels: (n,) int64 or None.
        split: (n,) uint8 (0 = train, 1 = test) or None.
        metadata: str -> str (encoder, dataset, view, layer, pooling, config, ...).
        path: where it was read from, if anywhere.
        layers: optional {name: (n, d_k) float32}, one per encoder layer (``--layer all``);
            stored as tensors ``layer.NAME``.
    """

    latents: np.ndarray
    state_ids: np.ndarray
    labels: np.ndarray | None = None
    split: np.ndarray | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    layers: dict[str, np.ndarray] | None = None

    @property
    def dim(self) -> int:
        return int(self.latents.shape[1])

    @property
    def name(self) -> str:
        return str(self.path) if self.path else "<latents>"


def all_unique(ids: np.ndarray) -> bool:
    """True when no value of the 1-D array repeats (a sort: faster than ``np.unique``'s hash path)."""
    s = np.sort(ids, kind="stable")
    return not bool((s[1:] == s[:-1]).any())


def validate_latents(lat: Latents) -> Latents:
    """Check shapes, dtypes, finiteness and unique state ids.

    Raises:
        ShapeError / SjalignError naming the file and the problem.
    """
    name = lat.name
    if lat.latents.ndim != 2 or lat.latents.shape[0] == 0 or lat.latents.shape[1] == 0:
        raise ShapeError(f"{name}: 'latents' must be a non-empty (n, d) array, got shape {lat.latents.shape}")
    n = lat.latents.shape[0]
    for key in ("state_ids", "labels", "split"):
        arr = getattr(lat, key)
        if arr is not None and arr.shape != (n,):
            raise ShapeError(f"{name}: '{key}' has shape {arr.shape}, expected ({n},) to match 'latents'")
    for key, arr in [("latents", lat.latents), *((f"layer.{k}", v) for k, v in (lat.layers or {}).items())]:
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ShapeError(f"{name}: '{key}' has shape {arr.shape}, expected ({n}, d)")
        if not np.isfinite(arr).all():
            raise nonfinite_error(name, key, int((~np.isfinite(arr)).any(axis=1).sum()), n)
    if not all_unique(lat.state_ids):
        raise SjalignError(f"{name}: state ids are not unique")
    if lat.split is not None and not np.isin(lat.split, (0, 1)).all():
        raise SjalignError(f"{name}: 'split' must hold only 0 (train) and 1 (test)")
    return lat


def load_latents(path: str | os.PathLike) -> Latents:
    """Read and validate a whole latents file (SPEC §2, ``sjalign.format = latents/1``), or the
    latent set of a shard index (``NAME.safetensors.index.json``, :mod:`sjalign.shards`).

    The file meets the same contract as every lazily opened one
    (:func:`sjalign.lazy_io.open_latents`: dtypes, ids, split, shapes); float16, bfloat16 and
    float64 tensors are read as float32 (a float64 value beyond float32's range becomes Inf
    and is refused with the rest of the non-finite values).

    Raises:
        FileFormatError / ShapeError / SjalignError: naming the file, the tensor and the problem.
    """
    import torch
    from safetensors import safe_open

    from sjalign.lazy_io import open_latents
    from sjalign.shards import is_index, load_index

    if is_index(path):  # shards written by several embed processes: one latent set
        return load_index(path)
    lazy = open_latents(path)
    keys = ("latents", *(f"layer.{name}" for name in lazy.layer_names))
    with safe_open(str(lazy.path), framework="pt") as f:
        arrays = {k: f.get_tensor(k).to(torch.float32).numpy() for k in keys}
    lat = Latents(latents=arrays["latents"], state_ids=lazy.state_ids, labels=lazy.labels, split=lazy.split,
                  metadata=lazy.metadata, path=lazy.path,
                  layers={name: arrays[f"layer.{name}"] for name in lazy.layer_names} or None)
    return validate_latents(lat)


def concat_latents(parts: Sequence[Latents], *, metadata: Mapping[str, str] | None = None,
                   path: str | os.PathLike | None = None) -> Latents:
    """Rows of several latents (shards, parts) stacked in order into one, validated.

    Labels and split are kept when every part has them; layers must match by name.

    Raises:
        ShapeError: parts of different width or layers.  SjalignError: repeated state ids.
    """
    first = parts[0]
    for p in parts[1:]:
        if p.dim != first.dim or sorted(p.layers or {}) != sorted(first.layers or {}):
            raise ShapeError(f"{first.name} and {p.name}: parts of one latent set differ in width or layers")

    def stacked(key: str) -> np.ndarray | None:
        arrays = [getattr(p, key) for p in parts]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    return validate_latents(Latents(
        latents=np.concatenate([p.latents for p in parts]), state_ids=stacked("state_ids"), labels=stacked("labels"),
        split=stacked("split"), metadata=dict(first.metadata if metadata is None else metadata),
        path=None if path is None else Path(path),
        layers={k: np.concatenate([p.layers[k] for p in parts]) for k in first.layers} if first.layers else None))


def save_latents(path: str | os.PathLike, lat: Latents, metadata: Mapping[str, str], *, force: bool = False) -> Path:
    """Validate and atomically write a latents file; ``metadata`` adds to ``lat.metadata``."""
    validate_latents(lat)
    tensors = {"latents": lat.latents.astype(np.float32), "state_ids": lat.state_ids.astype(np.int64)}
    if lat.labels is not None:
        tensors["labels"] = lat.labels.astype(np.int64)
    if lat.split is not None:
        tensors["split"] = lat.split.astype(np.uint8)
    for key, arr in (lat.layers or {}).items():
        tensors[f"layer.{key}"] = arr.astype(np.float32)
    meta = {**lat.metadata, **metadata, "sjalign.format": LATENTS_FORMAT}
    return write_safetensors(path, tensors, meta, force=force)
