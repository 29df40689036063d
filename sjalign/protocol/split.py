"""Which paired states fit the map and which score it (Social-JEPA Algorithm 1, SPEC §3).

A map's own train ids, else the files' split tensor, else a seeded draw by state id; a class
shift (fit on some classes, test on others); a control split on the same state ids.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import numpy as np

from sjalign.align.pairing import Pairs
from sjalign.errors import OptionError, SjalignError


@dataclass(frozen=True)
class Split:
    """Train/test masks over paired rows and how they were drawn.

    Attributes:
        train, test: (n,) bool masks over the rows of a :class:`Pairs` (disjoint; a shift split
            leaves some rows in neither).
        how: one human sentence.
        kind: ``map`` (a map's train ids), ``file`` (the files' split tensor), ``seeded`` (by
            state id), ``shift`` (fit on some classes, test on others) or ``in-distribution``.
        seed, test_fraction: of a seeded draw (None otherwise).
    """

    train: np.ndarray
    test: np.ndarray
    how: str
    kind: str = "seeded"
    seed: int | None = None
    test_fraction: float | None = None

    def describe(self) -> dict:
        """The JSON form: kind, how, n_train, n_test, seed, test_fraction."""
        return {"kind": self.kind, "how": self.how, "n_train": int(self.train.sum()), "n_test": int(self.test.sum()),
                "seed": self.seed, "test_fraction": self.test_fraction}


def choose_split(pairs: Pairs, *, test_fraction: float = 0.2, seed: int = 0,
                 train_state_ids: np.ndarray | None = None, use_file_split: bool = True) -> Split:
    """Train/test by state id: a map's recorded train ids, else the files' split, else a seeded draw.

    A files' split that holds only train (or only test) states, as ``embed --split train``
    writes, cannot be used and gives way to the seeded draw, with a warning; any files' split
    does when ``use_file_split`` is False (``evaluate --resplit``), silently.

    Raises:
        SjalignError: an empty side, or a map whose train ids are missing from the latents.
    """
    kind, split_seed, fraction = "seeded", None, None
    if train_state_ids is not None:
        train = np.isin(pairs.state_ids, train_state_ids)
        missing = len(train_state_ids) - int(train.sum())
        if missing:
            raise SjalignError(f"{missing} of the map's {len(train_state_ids)} train state ids are missing "
                               "from the paired latents; the map was fitted on other data")
        how, kind = "the map's train state ids; test = the other shared ids", "map"
    elif use_file_split and pairs.split is not None and len(np.unique(pairs.split)) == 2:
        train = pairs.split == 0
        how, kind = "the files' split tensor", "file"
    else:
        if use_file_split and pairs.split is not None:
            side = "test" if pairs.split[0] else "train"
            warnings.warn(f"the files' 'split' tensors mark all {len(pairs.split)} paired states as {side}, which "
                          f"leaves nothing to {'fit' if side == 'test' else 'test'} on; using a seeded split by "
                          f"state id instead (seed {seed}, test fraction {test_fraction})", stacklevel=2)
        train = random_split(pairs.state_ids, test_fraction, seed) == 0
        how = f"seeded by state id (seed {seed}, test fraction {test_fraction})"
        split_seed, fraction = seed, test_fraction
    if train.all() or not train.any():
        raise SjalignError(f"the split ({how}) leaves no {'test' if train.all() else 'train'} pairs")
    return Split(train, ~train, how, kind, split_seed, fraction)


@dataclass(frozen=True)
class Shift:
    """Fit on the states of some classes, test on the states of others (``evaluate --shift``).

    Attributes:
        train_classes: labels whose train-split states fit the map.
        test_classes: labels whose test-split states score it; None = every other label present.
    """

    train_classes: tuple[int, ...]
    test_classes: tuple[int, ...] | None = None


def _classes(values) -> str:
    return ",".join(str(int(v)) for v in values)


def shift_split(pairs: Pairs, base: Split, shift: Shift, *, seed: int = 0) -> tuple[Split, Split]:
    """The shifted split and its in-distribution reference on the same test states.

    Train and test states still come from ``base`` (so no state is in both): the shifted
    map fits on base-train states of ``train_classes``, the reference map on base-train
    states of ``test_classes``; both score on base-test states of ``test_classes``. Both
    fits use the same number of pairs, min(|pool_shift|, |pool_in|), a seeded subset of the
    larger pool, so the two differ only in which classes they saw.

    Returns:
        (shift split, in-distribution split), sharing one test mask.

    Raises:
        SjalignError: no labels, a class that no state carries, or an empty subset.
    """
    if pairs.labels is None:
        raise OptionError("{shift} selects states by class, but neither latents file carries a 'labels' tensor")
    present = np.unique(pairs.labels)
    train_cls = np.asarray(shift.train_classes, dtype=np.int64)
    test_cls = (np.setdiff1d(present, train_cls) if shift.test_classes is None
                else np.asarray(shift.test_classes, dtype=np.int64))
    absent = np.setdiff1d(np.r_[train_cls, test_cls], present)
    if len(absent):
        raise OptionError(f"{{shift}}: class(es) {_classes(absent)} carried by no paired state "
                           f"(labels present: {_classes(present)})")
    if not len(test_cls):
        raise OptionError(f"{{shift}}: no test classes left (train classes {_classes(train_cls)} are every label)")
    pool_shift = base.train & np.isin(pairs.labels, train_cls)
    pool_in = base.train & np.isin(pairs.labels, test_cls)
    test = base.test & np.isin(pairs.labels, test_cls)
    for name, mask, cls in (("train", pool_shift, train_cls), ("in-distribution train", pool_in, test_cls),
                            ("test", test, test_cls)):
        if mask.sum() < 2:
            raise OptionError(f"{{shift}}: {int(mask.sum())} {name} state(s) of class(es) {_classes(cls)} "
                               f"in the split ({base.how}); need at least 2")
    n = int(min(pool_shift.sum(), pool_in.sum()))
    rng = np.random.default_rng(seed)
    masks = []
    for pool in (pool_shift, pool_in):
        chosen = np.zeros(len(pool), dtype=bool)
        chosen[rng.permutation(np.flatnonzero(pool))[:n]] = True
        masks.append(chosen)
    what = f"{n} train pairs each, within {base.how}"
    return (Split(masks[0], test, f"shift: fit on classes {_classes(train_cls)}, test on classes "
                  f"{_classes(test_cls)} ({what})", "shift", base.seed, base.test_fraction),
            Split(masks[1], test, f"in-distribution: fit and test on classes {_classes(test_cls)} ({what})",
                  "in-distribution", base.seed, base.test_fraction))


def transfer_split(split: Split, source: Pairs, target: Pairs, *, name: str = "control") -> tuple[Split, int]:
    """The same train/test state ids on other paired latents (a control's), by state id.

    Returns:
        (split over ``target``'s rows, number of train ids ``target`` lacks).

    Raises:
        SjalignError: ``target`` lacks some test ids (its scores would not be comparable)
            or every train id.
    """
    train_ids, test_ids = source.state_ids[split.train], source.state_ids[split.test]
    test = np.isin(target.state_ids, test_ids)
    missing = len(test_ids) - int(test.sum())
    if missing:
        raise SjalignError(f"{name}: {missing} of the {len(test_ids)} test state ids are missing from its latents; "
                           "a control must cover the whole test split")
    train = np.isin(target.state_ids, train_ids)
    if train.sum() < 2:
        raise SjalignError(f"{name}: holds {int(train.sum())} of the {len(train_ids)} train state ids; "
                           "need at least 2 to fit its map")
    return Split(train, test, split.how, split.kind, split.seed, split.test_fraction), len(train_ids) - int(train.sum())


def random_split(state_ids: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Seeded train/test split by state id.

    Each id gets a key from a hash of (seed, id); the round(test_fraction * n) ids with
    the smallest keys are test. The assignment does not depend on row order, and a
    state's key does not depend on which other states are present.

    Returns:
        (n,) uint8, 1 = test.

    Raises:
        SjalignError: the fraction leaves an empty train or test side.
    """
    n = len(state_ids)
    n_test = int(round(test_fraction * n)) if 0.0 < test_fraction < 1.0 else 0  # NaN fails the test too
    if n_test < 1 or n_test >= n:
        raise OptionError(f"{{test_fraction}} {test_fraction} leaves no train or no test pairs out of {n}")
    keys = np.array([zlib.crc32(np.array([seed, s], dtype=np.int64).tobytes()) for s in state_ids], dtype=np.uint64)
    order = np.lexsort((state_ids, keys))
    split = np.zeros(n, dtype=np.uint8)
    split[order[:n_test]] = 1
    return split
