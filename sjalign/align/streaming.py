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
   them by a pilot mean, and add uᵀu (syrk), uᵀv (gemm) and the sums to float64 moments —
   on W threads, each with its own part of the chunk and single-threaded BLAS, the parts'
   sums added in file order;
4. solve for W from the moments (:func:`sjalign.align.map_from_moments`); ``lam="auto"``
   keeps one set of moments per cross-validation fold in the same single pass and scores
   every λ from the moments alone (:meth:`Moments.heldout_sse`), the same folds and scores
   as :func:`sjalign.align.choose_lambda`.

Memory: one chunk of rows (``chunk`` × (d_a + d_b) floats, split between the threads) + the
float64 moments (d_a² + d_a·d_b, times the number of folds with ``lam="auto"``) + one part's
products per thread (d_a² + d_a·d_b in the chunk precision) + the state ids and int32 row numbers.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from sjalign.align.maps import DEFAULT_LAMBDA, LAMBDA_GRID, AlignmentMap, map_from_moments, solve_ridge
from sjalign.align.moments import Moments, Standardised, chunk_sums
from sjalign.errors import OptionError, ShapeError, SjalignError
from sjalign.lazy_io import DEFAULT_CHUNK_ROWS, LatentsSet

PRECISIONS = ("auto", "float32", "float64")
# precision "auto": float32 chunk products only where they cannot matter. Measured on real, nearly
# collapsed latents (docs/results.md, "The default precision"), float32 products move W by about
# κ·u₃₂/10 relative (κ of the matrix the fit inverts, u₃₂ = 2⁻²⁴) and the smallest singular values of W
# far more; so float32 is used when κ·u₃₂ ≤ AUTO_MAX_ERROR, float64 otherwise.
U32 = 2.0**-24
AUTO_MAX_ERROR = 1e-4  # i.e. κ ≤ 1,678
PILOT_PAIRS = 4096  # pairs (evenly spaced over the train pairs; at least 2·d_a) whose moments estimate κ


