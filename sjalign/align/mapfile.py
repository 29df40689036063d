"""Read and write map files (SPEC §2, ``sjalign.format = map/1``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from sjalign.align.maps import AlignmentMap
from sjalign.errors import FileFormatError, SjalignError
from sjalign.io import MAP_FORMAT, read_safetensors, sha256_file, write_safetensors

_VECTORS = ("a_mean", "a_std", "b_mean", "b_std")


def save_map(path: str | os.PathLike, amap: AlignmentMap, metadata: Mapping[str, str], *, force: bool = False) -> Path:
    """Atomically write a map file; ``metadata`` carries provenance and the inputs' encoder specs."""
    tensors = {"W": amap.W.astype(np.float32), "train_state_ids": amap.train_state_ids.astype(np.int64)}
    tensors.update({k: getattr(amap, k).astype(np.float32) for k in _VECTORS})
    meta = {**metadata, "sjalign.format": MAP_FORMAT, "method": amap.method, "lambda": repr(amap.lam),
            "n_train": str(len(amap.train_state_ids)), "info": json.dumps(amap.info, default=str)}
    return write_safetensors(path, tensors, meta, force=force)


def load_map(path: str | os.PathLike) -> tuple[AlignmentMap, dict[str, str]]:
    """Read and check a map file.

    Raises:
        FileFormatError: missing tensors, inconsistent shapes, or non-finite values.
    """
    tensors, meta = read_safetensors(path, MAP_FORMAT)
    missing = [k for k in ("W", "train_state_ids", *_VECTORS) if k not in tensors]
    if missing:
        raise FileFormatError(f"{path}: missing tensor(s) {', '.join(missing)}")
    w = tensors["W"]
    if w.ndim != 2:
        raise FileFormatError(f"{path}: W must be 2-D (d_b, d_a), got shape {w.shape}")
    d_b, d_a = w.shape
    for key, d in (("a_mean", d_a), ("a_std", d_a), ("b_mean", d_b), ("b_std", d_b)):
        if tensors[key].shape != (d,):
            raise FileFormatError(f"{path}: '{key}' has shape {tensors[key].shape}, expected ({d},) for W {w.shape}")
    if not all(np.isfinite(tensors[k]).all() for k in ("W", *_VECTORS)):
        raise FileFormatError(f"{path}: map contains NaN or Inf")
    if tensors["train_state_ids"].ndim != 1:
        raise FileFormatError(f"{path}: 'train_state_ids' must be 1-D, got shape {tensors['train_state_ids'].shape}")
    try:
        info = json.loads(meta.get("info", "{}"))
        lam = float(meta.get("lambda", "0"))
    except ValueError:
        raise FileFormatError(f"{path}: bad 'lambda' or 'info' metadata") from None
    if not isinstance(info, dict):
        raise FileFormatError(f"{path}: metadata 'info' must be a JSON object")
    amap = AlignmentMap(w.astype(np.float32), *(tensors[k].astype(np.float32) for k in _VECTORS),
                        tensors["train_state_ids"].astype(np.int64), meta.get("method", "?"), lam, info)
    return amap, meta


def _recorded_hashes(meta: Mapping[str, str]) -> tuple[frozenset[str], frozenset[str]] | None:
    """SHA-256 digests of the map's A and B inputs (several per side when fitted on shards)."""
    try:
        inputs = json.loads(meta.get("inputs", "{}"))

        def side(entry) -> frozenset[str]:
            if "shards" in entry:
                return frozenset(str(s["sha256"]) for s in entry["shards"])
            return frozenset([str(entry["sha256"])])

        return side(inputs["a"]), side(inputs["b"])
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError):
        return None


def map_direction(meta: Mapping[str, str], map_path, a_path, b_path, d_a: int, d_b: int, shape) -> str:
    """Which way a map runs between latents files A (d_a) and B (d_b): ``a->b`` or ``b->a``.

    Decided by the input hashes the map recorded when they match the files (in either
    order; a file matches a side when it is that side's input or one of its shards), else by
    the shape of W (d_b, d_a); a square map of unknown origin counts as a->b.

    Raises:
        SjalignError: W fits neither direction.
    """
    recorded = _recorded_hashes(meta)
    if recorded is not None:
        ha, hb = sha256_file(a_path), sha256_file(b_path)
        rec_a, rec_b = recorded
        if ha in rec_a and hb in rec_b:
            return "a->b"
        if ha in rec_b and hb in rec_a:
            return "b->a"
    if tuple(shape) == (d_b, d_a):
        return "a->b"
    if tuple(shape) == (d_a, d_b):
        return "b->a"
    raise SjalignError(f"{map_path}: map W {tuple(shape)} fits neither {a_path} ({d_a}-d) -> {b_path} ({d_b}-d) "
                       "nor the reverse")


def check_source(meta: Mapping[str, str], map_path, a_path) -> None:
    """Refuse source latents that the map recorded as its *target* input (a map applied backwards).

    Raises:
        SjalignError: ``a_path`` has the hash of (one of the shards of) the map's B input and
            not of its A input.
    """
    recorded = _recorded_hashes(meta)
    if recorded is not None:
        h = sha256_file(a_path)
        if h in recorded[1] and h not in recorded[0]:
            raise SjalignError(f"{map_path}: {a_path} is this map's target (B) latents; the map runs A -> B, "
                               "so swap the files or fit the reverse map")
