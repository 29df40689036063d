"""Linear alignment maps between standardised latents (SPEC §3; Social-JEPA Eq. 3-4).

Convention: z_b ≈ W z_a with W (d_b, d_a), like ``nn.Linear.weight``; z are latents
standardised with train-split statistics.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from sjalign.align.moments import Standardised, accumulate
from sjalign.errors import OptionError, ShapeError, SjalignError

METHODS = ("ridge", "lstsq", "procrustes")
DEFAULT_LAMBDA = 1e-3
LAMBDA_GRID = tuple(10.0**e for e in range(-6, 3))


class IllConditionedWarning(UserWarning):
    """C_aa is singular or nearly so; the pseudoinverse was used."""


@dataclass
class AlignmentMap:
    """A fitted map with the train statistics needed to apply it to raw latents.

    Attributes:
        W: (d_b, d_a) float32, the map in standardised coordinates.
        a_mean, a_std: (d_a,) train statistics of the source side.
        b_mean, b_std: (d_b,) train statistics of the target side.
        train_state_ids: (n_train,) int64.
        method: ridge | lstsq | procrustes.
        lam: ridge λ (0 for lstsq and procrustes).
        info: extra facts (kappa_caa, constant features, ...).
    """

    W: np.ndarray
    a_mean: np.ndarray
    a_std: np.ndarray
    b_mean: np.ndarray
    b_std: np.ndarray
    train_state_ids: np.ndarray
    method: str
    lam: float
    info: dict = field(default_factory=dict)

    @property
    def d_a(self) -> int:
        return int(self.W.shape[1])

    @property
    def d_b(self) -> int:
        return int(self.W.shape[0])

    def refit_options(self) -> dict:
        """``method`` and ``lam`` to fit another map the same way (null, sweeps, reverse map).

        A derived map (e.g. ``pinv(ridge)``) is refitted as ridge with its λ; lstsq and
        Procrustes take λ = 0.
        """
        method = self.method if self.method in METHODS else "ridge"
        return {"method": method, "lam": self.lam if method == "ridge" else 0.0}

    def standardise_a(self, x: np.ndarray) -> np.ndarray:
        """(n, d_a) raw source latents -> (n, d_a) standardised with train statistics."""
        return (x - self.a_mean) / self.a_std

    def standardise_b(self, y: np.ndarray) -> np.ndarray:
        """(n, d_b) raw target latents -> (n, d_b) standardised with train statistics."""
        return (y - self.b_mean) / self.b_std

    def predict_standardised(self, x: np.ndarray) -> np.ndarray:
        """P = Ẑa Wᵀ: (n, d_a) raw source latents -> (n, d_b) mapped, in standardised b units."""
        return self.standardise_a(x) @ self.W.T

    def apply(self, x: np.ndarray) -> np.ndarray:
        """b̂ = ((a − a_mean) / a_std) Wᵀ · b_std + b_mean: (n, d_a) raw -> (n, d_b) raw target units.

        Raises:
            ShapeError: x is not (n, d_a).
        """
        if x.ndim != 2 or x.shape[1] != self.d_a:
            raise ShapeError(f"map expects latents of dimension {self.d_a}, got shape {x.shape}")
        return (self.predict_standardised(x) * self.b_std + self.b_mean).astype(np.float32)


def solve_ridge(c_aa: np.ndarray, c_ab: np.ndarray, lam: float) -> np.ndarray:
    """Wᵀ = (C_aa + λI)⁻¹ C_ab; returns W (d_b, d_a). Needs λ > 0 or a non-singular C_aa."""
    a = c_aa + lam * np.eye(len(c_aa))
    try:
        wt = scipy.linalg.solve(a, c_ab, assume_a="pos")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        wt = scipy.linalg.lstsq(a, c_ab)[0]
    return wt.T


def condition_number(c_aa: np.ndarray) -> float:
    """κ(C_aa) = λ_max / λ_min of a symmetric PSD matrix; inf when λ_min ≤ 1e-12·λ_max."""
    eig = np.linalg.eigvalsh(c_aa)
    top = max(float(eig[-1]), 0.0)
    bottom = max(float(eig[0]), 0.0)
    return float("inf") if bottom <= 1e-12 * max(top, 1e-300) else top / bottom


def solve_lstsq(c_aa: np.ndarray, c_ab: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimum-norm least squares Wᵀ = C_aa⁺ C_ab (Moore–Penrose); returns (W, κ(C_aa))."""
    kappa = condition_number(c_aa)
    w = (np.linalg.pinv(c_aa, rcond=1e-10, hermitian=True) @ c_ab).T
    return w, kappa