@dataclass(frozen=True)
class PairedRows:
    """Rows of two latent sets joined on state id, without their latents (sorted by id).

    Attributes:
        state_ids: (n,) int64 shared ids, ascending.
        rows_a: (n,) int32 (int64 beyond 2³¹ rows) global row of each id in the A set.
        rows_b: (n,) the same for the B set (the same array as ``rows_a`` when both sets hold the
            same ids in the same order).
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
        """A :class:`sjalign.align.pairing.Pairs` with zero-width latents, for the id-level split rules
        of :func:`sjalign.protocol.choose_split` (which reads only ``state_ids`` and ``split``)."""
        from sjalign.align.pairing import Pairs

        n = len(self.state_ids)
        empty = np.empty((n, 0), np.float32)
        return Pairs(x=empty, y=empty, state_ids=self.state_ids, labels=self.labels, split=self.split,
                     dropped_a=self.dropped_a, dropped_b=self.dropped_b)


def pair_rows(a: LatentsSet, b: LatentsSet) -> PairedRows:
    """Join two latent sets on state id; row order in the files does not matter.

    Same rules and messages as :func:`sjalign.align.pairing.pair_by_state_id`.

    Raises:
        SjalignError: no shared ids, or shared ids whose labels or splits disagree.
    """
    from sjalign.align.pairing import join_state_ids

    shared, ia, ib, labels, split = join_state_ids(a, b)
    rows_a = ia.astype(row_dtype(a.n), copy=False)
    rows_b = rows_a if ib is ia else ib.astype(row_dtype(b.n), copy=False)
    return PairedRows(shared, rows_a, rows_b, labels, split, dropped_a=a.n - len(shared), dropped_b=b.n - len(shared))


@dataclass(frozen=True)
class FilePairs:
    """Paired latents read from their files on demand: what :class:`sjalign.align.pairing.Pairs` offers
    the evaluation protocol (ids, labels, split, widths, row gathers) without holding the latents.

    Attributes:
        a, b: the two latent sets, opened lazily (:func:`sjalign.lazy_io.open_latents_set`).
        paired: their pairing by state id (:func:`pair_rows`).
    """

    a: LatentsSet
    b: LatentsSet
    paired: PairedRows

    @property
    def state_ids(self) -> np.ndarray:
        return self.paired.state_ids

    @property
    def labels(self) -> np.ndarray | None:
        return self.paired.labels

    @property
    def split(self) -> np.ndarray | None:
        return self.paired.split

    @property
    def dropped_a(self) -> int:
        return self.paired.dropped_a

    @property
    def dropped_b(self) -> int:
        return self.paired.dropped_b

    @property
    def d_a(self) -> int:
        return self.a.dim

    @property
    def d_b(self) -> int:
        return self.b.dim

    def take_x(self, rows: np.ndarray) -> np.ndarray:
        """(m, d_a) float32 source latents of the pairs ``rows`` (indices into the pairs, any order)."""
        return read_set_rows(self.a, self.paired.rows_a[rows])

    def take_y(self, rows: np.ndarray) -> np.ndarray:
        """(m, d_b) float32 target latents of the pairs ``rows``."""
        return read_set_rows(self.b, self.paired.rows_b[rows])


def read_set_rows(lset: LatentsSet, rows: np.ndarray, out: np.ndarray | None = None,
                  shift: np.ndarray | None = None) -> np.ndarray:
    """Global rows ``rows`` (distinct, any order) of a latent set minus ``shift``, into ``out`` ((m, d); float32
    when allocated here): read in ascending order (contiguous runs as slices, the rest gathered) and put
    back in the order asked."""
    rows = np.asarray(rows)
    out = np.empty((len(rows), lset.dim), np.float32) if out is None else out
    if len(rows) < 2 or np.all(rows[1:] > rows[:-1]):
        return lset.read_into(rows, out, shift)
    order = np.argsort(rows, kind="stable")
    out[order] = lset.read_into(rows[order], np.empty_like(out), shift)
    return out


def row_dtype(n: int) -> np.dtype:
    """int32 row numbers while they fit (half the memory of int64 for the O(n) arrays), else int64."""
    return np.dtype(np.int32) if n < 2**31 else np.dtype(np.int64)


def blas_threads() -> int:
    """How many threads numpy's BLAS would use for one call (its OpenBLAS / MKL setting), at least 1."""
    from threadpoolctl import threadpool_info

    counts = [info.get("num_threads") or 1 for info in threadpool_info() if info.get("user_api") == "blas"]
    return max([1, *counts])


