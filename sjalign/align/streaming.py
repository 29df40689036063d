"""Fit an alignment map streamed from latents files: shards, lazy reads, O(d²) memory (SPEC §3).

The in-memory path (:func:`sjalign.align.fit_map`) holds both latent sets; this one holds the
state ids, one chunk of rows per side and the moments:

1. open each side's files lazily (:func:`sjalign.lazy_io.open_latents_set`: the shards of one
   latent set, disjoint state ids) and pair rows **by state id** (:func:`pair_rows`);
2. split the pairs by state id exactly as the in-memory path does
   (:func:`sjalign.protocol.choose_split` sees the same ids and split tensors);
3. :func:`stream_moments`: for chunks of train pairs in the A files' row order, read the A
   rows (one contiguous slice when they are consecutive, as ``embed`` writes them) and the
   paired B rows (a slice when both files share the row order, else a sorted gather), shift
   them by a pilot mean, and add uᵀu (syrk), uᵀv (gemm) and the sums to float64 moments;
4. solve for W from the moments (:func:`sjalign.align.map_from_moments`); ``lam="auto"``
   keeps one set of moments per cross-validation fold in the same single pass and scores
   every λ from the moments alone (:meth:`Moments.heldout_sse`), the same folds and scores
   as :func:`sjalign.align.choose_lambda`.

Memory: 2 chunks of rows (``chunk`` × (d_a + d_b) floats) + the float64 moments
(d_a² + d_a·d_b, times the number of folds with ``lam="auto"``) + the ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from sjalign.align.maps import DEFAULT_LAMBDA, LAMBDA_GRID, AlignmentMap, map_from_moments, solve_ridge
from sjalign.align.moments import Moments
from sjalign.errors import SjalignError
from sjalign.lazy_io import DEFAULT_CHUNK_ROWS, LatentsSet

PRECISIONS = ("float32", "float64")


@dataclass(frozen=True)
class PairedRows:
    """Rows of two latent sets joined on state id, without their latents (sorted by id).

    Attributes:
        state_ids: (n,) int64 shared ids, ascending.
        rows_a: (n,) int64 global row of each id in the A set.
        rows_b: (n,) int64 global row of each id in the B set.
        labels: (n,) int64 or None.  split: (n,) uint8 or None (both sides carry one).
        dropped_a, dropped_b: ids of each side without a partner.
    """

    state_ids: np.ndarray
    rows_a: np.ndarray
    rows_b: np.ndarray
    labels: np.ndarray | None
    split: np.ndarray | None
    dropped_a: int
    dropped_b: int

    def as_pairs(self):
        """A :class:`sjalign.data.pairing.Pairs` with zero-width latents, for the id-level split rules
        of :func:`sjalign.protocol.choose_split` (which reads only ``state_ids`` and ``split``)."""
        from sjalign.data.pairing import Pairs

        n = len(self.state_ids)
        empty = np.empty((n, 0), np.float32)
        return Pairs(x=empty, y=empty, state_ids=self.state_ids, labels=self.labels, split=self.split,
                     dropped_a=self.dropped_a, dropped_b=self.dropped_b)


def pair_rows(a: LatentsSet, b: LatentsSet) -> PairedRows:
    """Join two latent sets on state id; row order in the files does not matter.

    Same rules and messages as :func:`sjalign.data.pairing.pair_by_state_id`.

    Raises:
        SjalignError: no shared ids, or shared ids whose labels or splits disagree.
    """
    from sjalign.data.pairing import join_state_ids

    shared, ia, ib, labels, split = join_state_ids(a, b)
    return PairedRows(shared, ia.astype(np.int64, copy=False), ib.astype(np.int64, copy=False), labels, split,
                      dropped_a=a.n - len(shared), dropped_b=b.n - len(shared))


def stream_moments(a: LatentsSet, b: LatentsSet, rows_a: np.ndarray, rows_b: np.ndarray, *,
                   chunk: int = DEFAULT_CHUNK_ROWS, precision: str = "float64", groups: np.ndarray | None = None,
                   n_groups: int = 1, progress: Callable[[int], None] | None = None) -> list[Moments]:
    """Moments of the paired rows (a[rows_a[i]], b[rows_b[i]]), read chunk by chunk.

    Args:
        rows_a, rows_b: (n,) paired global rows of the two sets (any order).
        chunk: rows per chunk and side; memory is 2·chunk rows plus the moments.
        precision: ``float64`` (default; the in-memory result) or ``float32`` (chunk products in
            float32, sums in float64, ≈ 2× faster; see the error bound in :mod:`sjalign.align.moments`).
        groups: (n,) int group of each pair (e.g. cross-validation fold) and ``n_groups``: one
            set of moments per group, from the same single pass.
        progress: called with the number of pairs done after each chunk.

    Returns:
        ``n_groups`` Moments sharing one shift (the first chunk's mean), so they add and subtract.

    Raises:
        SjalignError: a NaN/Inf row in either set (the file is named), or float32 overflow.
    """
    if precision not in PRECISIONS:
        raise SjalignError(f"--precision '{precision}': use float32 or float64")
    dtype = np.dtype(precision)
    rows_a, rows_b = np.asarray(rows_a, np.int64), np.asarray(rows_b, np.int64)
    order = np.argsort(rows_a, kind="stable")  # walk the A files front to back
    n = len(order)
    chunk = max(1, min(int(chunk), n))
    buf_a = np.empty((chunk, a.dim), dtype)
    buf_b = np.empty((chunk, b.dim), dtype)
    moms: list[Moments] | None = None
    shift_a = shift_b = None
    for start in range(0, n, chunk):
        sel = order[start:start + chunk]
        k = len(sel)
        ua, vb = buf_a[:k], buf_b[:k]
        a.read_into(rows_a[sel], ua, shift_a)
        rb = rows_b[sel]
        if k == 1 or np.all(rb[1:] > rb[:-1]):
            b.read_into(rb, vb, shift_b)
        else:  # the B files hold these states in another order: gather them sorted, then place them
            perm = np.argsort(rb)
            tmp = np.empty_like(vb)
            b.read_into(rb[perm], tmp, shift_b)
            vb[perm] = tmp
            del tmp
        if moms is None:  # pilot shift: the first chunk's mean (exact for a constant feature)
            shift_a = ua.mean(0, dtype=np.float64).astype(dtype)
            shift_b = vb.mean(0, dtype=np.float64).astype(dtype)
            ua -= shift_a
            vb -= shift_b
            moms = [Moments.zeros(a.dim, b.dim, shift_x=shift_a, shift_y=shift_b) for _ in range(n_groups)]
        if groups is None:
            moms[0].add_centred(ua, vb)
        else:
            g = groups[sel]
            for j in range(n_groups):
                mask = g == j
                if mask.any():
                    moms[j].add_centred(ua[mask], vb[mask])
        if progress is not None:
            progress(min(start + k, n))
    if moms is None:
        raise SjalignError("no training pairs to accumulate")
    total = moms[0] if n_groups == 1 else sum(moms[1:], moms[0])
    if not total.all_finite():
        a.check_finite()
        b.check_finite()
        raise SjalignError(f"{a.name} -> {b.name}: the moments overflowed in {precision} (latents of magnitude "
                           "≳ 1e18?); rescale the latents or use --precision float64")
    return moms


def choose_lambda_from_folds(folds: list[Moments], *, grid: tuple[float, ...] = LAMBDA_GRID
                             ) -> tuple[float, dict[float, float]]:
    """Ridge λ by k-fold CV from per-fold moments: each fold is scored with its complement's fit.

    Each fold's complement (total − fold) is standardised with its own statistics, W(λ) is
    solved from its moments, and the fold's held-out MSE follows from the fold's moments
    (:meth:`Moments.heldout_sse`). Equals :func:`sjalign.align.choose_lambda` on the same folds.

    Returns:
        (best λ, {λ: mean held-out MSE}); ties go to the larger λ.
    """
    total = sum(folds[1:], folds[0])
    scores = {lam: 0.0 for lam in grid}
    for fold in folds:
        std = (total - fold).standardised()
        ws = {lam: solve_ridge(std.c_aa, std.c_ab, lam) for lam in grid}
        d_b = len(std.b_mean)
        for lam, sse in fold.heldout_sse(std, ws).items():
            scores[lam] += sse / (fold.n * d_b) / len(folds)
    best = min(scores, key=lambda k: (scores[k], -k))
    return best, scores


def fit_map_streaming(a: LatentsSet, b: LatentsSet, paired: PairedRows, train: np.ndarray, *,
                      method: str = "ridge", lam: float | str = DEFAULT_LAMBDA, seed: int = 0,
                      chunk: int = DEFAULT_CHUNK_ROWS, precision: str = "float64", folds: int = 5,
                      lstsq_fallback: bool = True, progress: Callable[[int], None] | None = None) -> AlignmentMap:
    """Fit W (z_b ≈ W z_a) on the train pairs, streaming both sets' rows from their files.

    Args:
        a, b: source and target latent sets (one or more shards each).
        paired: their pairing by state id (:func:`pair_rows`).
        train: (n_pairs,) bool mask over ``paired`` (e.g. ``choose_split(...).train``).
        method, lam: as :func:`sjalign.align.fit_map`; ``lam="auto"`` is ``folds``-fold CV with the
            same fold draw as :func:`sjalign.align.choose_lambda` (seeded by ``seed``).
        chunk, precision, progress: see :func:`stream_moments`.
        lstsq_fallback: see :func:`sjalign.align.map_from_moments` (on by default here: the CLI rule).

    Returns:
        The map; ``info`` records ``precision`` and ``chunk_rows`` (and the CV scores for λ auto).

    Raises:
        SjalignError: bad method / λ, too few pairs, non-finite latents.
    """
    train_idx = np.flatnonzero(train)
    n = len(train_idx)
    train_ids = paired.state_ids[train_idx]
    rows_a, rows_b = paired.rows_a[train_idx], paired.rows_b[train_idx]
    info: dict = {"precision": precision, "chunk_rows": int(chunk)}
    if lam == "auto":
        if method != "ridge":
            raise SjalignError("--lambda auto applies to --method ridge only")
        if n < 2 * folds:
            raise SjalignError(f"--lambda auto needs at least {2 * folds} training pairs, got {n}")
        fold_of = np.random.default_rng(seed).permutation(n) % folds  # as choose_lambda, over ids in order
        parts = stream_moments(a, b, rows_a, rows_b, chunk=chunk, precision=precision, groups=fold_of,
                               n_groups=folds, progress=progress)
        lam, scores = choose_lambda_from_folds(parts)
        info["lambda_cv_mse"] = {f"{k:g}": v for k, v in scores.items()}
        mom = sum(parts[1:], parts[0])
    else:
        mom = stream_moments(a, b, rows_a, rows_b, chunk=chunk, precision=precision, progress=progress)[0]
    amap = map_from_moments(mom.standardised(), train_ids, method=method, lam=float(lam),
                            lstsq_fallback=lstsq_fallback)
    amap.info.update(info)
    return amap
