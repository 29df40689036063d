"""Read and write map files (SPEC §2, ``sjalign.format = map/1``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sjalign.align.maps import AlignmentMap
from sjalign.errors import FileFormatError, SjalignError
from sjalign.io import MAP_FORMAT, read_safetensors, sha256_file, write_safetensors
from sjalign.shards import expand_index_paths

_VECTORS = ("a_mean", "a_std", "b_mean", "b_std")
# latents metadata that names what made the vectors; a map records its A side's (``encoder_a_spec``)
ENCODER_KEYS = ("encoder", "layer", "pooling")


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
    for key in ("W", *_VECTORS):
        if tensors[key].dtype.kind != "f":
            raise FileFormatError(f"{path}: '{key}' must be floating point, found {tensors[key].dtype}")
        if not np.isfinite(tensors[key]).all():
            raise FileFormatError(f"{path}: '{key}' contains NaN or Inf")
    for key in ("a_std", "b_std"):
        if not (tensors[key] > 0).all():
            raise FileFormatError(f"{path}: '{key}' must be > 0 everywhere (it divides or scales the latents); "
                                  f"{int((tensors[key] <= 0).sum())} of {tensors[key].size} entries are not")
    ids = tensors["train_state_ids"]
    if ids.ndim != 1:
        raise FileFormatError(f"{path}: 'train_state_ids' must be 1-D, got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise FileFormatError(f"{path}: 'train_state_ids' must be integers, found {ids.dtype}")
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


def fitted_on(a_paths: Sequence[str | os.PathLike], b_paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """Map metadata naming the pair a map is fitted on: ``fitted_on`` = JSON {"a": [fingerprint, ...], "b": [...]}.

    Fingerprints (:func:`sjalign.lazy_io.fingerprint`) read only each file's header and state
    ids, so checking a map against files later costs no second full read of large latents.
    """
    from sjalign.lazy_io import fingerprint

    return {"fitted_on": json.dumps({"a": [fingerprint(p) for p in a_paths], "b": [fingerprint(p) for p in b_paths]})}


def _fitted_on(meta: Mapping[str, str]) -> dict[str, list[str]] | None:
    """The map's recorded fingerprints ``{"a": [...], "b": [...]}``, or None (a map from before they were recorded)."""
    try:
        sides = json.loads(meta["fitted_on"])
        return {side: [str(h) for h in sides.get(side, [])] for side in ("a", "b")}
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError):
        return None


def _recorded(meta: Mapping[str, str]) -> tuple[frozenset[str], frozenset[str], str] | None:
    """The map's A and B inputs as (fingerprints or SHA-256 digests, ..., which kind), or None if unrecorded."""
    sides = _fitted_on(meta)
    if sides is not None:
        return frozenset(sides["a"]), frozenset(sides["b"]), "fingerprint"
    try:  # maps written before fingerprints: the inputs' SHA-256 (a full read of each file)
        inputs = json.loads(meta.get("inputs", "{}"))

        def side(entry) -> frozenset[str]:
            if "shards" in entry:
                return frozenset(str(s["sha256"]) for s in entry["shards"])
            return frozenset([str(entry["sha256"])])

        return side(inputs["a"]), side(inputs["b"]), "sha256"
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError):
        return None


def _identity(path, kind: str) -> str:
    """A file's identity as the map recorded it; for a shard index, its first shard's."""
    from sjalign.lazy_io import fingerprint

    path = expand_index_paths([path], verify=False)[0]
    return fingerprint(path) if kind == "fingerprint" else sha256_file(path)


def map_direction(meta: Mapping[str, str], map_path, a_path, b_path, d_a: int, d_b: int, shape) -> str:
    """Which way a map runs between latents files A (d_a) and B (d_b): ``a->b`` or ``b->a``.

    Decided by the inputs the map recorded when they match the files (in either order; a file
    matches a side when it is that side's input or one of its shards), else by the shape of W
    (d_b, d_a); a square map of unknown origin counts as a->b.

    Raises:
        SjalignError: W fits neither direction.
    """
    recorded = _recorded(meta)
    if recorded is not None:
        rec_a, rec_b, kind = recorded
        ha, hb = _identity(a_path, kind), _identity(b_path, kind)
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
        SjalignError: ``a_path`` is (one of the shards of) the map's B input and not of its A input.
    """
    recorded = _recorded(meta)
    if recorded is not None:
        rec_a, rec_b, kind = recorded
        h = _identity(a_path, kind)
        if h in rec_b and h not in rec_a:
            raise SjalignError(f"{map_path}: {a_path} is this map's target (B) latents; the map runs A -> B, "
                               "so swap the files or fit the reverse map")


def check_pair(meta: Mapping[str, str], map_path, sides: Mapping[str, Sequence[str | os.PathLike]], *,
               strict: bool = False) -> list[str]:
    """Say when a map is used on files other than those it was fitted on.

    Args:
        meta: the map's metadata (:func:`load_map`).
        sides: "a" and/or "b" -> the files given for that side (a side's shards).
        strict: refuse instead of warning.

    Returns:
        The mismatches found (each already warned about), empty when the files are the map's
        own or the map records no fingerprints (written before sjalign recorded them).

    Raises:
        SjalignError: a mismatch with ``strict``, naming the file, its fingerprint and the map's.
    """
    import warnings

    from sjalign.lazy_io import fingerprint

    recorded = _fitted_on(meta)
    if recorded is None:
        return []
    problems = []
    for side, paths in sides.items():
        known = recorded[side]
        for p in expand_index_paths(list(paths), verify=False):  # an index: its shards' identities
            h = fingerprint(p)
            if h not in known:
                theirs = ", ".join(k[:12] for k in known) or "none"
                problems.append(f"{map_path}: fitted on other {side.upper()} latents than {p} (fingerprint "
                                f"{h[:12]}; the map's {side.upper()}: {theirs})")
    if problems and strict:
        raise SjalignError(problems[0] + "; --strict refuses it")
    for problem in problems:
        warnings.warn(problem + "; scores may mean little (--strict refuses)", stacklevel=2)
    return problems


def check_encoder(meta: Mapping[str, str], map_path, a_path, a_meta: Mapping[str, str], *,
                  strict: bool = False) -> str | None:
    """Say when latents to push through a map come from another encoder than the map's A side.

    ``apply-map`` maps new states of A's encoder, so files differ from the map's by design;
    what must agree is the encoder spec (and layer, pooling) recorded in both.

    Returns:
        The mismatch (already warned about), or None.

    Raises:
        SjalignError: a mismatch with ``strict``.
    """
    import warnings

    try:
        spec = json.loads(meta["encoder_a_spec"])
    except (KeyError, TypeError, json.JSONDecodeError):
        spec = {"encoder": meta.get("encoder_a")} if meta.get("encoder_a") not in (None, "?") else {}
    differs = [f"{k} {a_meta.get(k, '?')!r} (map: {v!r})" for k, v in spec.items() if a_meta.get(k, "?") != v]
    if not differs:
        return None
    problem = f"{a_path}: not from the map's A encoder: {', '.join(differs)}"
    if strict:
        raise SjalignError(problem + f"; --strict refuses it ({map_path})")
    warnings.warn(problem + " (--strict refuses)", stacklevel=2)
    return problem