def stream_moments(a: LatentsSet, b: LatentsSet, rows_a: np.ndarray, rows_b: np.ndarray, *,
                   chunk: int = DEFAULT_CHUNK_ROWS, precision: str = "float64", groups: np.ndarray | None = None,
                   n_groups: int = 1, workers: int | None = None, prefetch: bool = True,
                   progress: Callable[[int], None] | None = None) -> list[Moments]:
    """Moments of the paired rows (a[rows_a[i]], b[rows_b[i]]), read chunk by chunk.

    The pairs are cut into pieces in A-file order. With ``workers`` = W ≥ 2, W threads each read
    a piece into their own buffers and compute its sums with single-threaded BLAS
    (:func:`sjalign.align.moments.chunk_sums`), so one thread's reading overlaps another's
    BLAS and no core waits on a multi-threaded BLAS call's barrier; the pieces' sums are added
    to the float64 moments in piece order, so the result does not depend on thread timing. With
    W = 1 the caller's thread computes, and (``prefetch``) a background thread reads the next
    piece meanwhile.

    Args:
        rows_a, rows_b: (n,) integer paired global rows of the two sets (any order).
        chunk: rows in flight per side: the row buffers hold ``chunk`` × (d_a + d_b) values in all
            (pieces of ``chunk / W`` rows, or two of ``chunk / 2`` with prefetch).
        precision: ``float64`` (default; the in-memory result) or ``float32`` (chunk products in
            float32, sums in float64, ≈ 2× faster; see the error bound in :mod:`sjalign.align.moments`).
        groups: (n,) int group of each pair (e.g. cross-validation fold) and ``n_groups``: one
            set of moments per group, from the same single pass.
        workers: computing threads; default :func:`blas_threads` (what BLAS itself would use, e.g.
            ``OMP_NUM_THREADS``). Each holds one piece's d_a² + d_a·d_b products besides the moments.
        prefetch: with one worker, read the next piece in a background thread.
        progress: called with the number of pairs done after each piece (in order).

    Returns:
        ``n_groups`` Moments sharing one shift (the first piece's mean), so they add and subtract.

    Raises:
        SjalignError: a NaN/Inf row in either set (the file is named), or float32 overflow.
        ShapeError: row numbers that are not two integer arrays of one length.
    """
    from threadpoolctl import threadpool_limits

    if precision not in ("float32", "float64"):
        raise OptionError(f"{{precision}} '{precision}': use float32 or float64")
    dtype = np.dtype(precision)
    rows_a, rows_b = np.asarray(rows_a), np.asarray(rows_b)
    if rows_a.dtype.kind not in "iu" or rows_b.dtype.kind not in "iu" or rows_a.shape != rows_b.shape:
        raise ShapeError(f"row numbers must be two (n,) integer arrays, got {rows_a.dtype}{rows_a.shape} "
                         f"and {rows_b.dtype}{rows_b.shape}")
    n = len(rows_a)
    if n == 0:
        raise SjalignError("no training pairs to accumulate")
    # walk the A files front to back; rows already in file order (the usual case) need no permutation
    order = None if np.all(rows_a[1:] > rows_a[:-1]) else np.argsort(rows_a, kind="stable")
    chunk = max(1, min(int(chunk), n))
    n_workers = max(1, blas_threads() if workers is None else int(workers))
    slots = 2 if n_workers == 1 and prefetch else 1
    piece = max(1, -(-chunk // (n_workers * slots)))  # the buffers together hold one chunk
    n_pieces = -(-n // piece)
    n_workers = min(n_workers, max(1, n_pieces - 1))
    bufs = [[(np.empty((piece, a.dim), dtype), np.empty((piece, b.dim), dtype)) for _ in range(slots)]
            for _ in range(n_workers)]
    shift: list[np.ndarray | None] = [None, None]  # the pilot shift, set from the first piece

    def read(i: int, buf: tuple[np.ndarray, np.ndarray]):
        """Rows of piece i (pairs i·piece … in A-file order) into ``buf``, minus the shift."""
        sel = slice(i * piece, (i + 1) * piece) if order is None else order[i * piece:(i + 1) * piece]
        ra, rb = rows_a[sel], rows_b[sel]
        ua, vb = buf[0][:len(ra)], buf[1][:len(ra)]
        a.read_into(ra, ua, shift[0])
        read_set_rows(b, rb, vb, shift[1])  # the B files may hold these states in another order
        return sel, ua, vb

    def sums(sel, ua: np.ndarray, vb: np.ndarray, out: Moments | None = None) -> list[tuple[int, Moments]]:
        if groups is None:
            return [(0, chunk_sums(ua, vb, out))]
        g = groups[sel]
        return [(j, chunk_sums(ua[g == j], vb[g == j])) for j in range(n_groups) if (g == j).any()]

    # piece 0 in this thread: it sets the shift (its mean; exact for a constant feature)
    sel, ua, vb = read(0, bufs[0][0])
    shift[0] = ua.mean(0, dtype=np.float64).astype(dtype)
    shift[1] = vb.mean(0, dtype=np.float64).astype(dtype)
    ua -= shift[0]
    vb -= shift[1]
    moms = [Moments.zeros(a.dim, b.dim, shift_x=shift[0], shift_y=shift[1]) for _ in range(n_groups)]
    for j, part in sums(sel, ua, vb):
        moms[j].add_sums(part)
    del part  # its product arrays: the threads below hold their own
    if progress is not None:
        progress(min(piece, n))

    turn = threading.Condition()
    state = {"next": 1, "error": None}  # the next piece to add; the first exception of any thread

    def add_in_order(i: int, parts: list[tuple[int, Moments]]) -> bool:
        with turn:
            turn.wait_for(lambda: state["next"] == i or state["error"] is not None)
            if state["error"] is not None:
                return False
            for j, part in parts:
                moms[j].add_sums(part)
            if progress is not None:  # in order, like the sums
                progress(min((i + 1) * piece, n))
            state["next"] = i + 1
            turn.notify_all()
        return True

    def work(w: int) -> None:
        mine = range(1 + w, n_pieces, n_workers)
        reader = ThreadPoolExecutor(1, thread_name_prefix="sjalign-read") if slots == 2 and len(mine) > 1 else None
        pending, products = None, None  # this thread's product arrays, reused for every piece
        try:
            for k, i in enumerate(mine):
                got = pending.result() if pending is not None else read(i, bufs[w][k % slots])
                pending = reader.submit(read, i + n_workers, bufs[w][(k + 1) % slots]) \
                    if reader is not None and k + 1 < len(mine) else None
                parts = sums(*got, products)
                products = parts[0][1] if groups is None else None
                if not add_in_order(i, parts):
                    return
        except BaseException as exc:  # noqa: BLE001  (handed to the caller below)
            with turn:
                state["error"] = state["error"] or exc
                turn.notify_all()
        finally:
            if reader is not None:
                reader.shutdown(wait=True, cancel_futures=True)

    if n_workers == 1:
        work(0)
    else:
        with threadpool_limits(1, user_api="blas"):  # W single-threaded BLAS calls at once
            threads = [threading.Thread(target=work, args=(w,), name=f"sjalign-moments-{w}", daemon=True)
                       for w in range(n_workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    if state["error"] is not None:
        raise state["error"]
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


def conditioning(std: Standardised, method: str, lam: float | str) -> float:
    """κ of what a fit of ``method`` inverts, from standardised moments (constant features left out).

    ridge: κ(C_aa + λI) (``lam="auto"``: the smallest λ of :data:`LAMBDA_GRID`, the worst case);
    lstsq: κ(C_aa); procrustes: σ_max / σ_min of C_ab (the polar factor's sensitivity to a
    perturbation of C_ab grows like 1 / σ_min). ``inf`` for a singular matrix.
    """
    keep_a = np.setdiff1d(np.arange(len(std.a_std)), std.constant_a)
    if method == "procrustes":
        keep_b = np.setdiff1d(np.arange(len(std.b_std)), std.constant_b)
        s = np.linalg.svd(std.c_ab[np.ix_(keep_a, keep_b)], compute_uv=False)
        lo, hi = (s[-1], s[0]) if len(s) else (1.0, 1.0)
    else:
        shift = 0.0 if method == "lstsq" else (min(LAMBDA_GRID) if lam == "auto" else float(lam))
        ev = np.linalg.eigvalsh(std.c_aa[np.ix_(keep_a, keep_a)]) + shift
        lo, hi = (ev[0], ev[-1]) if len(ev) else (1.0, 1.0)
    return float(hi / lo) if lo > 0 else float("inf")


def choose_precision(a: LatentsSet, b: LatentsSet, rows_a: np.ndarray, rows_b: np.ndarray, *, method: str,
                     lam: float | str, chunk: int = DEFAULT_CHUNK_ROWS) -> tuple[str, dict]:
    """The chunk precision of ``precision="auto"``: float32 where κ·u₃₂ ≤ :data:`AUTO_MAX_ERROR`.

    κ (:func:`conditioning`) is estimated from the float64 moments of a pilot of
    max(:data:`PILOT_PAIRS`, 2·d_a) pairs evenly spaced over ``rows_a, rows_b`` (all of them when
    there are fewer). With fewer samples the smallest eigenvalues of a sample covariance come out
    smaller (Marchenko–Pastur), so the pilot's κ errs towards float64.

    Returns:
        ("float32" or "float64", {"kappa_pilot": κ, "pilot_pairs": m}).
    """
    n = len(rows_a)
    m = min(n, max(PILOT_PAIRS, 2 * a.dim))
    take = np.unique(np.linspace(0, n - 1, m).round().astype(np.int64))
    pilot = stream_moments(a, b, rows_a[take], rows_b[take], chunk=chunk, precision="float64", workers=1,
                           prefetch=False)[0]
    kappa = conditioning(pilot.standardised(), method, lam)
    return "float32" if float32_suffices(kappa) else "float64", {"kappa_pilot": kappa, "pilot_pairs": len(take)}


def float32_suffices(kappa: float) -> bool:
    """The rule of ``precision="auto"``: float32 chunk products when κ·u₃₂ ≤ :data:`AUTO_MAX_ERROR`."""
    return kappa * U32 <= AUTO_MAX_ERROR


def fit_map_streaming(a: LatentsSet, b: LatentsSet, paired: PairedRows, train: np.ndarray, *,
                      method: str = "ridge", lam: float | str = DEFAULT_LAMBDA, seed: int = 0,
                      chunk: int = DEFAULT_CHUNK_ROWS, precision: str = "auto", folds: int = 5,
                      lstsq_fallback: bool = True, progress: Callable[[int], None] | None = None) -> AlignmentMap:
    """Fit W (z_b ≈ W z_a) on the train pairs, streaming both sets' rows from their files.

    Args:
        a, b: source and target latent sets (one or more shards each).
        paired: their pairing by state id (:func:`pair_rows`).
        train: (n_pairs,) bool mask over ``paired`` (e.g. ``choose_split(...).train``).
        method, lam: as :func:`sjalign.align.fit_map`; ``lam="auto"`` is ``folds``-fold CV with the
            same fold draw as :func:`sjalign.align.choose_lambda` (seeded by ``seed``).
        precision: ``auto`` (default: float32 chunk products where the conditioning of the fit
            makes them harmless, float64 elsewhere; :func:`choose_precision`, then checked on the
            full moments and refitted in float64 if the pilot was wrong), ``float32`` or ``float64``.
        chunk, progress: see :func:`stream_moments`.
        lstsq_fallback: see :func:`sjalign.align.map_from_moments` (on by default here: the CLI rule).

    Returns:
        The map; ``info`` records ``precision`` (the one used), ``chunk_rows``, with ``auto`` the
        pilot's κ and size, the full moments' κ and whether a float64 refit was needed
        (``precision_auto``), and the CV scores for λ auto.

    Raises:
        SjalignError: bad method / λ / precision, too few pairs, non-finite latents.
    """
    if precision not in PRECISIONS:
        raise OptionError(f"{{precision}} '{precision}': use {', '.join(PRECISIONS)}")
    train = np.asarray(train, dtype=bool)
    if train.all():  # no copies of the O(n) id and row arrays
        train_ids, rows_a, rows_b = paired.state_ids, paired.rows_a, paired.rows_b
    else:
        train_ids, rows_a = paired.state_ids[train], paired.rows_a[train]
        rows_b = rows_a if paired.rows_b is paired.rows_a else paired.rows_b[train]
    n = len(train_ids)
    if lam == "auto":
        if method != "ridge":
            raise OptionError("{lam} auto applies to {method} ridge only")
        if n < 2 * folds:
            raise OptionError(f"{{lam}} auto needs at least {2 * folds} training pairs, got {n}")

    def moments(dtype: str) -> tuple[list[Moments], Standardised]:
        """One pass over the train pairs: their moments (per CV fold with λ auto, the folds drawn as
        choose_lambda draws them, over ids in order) and the standardised total."""
        if lam != "auto":
            parts = stream_moments(a, b, rows_a, rows_b, chunk=chunk, precision=dtype, progress=progress)
        else:
            fold_of = np.random.default_rng(seed).permutation(n) % folds
            parts = stream_moments(a, b, rows_a, rows_b, chunk=chunk, precision=dtype, groups=fold_of,
                                   n_groups=folds, progress=progress)
        return parts, sum(parts[1:], parts[0]).standardised()

    info: dict = {"chunk_rows": int(chunk)}
    used = precision
    if precision == "auto":
        used, info["precision_auto"] = choose_precision(a, b, rows_a, rows_b, method=method, lam=lam, chunk=chunk)
        info["precision_auto"]["refit"] = False
    parts, std = moments(used)
    if precision == "auto" and used == "float32":  # the pilot's κ, checked on all the train pairs
        kappa = conditioning(std, method, lam)
        info["precision_auto"].update(kappa=kappa, refit=not float32_suffices(kappa))
        if info["precision_auto"]["refit"]:
            used = "float64"
            parts, std = moments(used)
    fit_lam = lam
    if lam == "auto":
        fit_lam, scores = choose_lambda_from_folds(parts)
        info["lambda_cv_mse"] = {f"{k:g}": v for k, v in scores.items()}
    amap = map_from_moments(std, train_ids, method=method, lam=float(fit_lam), lstsq_fallback=lstsq_fallback)
    info["precision"] = used
    amap.info.update(info)
    return amap
