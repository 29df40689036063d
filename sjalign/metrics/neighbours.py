"""Neighbourhood metrics, tiled with top-k so no n×n matrix is held (SPEC §4).

NOS@k: neighbourhood overlap shortfall (Social-JEPA §3.6), lower is better.
retrieval@1: cross-space nearest-neighbour identification, chance 1/n.

Distances are squared Euclidean. They are searched in float32 on the chosen device (CUDA when
available with ``device="auto"``) in the matrix-product form ‖q‖² − 2 q·x + ‖x‖² of the centred
data, in tiles that hold at most ``max_elements`` entries (default 2²⁴, 64 MiB): memory is the
data, one tile and the (n, k) answer, whatever n is. The kNN of a set with itself uses square tiles
of row blocks and the symmetry of the distance matrix; retrieval (two different sets) uses tiles of
query rows.

The float32 search only nominates: each row's k + :data:`EXACT_MARGIN` nearest candidates are
re-scored as Σ (q − x)² in float64 from the stored values, and the answer is chosen on those.
Where the float32 error bound of the matrix-product form, (2d + 8)·2⁻²⁴·(‖q‖² + max ‖x‖²) per row,
leaves a column outside the candidates able to tie or beat the k-th, that row is re-scored on
every column. So the answer is the one of exact distances wherever float64 holds them exactly
(duplicated rows, small-integer or dyadic coordinates, points mirrored about the query), not the
one of float32 rounding.

Ties: among equal distances the smaller index wins — in the k-nearest sets (also at the k-th
place) and in their order, and for retrieval@1 — on every device and for every tile size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sjalign.device import resolve_device
from sjalign.errors import ShapeError, SjalignError

DEFAULT_KS = (1, 5, 10, 20, 50)
MAX_TILE_ELEMENTS = 1 << 24
MIN_BLOCK = 32  # rows per kNN block unless max_elements forces fewer (tiny blocks cost Python overhead)
EXACT_MARGIN = 8  # float32 candidates beyond the k-th that are re-scored in float64


def tile_rows(n_cols: int, chunk: int, max_elements: int = MAX_TILE_ELEMENTS) -> int:
    """Rows per tile: at most ``chunk``, and a (rows, n_cols) tile holds at most ``max_elements`` entries."""
    return max(1, min(int(chunk), int(max_elements) // max(int(n_cols), 1)))


def _sq_dists(q: torch.Tensor, x: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    """(m, d), (n, d), (n,) -> (m, n) squared Euclidean distances (the mm form)."""
    d2 = torch.addmm(x_sq[None, :], q, x.T, alpha=-2.0)  # ‖x‖² − 2 q·x
    return d2.add_((q * q).sum(1, keepdim=True))


def _centred(x: np.ndarray, mean: np.ndarray, dev: torch.device) -> torch.Tensor:
    """(n, d) data minus ``mean`` (in float64), as float32 on ``dev``: the matrix-product form
    loses less to cancellation on centred data (distances do not change)."""
    return torch.as_tensor(np.ascontiguousarray(np.asarray(x, np.float64) - mean), dtype=torch.float32, device=dev)


def _stored(x: np.ndarray, dev: torch.device) -> torch.Tensor:
    """The given values on ``dev``: float64 arrays stay float64, anything else becomes float32."""
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=dev)


def _fp32_error(q: torch.Tensor, x_sq_max: float) -> torch.Tensor:
    """(m, d) float32 centred query rows -> (m,) float64 bound on the error of one mm-form distance
    to a column of squared norm ≤ ``x_sq_max``, against the exact distance of the stored values:
    dot products and norms of d terms and two additions (2d + 4 roundings), and the rounding of
    the centred values to float32 (4 more)."""
    d = q.shape[1]
    return (2 * d + 8) * 2.0 ** -24 * ((q.double() ** 2).sum(1) + x_sq_max)


def _direct_sq(q: torch.Tensor, x: torch.Tensor, cols: torch.Tensor, max_elements: int) -> torch.Tensor:
    """Σ (q − x)² in float64: q (m, d), x (n, d), cols (m, c) column indices -> (m, c) float64.

    Works in pieces of at most ``max_elements`` differences (rows, then columns, per piece)."""
    m, c = cols.shape
    d = q.shape[1]
    out = torch.empty((m, c), dtype=torch.float64, device=q.device)
    col_step = max(1, min(c, max_elements // max(d, 1)))
    row_step = max(1, max_elements // max(col_step * d, 1))
    for r in range(0, m, row_step):
        qr = q[r:r + row_step, None, :].double()  # (mr, 1, d)
        for j in range(0, c, col_step):
            diff = qr - x[cols[r:r + row_step, j:j + col_step]].double()  # (mr, cc, d)
            out[r:r + row_step, j:j + col_step] = diff.square_().sum(-1)
    return out


def _smallest_lex(vals: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k smallest (value, index) pairs, lexicographically: ties to the smaller index."""
    by_index = torch.argsort(idx, dim=1)
    vals, idx = torch.gather(vals, 1, by_index), torch.gather(idx, 1, by_index)
    keep = torch.sort(vals, dim=1, stable=True).indices[:, :k]  # equal distances keep index order
    return torch.gather(vals, 1, keep), torch.gather(idx, 1, keep)


