"""Read and write map files (SPEC §2, ``sjalign.format = map/1``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from sjalign.align.maps import AlignmentMap
from sjalign.errors import FileFormatError
from sjalign.io import MAP_FORMAT, read_safetensors, write_safetensors

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
    try:
        info = json.loads(meta.get("info", "{}"))
        lam = float(meta.get("lambda", "0"))
    except ValueError:
        raise FileFormatError(f"{path}: bad 'lambda' or 'info' metadata") from None
    amap = AlignmentMap(w.astype(np.float32), *(tensors[k].astype(np.float32) for k in _VECTORS),
                        tensors["train_state_ids"].astype(np.int64), meta.get("method", "?"), lam, info)
    return amap, meta
