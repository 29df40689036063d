"""Text datasets for text encoders: a ``.txt`` file (one item per line) or a ``.csv`` file.

``.txt``: UTF-8, one item per line; the state id is the 0-based line number. Blank lines are
skipped (their ids are simply not used), so ids stay stable when lines are blanked out.

``.csv`` (header row, read with the :mod:`csv` module): column ``text`` is required; optional
columns ``state_id`` (unique integers; default: the 0-based data-row number), ``label``
(integers) and ``split`` (``train``/``test`` or ``0``/``1``). Rows with an empty text are skipped.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sjalign.data import TEXT_SUFFIXES
from sjalign.errors import DataError

SPLITS = ("all", "train", "test")
_SPLIT_VALUES = {"train": False, "0": False, "test": True, "1": True}


@dataclass(frozen=True)
class TextSet:
    """Strings of one text dataset selection.

    Attributes:
        texts: n strings.
        state_ids: (n,) int64 state ids.
        labels: (n,) int64 class labels, or None when the file has none.
        is_test: (n,) bool, True for rows of the test split, or None when the file has no split.
    """

    texts: list[str]
    state_ids: np.ndarray
    labels: np.ndarray | None
    is_test: np.ndarray | None

    def __len__(self) -> int:
        return len(self.texts)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: text dataset not found")
    try:
        return path.read_text(encoding="utf-8-sig")  # a leading BOM is dropped
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _load_txt(path: Path):
    texts, ids = [], []
    for i, line in enumerate(_read_text(path).split("\n")):  # only \n (and \r\n) end a line
        line = line.removesuffix("\r")
        if line.strip():
            texts.append(line)
            ids.append(i)
    return texts, np.asarray(ids, dtype=np.int64), None, None


def _int_column(path: Path, rows: list[dict], column: str, line_of) -> np.ndarray:
    values = []
    for k, row in enumerate(rows):
        raw = (row.get(column) or "").strip()
        try:
            values.append(int(raw))
        except ValueError:
            raise DataError(f"{path}: line {line_of(k)}: invalid {column} '{raw}' (expected an integer)") from None
    return np.asarray(values, dtype=np.int64)


def _load_csv(path: Path):
    content = _read_text(path)
    reader = csv.DictReader(io.StringIO(content, newline=""))
    rows, lines = [], []
    try:
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)  # file line where the row ends (fields may span lines)
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    if "text" not in columns:
        found = ", ".join(repr(c) for c in columns) if columns else "none"
        raise DataError(f"{path}: no 'text' column (columns found: {found})")

    def line_of(k: int) -> int:
        return lines[k]

    texts = [row.get("text") or "" for row in rows]
    if "state_id" in columns:
        ids = _int_column(path, rows, "state_id", line_of)
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1]
            shown = ", ".join(str(int(v)) for v in dup[:5]) + (" ..." if len(dup) > 5 else "")
            raise DataError(f"{path}: duplicate state_id values ({shown}); state ids must be unique")
    else:
        ids = np.arange(len(rows), dtype=np.int64)
    labels = _int_column(path, rows, "label", line_of) if "label" in columns else None
    is_test = None
    if "split" in columns:
        flags = []
        for k, row in enumerate(rows):
            raw = (row.get("split") or "").strip().lower()
            if raw not in _SPLIT_VALUES:
                raise DataError(f"{path}: line {line_of(k)}: invalid split '{raw}' (use train/test or 0/1)")
            flags.append(_SPLIT_VALUES[raw])
        is_test = np.asarray(flags, dtype=bool)
    keep = np.asarray([bool(t.strip()) for t in texts], dtype=bool)  # empty texts are skipped like blank lines
    texts = [t for t, k in zip(texts, keep) if k]
    return (texts, ids[keep], None if labels is None else labels[keep],
            None if is_test is None else is_test[keep])


def load_text_dataset(path: str | os.PathLike, *, split: str = "all", max_states: int | None = None) -> TextSet:
    """Load a text dataset for a text encoder.

    Args:
        path: a ``.txt`` or ``.csv`` file (see the module docstring for the formats).
        split: ``all``, or ``train``/``test`` (needs a ``split`` column in a CSV file).
        max_states: keep only the first N items of the selection.

    Returns:
        A :class:`TextSet`.

    Raises:
        DataError: missing or unreadable file, no ``text`` column, invalid or duplicate state ids,
            invalid labels or split values, a split filter without a split column, or an empty selection.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{p}: text datasets are .txt or .csv files")
    if split not in SPLITS:
        raise DataError(f"{p}: unknown split '{split}' (use {', '.join(SPLITS)})")
    if max_states is not None and max_states < 1:
        raise DataError(f"{p}: --max-states must be at least 1, got {max_states}")
    texts, ids, labels, is_test = _load_txt(p) if suffix == ".txt" else _load_csv(p)
    if split != "all":
        if is_test is None:
            raise DataError(f"{p}: --split {split} needs a 'split' column (train/test or 0/1); "
                            "this file has none (use --split all)")
        sel = is_test if split == "test" else ~is_test
        texts = [t for t, k in zip(texts, sel) if k]
        ids, is_test = ids[sel], is_test[sel]
        labels = None if labels is None else labels[sel]
    if max_states is not None:
        texts, ids = texts[:max_states], ids[:max_states]
        labels = None if labels is None else labels[:max_states]
        is_test = None if is_test is None else is_test[:max_states]
    if not texts:
        what = "" if split == "all" else f" in split '{split}'"
        raise DataError(f"{p}: no text items{what} (the selection is empty)")
    return TextSet(list(texts), ids.astype(np.int64), None if labels is None else labels.astype(np.int64),
                   None if is_test is None else is_test.astype(bool))
