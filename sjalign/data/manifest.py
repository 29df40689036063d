"""Manifests: synchronised multi-camera captures (nuScenes-style) as CSV or JSONL files.

One row per image, columns ``state_id, view, path[, label][, split]``:

- ``state_id``: the synchronised moment (a timestamp, a sample token, a frame number). When
  every value is an integer it is the state id; otherwise each value is hashed to a 63-bit
  id (BLAKE2b of its text), the same in every manifest and view.
- ``view``: the camera (``CAM_FRONT``, ``rear``, ...); ``--view NAME`` picks it, and the
  transforms of ``sjalign datasets`` may follow after ``+`` (``CAM_FRONT+pixel-shuffle``).
  View names cannot contain ``+``.
- ``path``: the image, relative to the manifest's folder (or absolute); read with Pillow as RGB.
- ``label`` (optional): an integer, or a class name (classes are then numbered in sorted order).
- ``split`` (optional): ``train`` or ``test`` (``val``/``validation`` and ``0``/``1`` too); without
  it a seeded split by state id puts about 20 % of the states in test. A state's rows must agree
  on label and split.

CSV files have a header row (:mod:`csv`); JSONL files hold one JSON object per line.
A state seen by only one camera cannot be paired and is dropped (with a count).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sjalign.data.lazy import FileSource
from sjalign.data.selection import Subset, seeded_is_test, select_states
from sjalign.errors import DataError

REQUIRED = ("state_id", "view", "path")
OPTIONAL = ("label", "split")
MANIFEST_SUFFIXES = (".csv", ".jsonl")
_SPLIT_VALUES = {"train": False, "0": False, "test": True, "1": True, "val": True, "validation": True}
SHOW = 10


def _first(items: list, n: int = SHOW) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (", ..." if len(items) > n else "")


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: one entry per (state, view) image.

    Attributes:
        path: the manifest file.
        state_ids: (m,) int64 per row.   views: m view names.   paths: m image paths.
        labels: (m,) int64 or None.   is_test: (m,) bool (official or seeded).
        has_split: whether the file carries a split column.
        class_names: label names when labels were given as names, else None.
        view_names: sorted distinct views.   dropped_single: states dropped for having one view.
    """

    path: Path
    state_ids: np.ndarray
    views: list[str]
    paths: list[Path]
    labels: np.ndarray | None
    is_test: np.ndarray
    has_split: bool
    class_names: list[str] | None
    view_names: list[str]
    dropped_single: int


