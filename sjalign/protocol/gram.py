"""Second moments of paired rows read chunk by chunk from a pair source (SPEC §4 at any size).

The evaluation protocol never holds a split's rows: it reads them through ``take_x`` / ``take_y``
(:class:`sjalign.align.pairing.Pairs` in memory, :class:`sjalign.align.streaming.FilePairs` from
the files) in chunks of :data:`ROW_CHUNK` and keeps O(d²) sums. From the raw Gram of the
concatenated rows v = [x, y] (d = d_a + d_b) every standardised moment follows by algebra:
with the shift c (the first chunk's mean), u = v − c, s = Σu and G = Σuuᵀ over n rows,
the Gram of z = (v − μ)/σ is

    Σzzᵀ = D⁻¹ (G + δsᵀ + sδᵀ + nδδᵀ) D⁻¹,   δ = c − μ,  D = diag(σ),

and its column-centred form is D⁻¹ (G − ssᵀ/n) D⁻¹ (the shift keeps that subtraction free of
the cancellation of E[v²] − E[v]²).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from sjalign.align.moments import Moments
from sjalign.align.streaming import row_dtype

ROW_CHUNK = 65536  # rows read and multiplied at a time: memory O(ROW_CHUNK · (d_a + d_b))
NULL_BLOCK_BYTES = 256 * 2**20  # one block of both sides' float64 rows in the shuffled-pair null
NULL_GROUP_BYTES = 256 * 2**20  # the permutations' row indices and sums handled in one pass of the null


def chunks(n: int, chunk: int | None = None):
    """Consecutive slices covering range(n), at most ``chunk`` (default :data:`ROW_CHUNK`) long."""
    chunk = chunk or ROW_CHUNK
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))


@dataclass
class PairGram:
    """Raw Gram of paired rows [x, y] (d = d_a + d_b), shifted by the first chunk's mean, in float64.

    Attributes:
        n: rows.  d_a: width of x.
        shift: (d,) c.  s: (d,) Σ(v − c).  g: (d, d) Σ(v − c)(v − c)ᵀ.
    """

    n: int
    d_a: int
    shift: np.ndarray
    s: np.ndarray
    g: np.ndarray

    @classmethod
    def of(cls, pairs, idx: np.ndarray) -> "PairGram":
        """Accumulate over the pairs ``idx`` (indices into ``pairs``), :data:`ROW_CHUNK` rows at a time.

        Raises:
            ValueError: no rows.
        """
        if len(idx) == 0:
            raise ValueError("PairGram needs at least one row")
        gram = None
        for sl in chunks(len(idx)):
            x, y = pairs.take_x(idx[sl]), pairs.take_y(idx[sl])
            gram = cls.start(x, y) if gram is None else gram
            gram.add(x, y)
        return gram

    @classmethod
    def start(cls, x: np.ndarray, y: np.ndarray) -> "PairGram":
        """Empty sums shifted by the mean of a first chunk x (m, d_a), y (m, d_b) (not added)."""
        shift = np.concatenate([x.mean(0, dtype=np.float64), y.mean(0, dtype=np.float64)])
        return cls(0, x.shape[1], shift, np.zeros(len(shift)), np.zeros((len(shift), len(shift))))

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add paired rows x (m, d_a), y (m, d_b) in place (float64 products)."""
        v = np.hstack([x, y]).astype(np.float64)  # (m, d)
        v -= self.shift
        self.n += len(v)
        self.s += v.sum(0)
        self.g += v.T @ v  # syrk

    def moments(self) -> Moments:
        """The same rows as :class:`sjalign.align.moments.Moments` (x against y), for ``standardised()``."""
        a = self.d_a
        return Moments(self.n, self.s[:a].copy(), self.s[a:].copy(), self.g[:a, :a].copy(), self.g[:a, a:].copy(),
                       np.diag(self.g)[a:].copy(), self.shift[:a], self.shift[a:])

    def standardised(self, a_mean: np.ndarray, a_std: np.ndarray, b_mean: np.ndarray, b_std: np.ndarray, *,
                     centred: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Σzzᵀ / n for z = ([x, y] − mean) / std, as its blocks (C_aa (d_a, d_a), C_ab (d_a, d_b),
        C_bb (d_b, d_b)); ``centred``: about these rows' own mean instead of ``a_mean``, ``b_mean``."""
        if centred:
            g = self.g - np.outer(self.s, self.s) / self.n
        else:
            delta = self.shift - np.concatenate([a_mean, b_mean]).astype(np.float64)
            g = self.g + np.outer(delta, self.s) + np.outer(self.s, delta) + self.n * np.outer(delta, delta)
        std = np.concatenate([a_std, b_std]).astype(np.float64)
        c = g / np.outer(std, std) / self.n
        a = self.d_a
        return c[:a, :a], c[:a, a:], c[a:, a:]


def shuffled_cross_grams(pairs, rows: np.ndarray, seeds: Sequence[int], mean_a: np.ndarray, std_a: np.ndarray,
                         mean_b: np.ndarray, std_b: np.ndarray, *, block: int | None = None) -> Iterator[np.ndarray]:
    """The C_ab of shuffled pairs (the null), one per seed, in order: C_π = Ẑaᵀ Ẑb_π / n (d_a, d_b), where row i
    of Ẑa is pair ``rows[i]``'s x and row i of Ẑb_π pair ``rows[π(i)]``'s y, each standardised
    ((v − mean) / std) in float64, and π = ``np.random.default_rng(seed).permutation(n)`` (the draw of
    :func:`sjalign.align.shuffled_map`).

    Block-wise, so that no permutation gathers rows at random from the files: the rows are cut into K
    blocks of ``block`` (default: :data:`NULL_BLOCK_BYTES` of both sides' float64 rows, at least
    :data:`ROW_CHUNK`); with block I of x held, each block J of y is read once and every permutation's
    pairs (i ∈ I, π(i) ∈ J) are multiplied from memory. Per group of permutations (as many as
    :data:`NULL_GROUP_BYTES` holds: one int32 index per row and one (d_a, d_b) sum each) x is read once
    and y K times, in row order. Memory: two blocks plus the group (and its row orders within one block).

    Raises:
        ValueError: no rows.
    """
    n, d_a, d_b = len(rows), pairs.d_a, pairs.d_b
    if n == 0:
        raise ValueError("shuffled_cross_grams needs at least one row")
    block = min(n, block or max(ROW_CHUNK, NULL_BLOCK_BYTES // (8 * (d_a + d_b))))
    k = -(-n // block)
    index = row_dtype(n)
    group = max(1, NULL_GROUP_BYTES // (index.itemsize * n + 8 * d_a * d_b))
    scale = np.outer(std_a, std_b) * n  # the scaling of Ẑ, once on each (d_a, d_b) sum
    seeds = list(seeds)
    for first in range(0, len(seeds), group):
        perms = [np.random.default_rng(s).permutation(n).astype(index) for s in seeds[first:first + group]]
        sums = np.zeros((len(perms), d_a, d_b))
        for own_block in chunks(n, block):
            lo = own_block.start
            za = centred(pairs.take_x(rows[own_block]), mean_a)  # (m, d_a)
            by_block = []  # per permutation: this block's positions ordered by their partner's block, and bounds
            for perm in perms:
                target_block = perm[own_block] // block
                order = np.argsort(target_block.astype(np.uint16) if k < 2**16 else target_block,
                                   kind="stable").astype(index)
                by_block.append((order, np.searchsorted(target_block[order], np.arange(k + 1))))
            for j, partner_block in enumerate(chunks(n, block)):
                jlo = partner_block.start
                zb = centred(pairs.take_y(rows[partner_block]), mean_b)  # (m', d_b)
                for p, (perm, (order, bounds)) in enumerate(zip(perms, by_block)):
                    own = order[bounds[j]:bounds[j + 1]]  # positions (within block I) whose partner is in block J
                    if len(own):
                        sums[p] += za[own].T @ zb[perm[lo + own] - jlo]
        yield from (s / scale for s in sums)


def centred(v: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """v − mean in float64, in one new array (m, d)."""
    z = v.astype(np.float64)
    z -= mean
    return z