def _tile_candidates(d2: torch.Tensor, k: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, c) float32 tile -> its min(k, c) smallest values per row and their column indices + offset."""
    vals, idx = d2.topk(min(k, d2.shape[1]), dim=1, largest=False, sorted=False)
    return vals, idx + offset


def _exact_choice(vals32: torch.Tensor, idx: torch.Tensor, k: int, q: torch.Tensor, x: torch.Tensor,
                  err: torch.Tensor, complete: bool, max_elements: int, self_rows: torch.Tensor | None = None):
    """Choose each row's k nearest on exact distances from its float32 nominees.

    Args:
        vals32, idx: (m, c) float32 distances and column indices of the nominees (c ≥ k), sorted
            by value. q: (m, d) the rows' stored values; x: (n, d) the columns'.
        err: (m,) error bound of a float32 distance (:func:`_fp32_error`).
        complete: the nominees are every candidate column (nothing outside them to check).
        self_rows: (m,) the column that is the row itself (never a neighbour), or None.

    Returns:
        (m, k) int64 column indices, nearest first, ties to the smaller index: on float64 Σ (q − x)²
        of the nominees, or of every column for a row whose c-th nominee is within 2·err of its k-th
        (a column outside could tie or beat it).
    """
    _, out = _smallest_lex(_direct_sq(q, x, idx, max_elements), idx, k)
    if complete:
        return out
    unsure = (vals32[:, -1].double() <= vals32[:, k - 1].double() + 2 * err).nonzero().squeeze(1)
    n = len(x)
    rows_per = max(1, max_elements // max(n * q.shape[1], 1))
    for r in range(0, len(unsure), rows_per):
        rows = unsure[r:r + rows_per]
        every = torch.arange(n, device=x.device).expand(len(rows), n)
        exact = _direct_sq(q[rows], x, every, max_elements)
        if self_rows is not None:
            exact.masked_fill_(every == self_rows[rows, None], float("inf"))
        out[rows] = _smallest_lex(exact, every, k)[1]
    return out


def _merge_smallest(v1: torch.Tensor, i1: torch.Tensor, v2: torch.Tensor, i2: torch.Tensor, k: int):
    """Per row, the k smallest (value, index) pairs of two candidate sets, lexicographically (ties to smaller index)."""
    return _smallest_lex(torch.cat([v1, v2], 1), torch.cat([i1, i2], 1), k)


def knn_indices(x: np.ndarray, k: int, *, chunk: int = 2048, device: str | torch.device = "auto",
                max_elements: int = MAX_TILE_ELEMENTS) -> np.ndarray:
    """Indices of the k nearest other rows of x (Euclidean), nearest first.

    The distance matrix of a set with itself is symmetric, so it is computed once per pair of
    row blocks I ≤ J: the (b, b) tile D_IJ updates the running k nearest of the rows of I, and
    its transpose those of J, halving the matrix products of a row-by-row scan. A running list
    keeps, per row, the k smallest (distance, index) pairs seen so far, merged exactly
    (lexicographically), so the answer does not depend on the tiling.

    Args:
        x: (n, d). k: 1 ≤ k < n.
        chunk: most rows per block (b ≤ max(chunk, 32)).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ...
        max_elements: most distance entries held at once (a tile and its transpose: 2b² ≤ max_elements).

    Returns:
        (n, k) int64 on the CPU; row i never contains i; ties go to the smaller index.

    Raises:
        SjalignError: k out of range, or an unavailable device.
    """
    n = len(x)
    if not 1 <= k < n:
        raise SjalignError(f"k = {k} must be between 1 and n_test - 1 = {n - 1}")
    dev = resolve_device(device)
    x = np.asarray(x)
    xs = _stored(x, dev)  # (n, d) the values whose exact distances decide
    x64 = np.asarray(x, np.float64)
    xt = _centred(x64, x64.mean(0), dev)  # (n, d) for the float32 search
    x_sq = (xt * xt).sum(1)  # (n,)
    kk = min(k + EXACT_MARGIN, n - 1)  # nominees per row
    b = max(1, min(max(int(chunk), MIN_BLOCK), math.isqrt(max(int(max_elements) // 2, 1)), n))
    vals = torch.full((n, kk), float("inf"), device=dev)  # running nominees: float32 distances
    idx = torch.full((n, kk), n, dtype=torch.int64, device=dev)  # and indices (n = none yet, sorts last)
    for s in range(0, n, b):
        e = min(s + b, n)
        for t in range(s, n, b):
            f = min(t + b, n)
            d2 = _sq_dists(xt[s:e], xt[t:f], x_sq[t:f])  # (e − s, f − t)
            if t == s:
                r = torch.arange(e - s, device=dev)
                d2[r, r] = float("inf")  # exclude i itself
            vals[s:e], idx[s:e] = _merge_smallest(vals[s:e], idx[s:e], *_tile_candidates(d2, kk, t), kk)
            if t != s:
                d2 = d2.T.contiguous()  # (f − t, e − s): the same distances seen from the rows of J
                vals[t:f], idx[t:f] = _merge_smallest(vals[t:f], idx[t:f], *_tile_candidates(d2, kk, s), kk)
            del d2
    err = _fp32_error(xt, float(x_sq.max()))
    rows = torch.arange(n, device=dev)
    idx = torch.cat([_exact_choice(vals[r:r + b], idx[r:r + b], k, xs[r:r + b], xs, err[r:r + b],
                                   kk == n - 1, max_elements, self_rows=rows[r:r + b])
                     for r in range(0, n, b)])  # (n, k)
    return idx.cpu().numpy()


def nos_at_k(target: np.ndarray, pred: np.ndarray, ks=DEFAULT_KS, *, chunk: int = 2048,
             device: str | torch.device = "auto", max_elements: int = MAX_TILE_ELEMENTS) -> dict[int, float]:
    """NOS@k = 1 − (1/n) Σᵢ |N_k(Ẑbᵢ) ∩ N_k(Pᵢ)| / k for each k.

    N_k are k-nearest test neighbours (excluding i) within each space (:func:`knn_indices`,
    one pass per space for the largest k). 0 = identical neighbourhoods; about
    1 − k/(n−1) for unrelated spaces.

    Args:
        target: (n, d_b) Ẑb.  pred: (n, d_b) P = Ẑa Wᵀ (any width works; spaces are separate).
        chunk, device, max_elements: see :func:`knn_indices`.

    Raises:
        ShapeError: different numbers of rows.  SjalignError: a k outside 1..n−1.
    """
    if len(target) != len(pred):
        raise ShapeError(f"NOS@k needs paired rows, got {len(target)} and {len(pred)}")
    ks = sorted(set(int(k) for k in ks))
    kmax = ks[-1]
    kw = dict(chunk=chunk, device=device, max_elements=max_elements)
    nb_t = torch.from_numpy(knn_indices(target, kmax, **kw))  # (n, kmax)
    nb_p = torch.from_numpy(knn_indices(pred, kmax, **kw))
    step = tile_rows(kmax * kmax, chunk, max_elements)
    out = {}
    for k in ks:
        hits = 0
        for start in range(0, len(target), step):
            a, b = nb_t[start:start + step, :k], nb_p[start:start + step, :k]
            hits += int((a[:, :, None] == b[:, None, :]).any(-1).sum())
        out[k] = 1.0 - hits / (len(target) * k)
    return out


def retrieval_at_1(target: np.ndarray, pred: np.ndarray, *, chunk: int = 2048,
                   device: str | torch.device = "auto", max_elements: int = MAX_TILE_ELEMENTS) -> float:
    """Fraction of i whose nearest Ẑb (Euclidean) to Pᵢ is Ẑbᵢ; target, pred (n, d_b).

    Among equidistant targets the smaller index is the one retrieved.

    Raises:
        ShapeError: target and pred differ in shape.
    """
    if target.shape != pred.shape:
        raise ShapeError(f"retrieval needs two arrays of one shape, got {target.shape} and {pred.shape}")
    dev = resolve_device(device)
    t64 = np.asarray(target, np.float64)
    mean = t64.mean(0)
    ts, ps = _stored(np.asarray(target), dev), _stored(np.asarray(pred), dev)  # the values that decide
    t, p = _centred(t64, mean, dev), _centred(pred, mean, dev)  # for the float32 search
    t_sq = (t * t).sum(1)
    t_sq_max = float(t_sq.max())
    step = tile_rows(len(t), chunk, max_elements)
    kk = min(1 + EXACT_MARGIN, len(t))
    hits = 0
    for start in range(0, len(p), step):
        rows = slice(start, start + step)
        near, cand = _sq_dists(p[rows], t, t_sq).topk(kk, dim=1, largest=False, sorted=True)  # (m, kk)
        nearest = _exact_choice(near, cand, 1, ps[rows], ts, _fp32_error(p[rows], t_sq_max), kk == len(t),
                                max_elements)[:, 0]
        hits += int((nearest == torch.arange(start, start + len(nearest), device=dev)).sum())
    return hits / len(p)
