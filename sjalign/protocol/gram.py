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

from dataclasses import dataclass

import numpy as np

from sjalign.align.moments import Moments

ROW_CHUNK = 65536  # rows read and multiplied at a time: memory O(ROW_CHUNK · (d_a + d_b))


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


def cross_gram(pairs, rows_x: np.ndarray, rows_y: np.ndarray, mean_a: np.ndarray, std_a: np.ndarray,
               mean_b: np.ndarray, std_b: np.ndarray) -> np.ndarray:
    """Ẑaᵀ Ẑb / n over paired index lists: row i of Ẑa is pair ``rows_x[i]``'s x, row i of Ẑb pair
    ``rows_y[i]``'s y, each standardised ((v − mean) / std) in float64. With ``rows_y`` a permutation of
    ``rows_x`` this is the C_ab of shuffled pairs (the null); memory O(:data:`ROW_CHUNK` · d + d_a · d_b).
    Returns (d_a, d_b).
    """
    out = np.zeros((pairs.d_a, pairs.d_b))
    for sl in chunks(len(rows_x)):
        out += centred(pairs.take_x(rows_x[sl]), mean_a).T @ centred(pairs.take_y(rows_y[sl]), mean_b)
    return out / np.outer(std_a, std_b) / len(rows_x)  # the scaling of Ẑ, once on the (d_a, d_b) sum


def centred(v: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """v − mean in float64, in one new array (m, d)."""
    z = v.astype(np.float64)
    z -= mean
    return z