def _read_rows(path: Path) -> tuple[list[dict], list[int], list[str]]:
    """Rows as dicts of strings (or JSON values), their line numbers, and the columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    rows, lines = [], []
    if path.suffix.lower() == ".jsonl":
        columns: set[str] = set()
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {i}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {i}: expected a JSON object, got {type(obj).__name__}")
            rows.append(obj)
            lines.append(i)
            columns |= set(obj)
        return rows, lines, sorted(columns)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        reader.fieldnames = [c.strip() for c in (reader.fieldnames or [])]
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    return rows, lines, list(reader.fieldnames or [])


def _text(value) -> str:
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else str(value)


def _hash_id(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") & (2 ** 63 - 1)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and check a manifest (see the module docstring for the format).

    Raises:
        DataError (one line each): unreadable file; missing columns; rows with a missing value
            (how many, the first 10 line numbers); images that do not exist (how many, the first
            10 paths); duplicate (state_id, view) rows; a state whose rows disagree on label or
            split; hashed state ids that collide; no state with two or more views.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: manifest not found")
    rows, lines, columns = _read_rows(p)
    missing_cols = [c for c in REQUIRED if c not in columns]
    if missing_cols:
        raise DataError(f"{p}: missing column(s) {', '.join(missing_cols)} (a manifest has columns "
                        f"state_id, view, path[, label][, split]; found: {', '.join(columns) or 'none'})")
    if not rows:
        raise DataError(f"{p}: the manifest has no rows")
    wanted = list(REQUIRED) + [c for c in OPTIONAL if c in columns]
    values = {c: [_text(r.get(c)) for r in rows] for c in wanted}
    bad = [line for k, line in enumerate(lines) if any(not values[c][k] for c in wanted)]
    if bad:
        raise DataError(f"{p}: {len(bad)} row(s) with a missing {'/'.join(wanted)} value (line {_first(bad)})")
    views = values["view"]
    plus = sorted({v for v in views if "+" in v})
    if plus:
        raise DataError(f"{p}: view names cannot contain '+' (found {_first(plus)})")
    # state ids
    raw_ids = values["state_id"]
    try:
        ids = np.array([int(v) for v in raw_ids], dtype=np.int64)
    except (ValueError, OverflowError):
        hashed: dict[int, str] = {}
        ids = np.empty(len(raw_ids), dtype=np.int64)
        for k, key in enumerate(raw_ids):
            h = _hash_id(key)
            if hashed.setdefault(h, key) != key:
                raise DataError(f"{p}: state ids '{hashed[h]}' and '{key}' hash to the same id; rename one")
            ids[k] = h
    # duplicates
    pairs = list(zip(ids.tolist(), views))  # parsed ids: '1' and '01' are one state
    seen: dict[tuple, int] = {}
    dups = []
    for k, pair in enumerate(pairs):
        if pair in seen:
            dups.append(lines[k])
        seen.setdefault(pair, k)
    if dups:
        raise DataError(f"{p}: {len(dups)} duplicate (state_id, view) row(s) (line {_first(dups)})")
    # images
    base = p.parent
    paths = [Path(v) if Path(v).is_absolute() else base / v for v in values["path"]]
    missing = [v for v, q in zip(values["path"], paths) if not q.is_file()]
    if missing:
        raise DataError(f"{p}: {len(missing)} image(s) not found (first {min(len(missing), SHOW)}: {_first(missing)})")
    # labels and split
    labels, class_names = None, None
    if "label" in columns:
        try:
            labels = np.array([int(v) for v in values["label"]], dtype=np.int64)
        except ValueError:
            class_names = sorted(set(values["label"]))
            index = {n: i for i, n in enumerate(class_names)}
            labels = np.array([index[v] for v in values["label"]], dtype=np.int64)
    has_split = "split" in columns
    if has_split:
        bad_split = [(lines[k], v) for k, v in enumerate(values["split"]) if v.lower() not in _SPLIT_VALUES]
        if bad_split:
            raise DataError(f"{p}: {len(bad_split)} row(s) with an invalid split (line "
                            f"{_first([f'{ln} {v!r}' for ln, v in bad_split])}; use train or test)")
        is_test = np.array([_SPLIT_VALUES[v.lower()] for v in values["split"]], dtype=bool)
    else:
        is_test = seeded_is_test(ids)
    for name, arr in (("label", labels), ("split", is_test if has_split else None)):
        if arr is None:
            continue
        order = np.lexsort((arr, ids))
        s_ids, s_val = ids[order], arr[order]
        same_state = s_ids[1:] == s_ids[:-1]
        clash = np.unique(s_ids[1:][same_state & (s_val[1:] != s_val[:-1])])
        if len(clash):
            keys = sorted({raw_ids[k] for k in np.flatnonzero(np.isin(ids, clash))})
            raise DataError(f"{p}: {len(clash)} state(s) whose rows disagree on {name} (state_id {_first(keys)})")
    # states with one view
    uniq, counts = np.unique(ids, return_counts=True)
    single = uniq[counts < 2]
    keep = ~np.isin(ids, single)
    if not keep.any():
        raise DataError(f"{p}: every state has only one view ({len(uniq)} state(s)); nothing can be paired")
    if len(single):
        warnings.warn(f"{p}: dropped {len(single)} state(s) with only one view", stacklevel=2)
    k_idx = np.flatnonzero(keep)
    return Manifest(
        path=p, state_ids=ids[k_idx], views=[views[k] for k in k_idx], paths=[paths[k] for k in k_idx],
        labels=None if labels is None else labels[k_idx], is_test=is_test[k_idx], has_split=has_split,
        class_names=class_names, view_names=sorted({views[k] for k in k_idx}), dropped_single=len(single),
    )


def open_manifest(path: str | os.PathLike, selector: str | None, subset: Subset = Subset()) -> FileSource:
    """The rows of one camera of a manifest for a subset of states.

    Candidates are every (multi-view) state of the manifest, whatever the view, so two cameras
    select the same states; selected states the camera did not see are left out (with a count).
    ``--max-states`` takes states in hashed id order.

    Raises:
        DataError: see :func:`read_manifest`; an unknown view (the message lists the manifest's
            views); an empty selection.
    """
    m = read_manifest(path)
    if selector is None or selector not in m.view_names:
        raise DataError(f"{m.path}: unknown view '{selector}' (this manifest's views: {', '.join(m.view_names)})")
    uniq, first = np.unique(m.state_ids, return_index=True)
    labels = None if m.labels is None else m.labels[first]
    sel = select_states(uniq, m.is_test[first], labels, subset,
                        class_names=m.class_names, where=str(m.path))
    chosen = set(uniq[sel].tolist())
    rows = np.array([k for k, (s, v) in enumerate(zip(m.state_ids, m.views)) if v == selector and int(s) in chosen],
                    dtype=np.int64)
    if len(rows) < len(chosen):
        warnings.warn(f"{m.path}: {len(chosen) - len(rows)} selected state(s) have no '{selector}' image; "
                      "left out of this view", stacklevel=2)
    if len(rows) == 0:
        raise DataError(f"{m.path}: no '{selector}' images in the selection")
    rows = rows[np.argsort(m.state_ids[rows], kind="stable")]
    return FileSource(m.paths, name=str(path), state_ids=m.state_ids[rows],
                      labels=None if m.labels is None else m.labels[rows], is_test=m.is_test[rows],
                      class_names=m.class_names, rows=rows)


def is_manifest(path: str | os.PathLike) -> bool:
    """A ``.jsonl`` file, or a ``.csv`` file whose header has a ``path`` column (else: a text dataset)."""
    p = Path(path)
    if p.suffix.lower() == ".jsonl":
        return True
    if p.suffix.lower() != ".csv" or not p.is_file():
        return False
    try:
        with open(p, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return "path" in [h.strip() for h in header]


def describe_manifest(path: str | os.PathLike) -> dict:
    """Views, states, images per view, classes and split of a manifest."""
    m = read_manifest(path)
    per_view = {v: sum(1 for x in m.views if x == v) for v in m.view_names}
    uniq, first = np.unique(m.state_ids, return_index=True)
    return {"views": per_view, "states": len(uniq), "test_states": int(m.is_test[first].sum()),
            "split": "from the file" if m.has_split else "seeded by state id (20 % test)",
            "classes": m.class_names if m.class_names else (
                None if m.labels is None else sorted(set(m.labels.tolist())))}
