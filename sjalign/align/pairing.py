"""Pair rows of two latents files by state id (the split of pairs is :mod:`sjalign.protocol.split`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sjalign.errors import SjalignError
from sjalign.io import Latents


@dataclass(frozen=True)
class Pairs:
    """Rows of two latents files joined on state id (sorted by id), held in memory.

    The evaluation protocol reads pairs only through ``state_ids``, ``labels``, ``split``,
    ``d_a``/``d_b`` and ``take_x``/``take_y`` (row gathers), so the same code scores pairs
    streamed from their files (:class:`sjalign.align.streaming.FilePairs`).

    Attributes:
        x: (n, d_a) float32 source latents.
        y: (n, d_b) float32 target latents.
        state_ids: (n,) int64.
        labels: (n,) int64 or None (from either file; they must agree).
        split: (n,) uint8 or None, present when both files carry one.
        dropped_a, dropped_b: how many ids of each file had no partner.
    """

    x: np.ndarray
    y: np.ndarray
    state_ids: np.ndarray
    labels: np.ndarray | None
    split: np.ndarray | None
    dropped_a: int
    dropped_b: int

    @property
    def d_a(self) -> int:
        return int(self.x.shape[1])

    @property
    def d_b(self) -> int:
        return int(self.y.shape[1])

    def take_x(self, rows: np.ndarray) -> np.ndarray:
        """(m, d_a) source latents of the pairs ``rows`` (indices into these pairs, any order)."""
        return self.x[rows]

    def take_y(self, rows: np.ndarray) -> np.ndarray:
        """(m, d_b) target latents of the pairs ``rows``."""
        return self.y[rows]


def join_state_ids(a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The state ids two latent sets share, their rows on each side, and the agreed labels and split.

    Args:
        a, b: anything with ``name`` (for messages), ``state_ids`` (n,) int64 (unique), and
            ``labels`` / ``split`` (n,) arrays or None — a :class:`Latents` or a lazily opened set.

    Returns:
        (shared (m,) sorted ids, ia (m,) rows of ``a``, ib (m,) rows of ``b``, labels (m,) from
        either side or None, split (m,) when both sides carry one, else None). When both sides
        hold the same ids in the same order, ``ia is ib``; when those ids are also sorted,
        ``shared`` is ``a.state_ids`` itself (no copy).

    Raises:
        SjalignError: fewer than 2 shared ids, or shared ids whose labels or splits disagree.
    """
    if np.array_equal(a.state_ids, b.state_ids):  # same states in the same order (one embed run per view)
        if np.all(a.state_ids[1:] > a.state_ids[:-1]):  # and already sorted: no copy of the ids
            ia = ib = np.arange(len(a.state_ids))
            shared = a.state_ids
        else:
            ia = ib = np.argsort(a.state_ids, kind="stable")
            shared = a.state_ids[ia]
    else:
        shared, ia, ib = np.intersect1d(a.state_ids, b.state_ids, assume_unique=True, return_indices=True)
    if len(shared) == 0:
        raise SjalignError(f"{a.name} and {b.name}: no shared state ids, nothing to pair")
    if len(shared) == 1:
        raise SjalignError(f"{a.name} and {b.name}: only 1 shared state id; a map needs train and test pairs")
    if a.labels is not None and b.labels is not None and not np.array_equal(a.labels[ia], b.labels[ib]):
        raise SjalignError(f"{a.name} and {b.name}: labels disagree on shared state ids")
    labels = a.labels[ia] if a.labels is not None else None if b.labels is None else b.labels[ib]
    split = None
    if a.split is not None and b.split is not None:
        if not np.array_equal(a.split[ia], b.split[ib]):
            raise SjalignError(f"{a.name} and {b.name}: train/test splits disagree on shared state ids")
        split = a.split[ia]
    return shared, ia, ib, labels, split


def pair_by_state_id(a: Latents, b: Latents) -> Pairs:
    """Join two latents sets on state id; row order in the files does not matter.

    Raises:
        SjalignError: no shared ids, or shared ids whose labels or splits disagree.
    """
    shared, ia, ib, labels, split = join_state_ids(a, b)
    return Pairs(a.latents[ia], b.latents[ib], shared, labels, split,
                 dropped_a=len(a.state_ids) - len(shared), dropped_b=len(b.state_ids) - len(shared))
