"""Streaming second moments of paired latents (SPEC §3: memory O(d²), shards add up)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sjalign.errors import ShapeError, SjalignError

CONSTANT_REL_VAR = 1e-10


@dataclass
class Moments:
    """Running sums over paired rows (x, y), accumulated in float64.

    Attributes:
        n: number of rows seen.
        sum_x: (d_a,) Σx.   sum_y: (d_b,) Σy.
        sum_xx: (d_a, d_a) XᵀX.   sum_xy: (d_a, d_b) XᵀY.   sum_yy_diag: (d_b,) Σy².

    Moments of several shards (machines, GPUs, files) combine with ``+``.
    """

    n: int
    sum_x: np.ndarray
    sum_y: np.ndarray
    sum_xx: np.ndarray
    sum_xy: np.ndarray
    sum_yy_diag: np.ndarray

    @classmethod
    def zeros(cls, d_a: int, d_b: int) -> "Moments":
        return cls(0, np.zeros(d_a), np.zeros(d_b), np.zeros((d_a, d_a)), np.zeros((d_a, d_b)), np.zeros(d_b))

    def update(self, x: np.ndarray, y: np.ndarray) -> "Moments":
        """Add a chunk of paired rows x (m, d_a), y (m, d_b) in place."""
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise ShapeError(f"paired chunks must be (m, d_a) and (m, d_b), got {x.shape} and {y.shape}")
        x = x.astype(np.float64, copy=False)
        y = y.astype(np.float64, copy=False)
        self.n += len(x)
        self.sum_x += x.sum(0)
        self.sum_y += y.sum(0)
        self.sum_xx += x.T @ x
        self.sum_xy += x.T @ y
        self.sum_yy_diag += np.einsum("ij,ij->j", y, y)
        return self

    def __add__(self, other: "Moments") -> "Moments":
        if self.sum_xy.shape != other.sum_xy.shape:
            raise ShapeError(f"cannot add moments of shapes {self.sum_xy.shape} and {other.sum_xy.shape}")
        return Moments(self.n + other.n, self.sum_x + other.sum_x, self.sum_y + other.sum_y,
                       self.sum_xx + other.sum_xx, self.sum_xy + other.sum_xy, self.sum_yy_diag + other.sum_yy_diag)

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
        mx, my = self.sum_x / n, self.sum_y / n
        cov_xx = self.sum_xx / n - np.outer(mx, mx)
        cov_xy = self.sum_xy / n - np.outer(mx, my)
        var_x = np.clip(np.diag(cov_xx), 0.0, None)
        var_y = np.clip(self.sum_yy_diag / n - my**2, 0.0, None)
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


def accumulate(x: np.ndarray, y: np.ndarray, *, chunk: int = 65536) -> Moments:
    """Moments of paired arrays x (n, d_a), y (n, d_b), read chunk by chunk (works on memmaps)."""
    if len(x) != len(y):
        raise ShapeError(f"x has {len(x)} rows and y has {len(y)}")
    mom = Moments.zeros(x.shape[1], y.shape[1])
    for start in range(0, len(x), chunk):
        mom.update(np.asarray(x[start:start + chunk]), np.asarray(y[start:start + chunk]))
    return mom
