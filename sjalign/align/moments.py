"""Streaming second moments of paired latents (SPEC §3: memory O(d²), shards add up).

Rows x (d_a,) and y (d_b,) are accumulated as sums of the *shifted* rows u = x − c_x,
v = y − c_y for a fixed shift c (zero by default; a pilot mean when streaming). Covariances
do not depend on the shift, but computing them from shifted rows avoids the cancellation of
E[x²] − E[x]² when |mean| ≫ std, which is what lets the chunk products run in float32:

    S_x = Σu,  S_y = Σv,  S_xx = Σuuᵀ,  S_xy = Σuvᵀ,  S_yy = Σv² (diagonal only)
    mean_x = c_x + S_x / n,   cov_xx = S_xx / n − (S_x / n)(S_x / n)ᵀ,   cov_xy likewise.

Error bound of float32 chunk products (:meth:`Moments.add_centred` with float32 buffers):
each chunk of m rows is summed by BLAS in float32 and the chunk sums are added in float64,
so an entry of C = S_xx / n carries an absolute error of about u₃₂·√m·σ_iσ_j (u₃₂ = 6e-8;
≈ 5e-6·σ_iσ_j for m = 8192, less once independent chunk errors average out). With the
pilot-mean shift the error scales with the variances, not with mean²: without it a feature
with |mean| = 1e4·std would lose everything (see the tests). The solve then amplifies it by the
conditioning: W moves by roughly κ(C_aa + λI)·1e-7 relative. That is below 1e-5 for
well-conditioned latents (κ ≲ 100), but nearly collapsed latents (effective rank ≪ d, κ ~ 1e5–1e7)
lose their small-eigenvalue directions. That is why fit-map defaults to float64 buffers, which
give float64 results at ≈ 2× the time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sjalign.errors import ShapeError, SjalignError

CONSTANT_REL_VAR = 1e-10


@dataclass
class Moments:
    """Running sums over paired rows (x, y), shifted by (shift_x, shift_y), accumulated in float64.

    Attributes:
        n: number of rows seen.
        sum_x: (d_a,) Σ(x − c_x).   sum_y: (d_b,) Σ(y − c_y).
        sum_xx: (d_a, d_a) Σ(x − c_x)(x − c_x)ᵀ.   sum_xy: (d_a, d_b) Σ(x − c_x)(y − c_y)ᵀ.
        sum_yy_diag: (d_b,) Σ(y − c_y)².
        shift_x: (d_a,) c_x.   shift_y: (d_b,) c_y (zeros unless given).

    Moments of several shards (machines, GPUs, files) combine with ``+`` (re-expressed in the
    left operand's shift when the shifts differ); ``a − b`` removes the rows of ``b`` (e.g. a
    cross-validation fold) from ``a``.
    """

    n: int
    sum_x: np.ndarray
    sum_y: np.ndarray
    sum_xx: np.ndarray
    sum_xy: np.ndarray
    sum_yy_diag: np.ndarray
    shift_x: np.ndarray | None = field(default=None)
    shift_y: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        if self.shift_x is None:
            self.shift_x = np.zeros(len(self.sum_x))
        if self.shift_y is None:
            self.shift_y = np.zeros(len(self.sum_y))
        self.shift_x = np.asarray(self.shift_x, dtype=np.float64)
        self.shift_y = np.asarray(self.shift_y, dtype=np.float64)

    @classmethod
    def zeros(cls, d_a: int, d_b: int, *, shift_x: np.ndarray | None = None,
              shift_y: np.ndarray | None = None) -> "Moments":
        """Empty moments for d_a- and d_b-dimensional rows, optionally shifted."""
        return cls(0, np.zeros(d_a), np.zeros(d_b), np.zeros((d_a, d_a)), np.zeros((d_a, d_b)), np.zeros(d_b),
                   shift_x, shift_y)

    def update(self, x: np.ndarray, y: np.ndarray) -> "Moments":
        """Add a chunk of raw paired rows x (m, d_a), y (m, d_b) in place (products in float64)."""
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise ShapeError(f"paired chunks must be (m, d_a) and (m, d_b), got {x.shape} and {y.shape}")
        u = np.asarray(x, dtype=np.float64)
        v = np.asarray(y, dtype=np.float64)
        if self.shift_x.any():
            u = u - self.shift_x
        if self.shift_y.any():
            v = v - self.shift_y
        return self.add_centred(u, v)

    def add_centred(self, u: np.ndarray, v: np.ndarray) -> "Moments":
        """Add rows already shifted, u = x − shift_x (m, d_a) and v = y − shift_y (m, d_b), in place.

        The products run in the buffers' dtype (float32: BLAS ssyrk for uᵀu — numpy calls syrk
        for ``u.T @ u`` — and sgemm for uᵀv; float64: dsyrk/dgemm) and are added to the float64
        sums: :func:`chunk_sums` then :meth:`add_sums`.
        """
        if u.ndim != 2 or v.ndim != 2 or len(u) != len(v):
            raise ShapeError(f"paired chunks must be (m, d_a) and (m, d_b), got {u.shape} and {v.shape}")
        if u.shape[1] != len(self.sum_x) or v.shape[1] != len(self.sum_y):
            raise ShapeError(f"chunks of widths {u.shape[1]}, {v.shape[1]} do not fit moments of "
                             f"{len(self.sum_x)}, {len(self.sum_y)}")
        return self.add_sums(chunk_sums(u, v)) if len(u) else self

    def add_sums(self, sums: "Moments") -> "Moments":
        """Add another chunk's sums in place, taken with the same shift (:func:`chunk_sums`); O(d²)."""
        self.n += sums.n
        self.sum_x += sums.sum_x
        self.sum_y += sums.sum_y
        self.sum_xx += sums.sum_xx
        self.sum_xy += sums.sum_xy
        self.sum_yy_diag += sums.sum_yy_diag
        return self

    def reshift(self, shift_x: np.ndarray, shift_y: np.ndarray) -> "Moments":
        """The same rows' moments expressed with another shift (a new object).

        With u = x − c_old and δ = c_old − c_new, x − c_new = u + δ, so
        Σ(u+δ)(u+δ)ᵀ = S_uu + δS_uᵀ + S_uδᵀ + nδδᵀ (and likewise for the cross and diagonal terms).
        """
        dx = self.shift_x - np.asarray(shift_x, dtype=np.float64)
        dy = self.shift_y - np.asarray(shift_y, dtype=np.float64)
        n = self.n
        return Moments(
            n, self.sum_x + n * dx, self.sum_y + n * dy,
            self.sum_xx + np.outer(dx, self.sum_x) + np.outer(self.sum_x, dx) + n * np.outer(dx, dx),
            self.sum_xy + np.outer(dx, self.sum_y) + np.outer(self.sum_x, dy) + n * np.outer(dx, dy),
            self.sum_yy_diag + 2.0 * dy * self.sum_y + n * dy**2,
            shift_x, shift_y)

    def _aligned(self, other: "Moments") -> "Moments":
        if self.sum_xy.shape != other.sum_xy.shape:
            raise ShapeError(f"cannot combine moments of shapes {self.sum_xy.shape} and {other.sum_xy.shape}")
        if np.array_equal(self.shift_x, other.shift_x) and np.array_equal(self.shift_y, other.shift_y):
            return other
        return other.reshift(self.shift_x, self.shift_y)

    def __add__(self, other: "Moments") -> "Moments":
        o = self._aligned(other)
        return Moments(self.n + o.n, self.sum_x + o.sum_x, self.sum_y + o.sum_y, self.sum_xx + o.sum_xx,
                       self.sum_xy + o.sum_xy, self.sum_yy_diag + o.sum_yy_diag, self.shift_x, self.shift_y)

    def __sub__(self, other: "Moments") -> "Moments":
        o = self._aligned(other)
        return Moments(self.n - o.n, self.sum_x - o.sum_x, self.sum_y - o.sum_y, self.sum_xx - o.sum_xx,
                       self.sum_xy - o.sum_xy, self.sum_yy_diag - o.sum_yy_diag, self.shift_x, self.shift_y)

    def all_finite(self) -> bool:
        """False when a NaN/Inf reached the sums (a non-finite input row, or float32 overflow)."""
        return bool(np.isfinite(self.sum_x).all() and np.isfinite(self.sum_y).all()
                    and np.isfinite(np.diag(self.sum_xx)).all() and np.isfinite(self.sum_yy_diag).all()
                    and np.isfinite(self.sum_xy).all())

    def standardised(self) -> "Standardised":
        """Means, stds (population, ddof 0) and the standardised moments C_aa, C_ab.

        A constant feature (variance ≤ 1e-10·mean², or exactly 0) gets std 1, so it stays 0 after centring; its
        index is listed in ``constant_a`` / ``constant_b``.

        Raises:
            SjalignError: fewer than 2 rows.
        """
        if self.n < 2:
            raise SjalignError(f"need at least 2 training pairs to fit a map, got {self.n}")
        n = self.n
        ux, uy = self.sum_x / n, self.sum_y / n  # means of the shifted rows
        mx, my = self.shift_x + ux, self.shift_y + uy
        cov_xx = self.sum_xx / n - np.outer(ux, ux)
        cov_xy = self.sum_xy / n - np.outer(ux, uy)
        var_x = np.clip(np.diag(cov_xx), 0.0, None)
        var_y = np.clip(self.sum_yy_diag / n - uy**2, 0.0, None)
        # E[x²] − E[x]² of a constant feature cancels to rounding error (~1e-16·mean² per
        # accumulation), not 0; a std below 1e-5·|mean| is called constant, far above that noise.
        const_x = var_x <= CONSTANT_REL_VAR * mx**2
        const_y = var_y <= CONSTANT_REL_VAR * my**2
        cov_xx[const_x, :] = cov_xx[:, const_x] = 0.0
        cov_xy[const_x, :] = 0.0
        cov_xy[:, const_y] = 0.0
        sx = np.where(const_x, 1.0, np.sqrt(var_x))
        sy = np.where(const_y, 1.0, np.sqrt(var_y))
        c_aa = cov_xx / np.outer(sx, sx)
        c_ab = cov_xy / np.outer(sx, sy)
        return Standardised(n, mx, sx, my, sy, c_aa, c_ab, np.flatnonzero(const_x), np.flatnonzero(const_y))

    def heldout_sse(self, std: "Standardised", ws: dict) -> dict:
        """Σ over these rows of ‖ẑb − W ẑa‖², standardising with another split's statistics ``std``.

        For cross-validation from moments alone: with ẑa = (x − μa)/σa, ẑb = (y − μb)/σb,
        Σ‖ẑb − Wẑa‖² = Σ‖ẑb‖² − 2 tr(W G_ab) + tr(W G_aa Wᵀ), where G_aa = Σẑaẑaᵀ and G_ab = Σẑaẑbᵀ
        follow from these (shifted) sums and δ = μ − c.

        Args:
            std: train-part statistics (means, stds) of the fold's complement.
            ws: {key: W (d_b, d_a)}.

        Returns:
            {key: sum of squared errors over these rows and all d_b outputs}.
        """
        da = std.a_mean - self.shift_x
        db = std.b_mean - self.shift_y
        n = self.n
        g_aa = self.sum_xx - np.outer(da, self.sum_x) - np.outer(self.sum_x, da) + n * np.outer(da, da)
        g_ab = self.sum_xy - np.outer(da, self.sum_y) - np.outer(self.sum_x, db) + n * np.outer(da, db)
        g_aa /= np.outer(std.a_std, std.a_std)
        g_ab /= np.outer(std.a_std, std.b_std)
        t_bb = float(np.sum((self.sum_yy_diag - 2.0 * db * self.sum_y + n * db**2) / std.b_std**2))
        return {key: t_bb - 2.0 * float(np.sum(w.T * g_ab)) + float(np.sum((w @ g_aa) * w)) for key, w in ws.items()}