def solve_procrustes(c_ab: np.ndarray) -> np.ndarray:
    """W = U Vᵀ with U Σ Vᵀ = SVD(ẐbᵀẐa) (orthogonal if d_a = d_b, else semi-orthogonal)."""
    u, _, vt = np.linalg.svd(c_ab.T, full_matrices=False)  # (d_b, d_a) = ẐbᵀẐa / n
    return u @ vt


def map_from_moments(std: Standardised, train_state_ids: np.ndarray, *, method: str = "ridge",
                     lam: float = DEFAULT_LAMBDA, lstsq_fallback: bool = False) -> AlignmentMap:
    """Fit W from standardised moments.

    Args:
        lstsq_fallback: with ``method="lstsq"`` and fewer train pairs than source dimensions
            (n < d_a, so C_aa is singular and the pseudoinverse interpolates noise), warn with
            κ(C_aa) and fit ridge instead (λ = ``lam``, or 1e-3 when ``lam`` is 0). The map then
            says ``method = "ridge"`` and ``info["requested_method"] = "lstsq"``. Off by default,
            so sweeps can still show the minimum-norm solution's κ blow-up at small budgets.

    Raises:
        SjalignError: unknown method or negative λ.

    Warns:
        IllConditionedWarning: lstsq on a singular / ill-conditioned C_aa (names κ(C_aa)), the fallback, or
            Procrustes on a rank-deficient C_ab (not unique: names its rank).
    """
    if method not in METHODS:
        raise SjalignError(f"unknown map method '{method}' (use {', '.join(METHODS)})")
    if lam < 0:
        raise OptionError(f"{{lam}} must be >= 0, got {lam}")
    info: dict = {}
    d_a = len(std.c_aa)
    if method == "lstsq" and lstsq_fallback and std.n < d_a:
        kappa = condition_number(std.c_aa)
        lam = lam if lam > 0 else DEFAULT_LAMBDA
        warnings.warn(f"lstsq needs at least as many train pairs as dimensions, got n_train = {std.n} < d_a = {d_a}: "
                      f"C_aa is singular (κ(C_aa) = {kappa:.3g}); falling back to ridge with λ = {lam:g}",
                      IllConditionedWarning, stacklevel=2)
        info.update(requested_method="lstsq", kappa_caa=kappa,
                    fallback=f"ridge (lambda {lam:g}): n_train {std.n} < d_a {d_a}")
        method = "ridge"
    if method == "ridge":
        w = solve_ridge(std.c_aa, std.c_ab, lam)
    elif method == "lstsq":
        w, kappa = solve_lstsq(std.c_aa, std.c_ab)
        info["kappa_caa"] = kappa
        lam = 0.0
        if not np.isfinite(kappa) or kappa > 1e8:
            warnings.warn(f"C_aa is singular or ill-conditioned (κ(C_aa) = {kappa:.3g}, "
                          f"n_train = {std.n}, d_a = {len(std.c_aa)}); using the minimum-norm "
                          "pseudoinverse solution", IllConditionedWarning, stacklevel=2)
    else:
        w = solve_procrustes(std.c_ab)
        lam = 0.0
        from sjalign.metrics.diagnostics import numerical_rank

        rank = numerical_rank(std.c_ab)  # the same rule as W's rank
        info["c_ab_rank"] = rank
        if rank < min(std.c_ab.shape):
            warnings.warn(f"orthogonal Procrustes: C_ab has rank {rank} < min(d_a, d_b) = {min(std.c_ab.shape)} "
                          f"(n_train = {std.n}); the map is not unique on the other {min(std.c_ab.shape) - rank} "
                          "directions, where the SVD picks one arbitrarily, so its held-out error is not "
                          "determined by the data (use ridge, or more train pairs)", IllConditionedWarning, stacklevel=2)
    info["constant_a"] = std.constant_a.tolist()
    info["constant_b"] = std.constant_b.tolist()
    return AlignmentMap(w.astype(np.float32), std.a_mean.astype(np.float32), std.a_std.astype(np.float32),
                        std.b_mean.astype(np.float32), std.b_std.astype(np.float32),
                        np.asarray(train_state_ids, dtype=np.int64), method, float(lam), info)


