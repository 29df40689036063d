"""Which states of a dataset a command uses: ``--split``, ``--classes``, ``--max-states``.

Selections are made on **states**, never on images, and never depend on the view: the
candidates are every state of the dataset, so ``embed --view A`` and ``embed --view B``
with the same options select the same states and their latents pair up. A state has one
train/test assignment whatever the view (the official split where the format has one,
else :func:`seeded_is_test`), so a state's views never straddle train and test.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np

from sjalign.errors import DataError

SPLITS = ("train", "test", "all")
DEFAULT_TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class Subset:
    """The subset options of one command (recorded in every latents file).

    Attributes:
        split: ``train``, ``test`` or ``all``.
        classes: class tokens as the user gave them (label integers, or class names where the
            dataset has names), or None for every class.
        max_states: keep at most N states (train and test in proportion), or None.
    """

    split: str = "all"
    classes: tuple[str, ...] | None = None
    max_states: int | None = None

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise DataError(f"unknown split '{self.split}' (use train, test or all)")
        if self.max_states is not None and self.max_states < 1:
            raise DataError(f"--max-states must be at least 1, got {self.max_states}")
        if self.classes is not None and not self.classes:
            raise DataError("--classes is empty (give labels or class names separated by commas)")

    def to_dict(self) -> dict:
        """JSON-able form: ``{"split", "classes", "max_states"}``."""
        d = asdict(self)
        d["classes"] = None if self.classes is None else list(self.classes)
        return d


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    """``"0,3,7"`` or ``"cat,dog"`` -> ("0", "3", "7"); None or "" -> None (every class)."""
    if text is None or not text.strip():
        return None
    return tuple(t.strip() for t in text.split(",") if t.strip())


def resolve_classes(tokens: tuple[str, ...], class_names: list[str] | None, labels: np.ndarray | None,
                    where: str) -> np.ndarray:
    """Class tokens -> label integers: a token that names a class (case-insensitive) is that class,
    else it must be an integer label.

    Raises:
        DataError: the dataset has no labels, or a token is neither a class name nor a label present.
    """
    if labels is None:
        raise DataError(f"{where}: --classes needs labels, and this dataset has none")
    names = {n.lower(): i for i, n in enumerate(class_names or [])}
    present = set(np.unique(labels).tolist())
    out = []
    for tok in tokens:
        if tok.lower() in names:
            out.append(names[tok.lower()])
            continue
        try:
            value = int(tok)
        except ValueError:
            value = None
        if value is None or (value not in present and not (class_names and 0 <= value < len(class_names))):
            known = ", ".join(class_names) if class_names else ", ".join(str(v) for v in sorted(present))
            raise DataError(f"{where}: unknown class '{tok}' in --classes (known: {known})")
        out.append(value)
    return np.asarray(sorted(set(out)), dtype=np.int64)


def hash_keys(state_ids: np.ndarray, seed: int = SPLIT_SEED) -> np.ndarray:
    """A pseudo-random key in [0, 2^32) per state id: CRC-32 of (seed, id) as int64 bytes.

    A state's key depends only on its id and the seed, never on which other states exist.
    """
    ids = np.asarray(state_ids, dtype=np.int64)
    return np.array([zlib.crc32(np.array([seed, s], dtype=np.int64).tobytes()) for s in ids], dtype=np.uint64)


def seeded_is_test(state_ids: np.ndarray, test_fraction: float = DEFAULT_TEST_FRACTION,
                   seed: int = SPLIT_SEED) -> np.ndarray:
    """Seeded train/test assignment for formats without an official split.

    A state is test when its :func:`hash_keys` key is below ``test_fraction · 2^32``; the
    assignment of one state never depends on the others, so every view, file and subset
    agrees on it (about ``test_fraction`` of the states are test).

    Returns:
        (n,) bool, True = test.
    """
    return hash_keys(state_ids, seed) < np.uint64(int(test_fraction * 2 ** 32))


def select_states(state_ids: np.ndarray, is_test: np.ndarray | None, labels: np.ndarray | None,
                  subset: Subset, *, class_names: list[str] | None = None, where: str = "dataset",
                  order: str = "hash") -> np.ndarray:
    """Indices (ascending) of the states a subset keeps.

    Steps: ``split`` (needs ``is_test`` unless ``all``), then ``classes``, then ``max_states``:
    N states of which ``floor(N · t)`` (at least 1 when N > 1 and test states exist) are test,
    t being the test share of the candidates, the rest train. Within each part the states are
    taken in ``order``: ``file`` (row order, as Fashion-MNIST always did) or ``hash`` (by
    :func:`hash_keys`, so a subset of a class-sorted file still covers every class).

    Args:
        state_ids: (n,) int64 candidate states (one row per state).
        is_test: (n,) bool or None (no split known: ``--split train|test`` is refused).
        labels: (n,) int64 or None.

    Raises:
        DataError: a split without split information, unknown classes, or an empty selection.
    """
    n = len(state_ids)
    keep = np.ones(n, dtype=bool)
    if subset.split != "all":
        if is_test is None:
            raise DataError(f"{where}: --split {subset.split} needs a train/test split, and this dataset has none")
        keep &= is_test if subset.split == "test" else ~is_test
    if subset.classes is not None:
        wanted = resolve_classes(subset.classes, class_names, labels, where)
        keep &= np.isin(labels, wanted)
    idx = np.flatnonzero(keep)
    if subset.max_states is not None and len(idx) > subset.max_states:
        m = subset.max_states
        if order == "hash":
            idx = idx[np.lexsort((state_ids[idx], hash_keys(state_ids[idx])))]
        test_part = np.zeros(len(idx), bool) if is_test is None else is_test[idx]
        tests, trains = idx[test_part], idx[~test_part]
        n_test = int(m * len(tests) // len(idx))
        if m > 1 and len(tests) and len(trains):
            n_test = max(1, n_test)
        n_test = min(n_test, len(tests))
        n_train = min(m - n_test, len(trains))
        idx = np.sort(np.concatenate([trains[:n_train], tests[:n_test]]))
    if len(idx) == 0:
        raise DataError(f"{where}: the selection is empty (split {subset.split}, classes "
                        f"{','.join(subset.classes) if subset.classes else 'all'})")
    return idx