@dataclass(frozen=True)
class Standardised:
    """Train statistics and standardised moments: C_aa = ẐaᵀẐa/n (d_a, d_a), C_ab = ẐaᵀẐb/n (d_a, d_b)."""

    n: int
    a_mean: np.ndarray
    a_std: np.ndarray
    b_mean: np.ndarray
    b_std: np.ndarray
    c_aa: np.ndarray
    c_ab: np.ndarray
    constant_a: np.ndarray
    constant_b: np.ndarray


def chunk_sums(u: np.ndarray, v: np.ndarray, out: Moments | None = None) -> Moments:
    """One chunk's sums of shifted rows u (m, d_a), v (m, d_b), as Moments in the chunk's dtype.

    Σu (d_a,), Σv (d_b,), uᵀu (d_a, d_a), uᵀv (d_a, d_b) and Σv² (d_b,): the expensive, O(m·d²)
    step of :meth:`Moments.add_centred`, kept apart so that several threads can compute chunks'
    sums at once and add them (:meth:`Moments.add_sums`) in order. Products run in the dtype of
    ``u`` and ``v``; numpy calls BLAS syrk for ``u.T @ u``. ``out``: an earlier result of the same
    shapes and dtype to write into, so a streaming loop allocates nothing per chunk.
    """
    if out is None:
        out = Moments(0, np.empty(u.shape[1], u.dtype), np.empty(v.shape[1], v.dtype),
                      np.empty((u.shape[1], u.shape[1]), u.dtype), np.empty((u.shape[1], v.shape[1]), u.dtype),
                      np.empty(v.shape[1], v.dtype))
    ones = np.ones(len(u), dtype=u.dtype)
    np.matmul(ones, u, out=out.sum_x)  # column sums by BLAS gemv
    np.matmul(ones.astype(v.dtype, copy=False), v, out=out.sum_y)
    np.matmul(u.T, u, out=out.sum_xx)  # syrk
    np.matmul(u.T, v, out=out.sum_xy)
    np.einsum("ij,ij->j", v, v, out=out.sum_yy_diag)
    out.n = len(u)
    return out


def accumulate(x: np.ndarray, y: np.ndarray, *, chunk: int = 65536) -> Moments:
    """Moments of paired arrays x (n, d_a), y (n, d_b), read chunk by chunk (works on memmaps)."""
    if len(x) != len(y):
        raise ShapeError(f"x has {len(x)} rows and y has {len(y)}")
    mom = Moments.zeros(x.shape[1], y.shape[1])
    for start in range(0, len(x), chunk):
        mom.update(np.asarray(x[start:start + chunk]), np.asarray(y[start:start + chunk]))
    return mom