def choose_lambda(x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0,
                  grid: tuple[float, ...] = LAMBDA_GRID) -> tuple[float, dict[float, float]]:
    """Pick ridge λ by k-fold cross-validation of held-out MSE on the train split.

    Each fold standardises with its own training part. Returns (best λ, {λ: mean MSE}).
    """
    n = len(x)
    if n < 2 * folds:
        raise OptionError(f"{{lam}} auto needs at least {2 * folds} training pairs, got {n}")
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    scores = {lam: 0.0 for lam in grid}
    for f in range(folds):
        tr, te = fold_of != f, fold_of == f
        std = accumulate(x[tr], y[tr]).standardised()
        za = (x[te] - std.a_mean) / std.a_std
        zb = (y[te] - std.b_mean) / std.b_std
        for lam in grid:
            w = solve_ridge(std.c_aa, std.c_ab, lam)
            scores[lam] += float(np.mean((zb - za @ w.T) ** 2)) / folds
    best = min(scores, key=lambda k: (scores[k], -k))
    return best, scores


def fit_map(x: np.ndarray, y: np.ndarray, train_state_ids: np.ndarray, *, method: str = "ridge",
            lam: float | str = DEFAULT_LAMBDA, chunk: int = 65536, seed: int = 0,
            lstsq_fallback: bool = False) -> AlignmentMap:
    """Fit an alignment map from paired train latents x (n, d_a) -> y (n, d_b), in memory, float64.

    The same fit streamed from latents files (shards, float32 chunk products) is
    :func:`sjalign.align.streaming.fit_map_streaming`.

    Args:
        lam: ridge λ ≥ 0, or ``"auto"`` for k-fold CV (ridge only).
        lstsq_fallback: see :func:`map_from_moments`.

    Raises:
        ShapeError: x and y have different numbers of rows.
        SjalignError: bad method or λ.
    """
    if len(x) != len(y):
        raise ShapeError(f"x has {len(x)} rows and y has {len(y)}")
    info = {}
    if lam == "auto":
        if method != "ridge":
            raise OptionError("{lam} auto applies to {method} ridge only")
        lam, scores = choose_lambda(x, y, seed=seed)
        info["lambda_cv_mse"] = {f"{k:g}": v for k, v in scores.items()}
    amap = map_from_moments(accumulate(x, y, chunk=chunk).standardised(), train_state_ids, method=method,
                            lam=float(lam), lstsq_fallback=lstsq_fallback)
    amap.info.update(info)
    return amap


def shuffled_map(x: np.ndarray, y: np.ndarray, train_state_ids: np.ndarray, *, method: str, lam: float,
                 seed: int) -> AlignmentMap:
    """The null control: the same fit on training pairs whose target rows are permuted."""
    perm = np.random.default_rng(seed).permutation(len(y))
    return fit_map(x, y[perm], train_state_ids, method=method, lam=lam)


def pseudo_inverse(amap: AlignmentMap) -> AlignmentMap:
    """The reverse map b -> a with M = W⁺ (Moore–Penrose), same train statistics swapped."""
    m = np.linalg.pinv(amap.W.astype(np.float64)).astype(np.float32)
    return AlignmentMap(m, amap.b_mean, amap.b_std, amap.a_mean, amap.a_std, amap.train_state_ids,
                        f"pinv({amap.method})", amap.lam, dict(amap.info))
