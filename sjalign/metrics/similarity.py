"""Map-free similarity of two representations of the same n states: the measures the field reports.

Each takes x (n, d_x) and y (n, d_y), rows paired (row i of both is state i), and needs no
alignment map:

- :func:`debiased_cka`: linear CKA with the unbiased HSIC estimator (Song et al. 2012, eq. 5;
  Kornblith et al. 2019's notebook ``debiased=True``). The biased estimator
  (:func:`sjalign.metrics.cka.linear_cka`) of two *independent* spaces grows with d/n (0.73 for
  n = 285, d = 784); the debiased one stays near 0.
- :func:`mutual_knn`: mean overlap of the k-nearest-neighbour sets of each state in the two spaces
  (Huh et al. 2024, the Platonic Representation Hypothesis), Euclidean or cosine.
- :func:`cknna`: CKA restricted to pairs that are mutual k-nearest neighbours (Huh et al. 2024).
- :func:`svcca` (Raghu et al. 2017) and :func:`pwcca` (Morcos et al. 2018): canonical correlations
  after an SVD reduction, averaged plainly or weighted by how much of the representation each
  canonical direction accounts for.
- :func:`rsa`: representational similarity analysis (Kriegeskorte et al. 2008): Spearman correlation
  of the two representational dissimilarity matrices (correlation distance between states).

Everything is computed in float64. The kernel measures (CKNNA, RSA) hold n × n matrices and refuse
n above :data:`MAX_KERNEL_ROWS` (subsample first).
"""

from __future__ import annotations

import numpy as np
import torch

from sjalign.errors import OptionError, ShapeError, SjalignError

MAX_KERNEL_ROWS = 10_000
KNN_METRICS = ("cosine", "euclidean")


def _pair(x: np.ndarray, y: np.ndarray, name: str, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ShapeError(f"{name} needs (n, d_x) and (n, d_y) with the same n, got {x.shape} and {y.shape}")
    if len(x) < min_rows:
        raise SjalignError(f"{name} needs at least {min_rows} paired rows, got {len(x)}")
    return x.astype(np.float64), y.astype(np.float64)


def _hsic_unbiased_linear(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al.'s unbiased HSIC of the linear kernels K = XXᵀ, L = YYᵀ, in O(n·d²) without forming them.

    HSIC_u = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n−1)(n−2)) − 2·1ᵀK̃L̃1 / (n−2)] / (n(n−3)), K̃ = K with a zero diagonal.
    """
    n = len(x)
    kd, ld = (x * x).sum(1), (y * y).sum(1)  # diagonals of K and L
    sx, sy = x.sum(0), y.sum(0)
    trace = np.sum((x.T @ y) ** 2) - kd @ ld  # Σ_{i≠j} K_ij L_ij
    k_rows, l_rows = x @ sx - kd, y @ sy - ld  # row sums of K̃ and L̃
    k_sum, l_sum = k_rows.sum(), l_rows.sum()
    return float((trace + k_sum * l_sum / ((n - 1) * (n - 2)) - 2.0 * (k_rows @ l_rows) / (n - 2)) / (n * (n - 3)))


def debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA with the unbiased HSIC estimator: HSIC_u(K, L) / √(HSIC_u(K, K) · HSIC_u(L, L)).

    Columns are centred first (as Kornblith et al.'s feature-space CKA). Invariant to orthogonal
    transforms and isotropic scaling of either side (1 for X and XQ); near 0 for independent spaces
    whatever d/n, where the biased estimator is not. Can be slightly negative.

    Args:
        x: (n, d_x), y: (n, d_y), n ≥ 4.

    Returns:
        The debiased CKA; NaN when a side has no variance (HSIC_u(K, K) ≤ 0).

    Raises:
        ShapeError: different numbers of rows.  SjalignError: n < 4.
    """
    x, y = _pair(x, y, "debiased CKA", min_rows=4)
    x, y = x - x.mean(0), y - y.mean(0)
    kk, ll = _hsic_unbiased_linear(x, x), _hsic_unbiased_linear(y, y)
    if kk <= 0 or ll <= 0:
        return float("nan")
    return _hsic_unbiased_linear(x, y) / float(np.sqrt(kk * ll))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def mutual_knn(x: np.ndarray, y: np.ndarray, k: int = 10, *, metric: str = "cosine",
               device: str | torch.device = "auto") -> float:
    """Mutual kNN alignment: (1/n) Σᵢ |N_k^x(i) ∩ N_k^y(i)| / k (Huh et al. 2024).

    N_k are the k nearest *other* states within each space (ties to the smaller index), by
    cosine similarity (rows L2-normalised, as platonic-rep) or Euclidean distance. 1 = identical
    neighbourhoods, about k/(n−1) for unrelated spaces. Equals 1 − NOS@k of the two spaces.

    Args:
        x: (n, d_x), y: (n, d_y). k: 1 ≤ k < n. metric: ``cosine`` or ``euclidean``.
        device: where the tiled neighbour search runs (:func:`sjalign.metrics.neighbours.knn_indices`).

    Raises:
        ShapeError: different numbers of rows.  SjalignError: k out of range or an unknown metric.
    """
    from sjalign.metrics.neighbours import knn_indices

    x, y = _pair(x, y, "mutual kNN")
    if metric not in KNN_METRICS:
        raise OptionError(f"{{knn_metric}} must be one of {', '.join(KNN_METRICS)}, got {metric!r}", knn_metric="metric")
    if metric == "cosine":
        x, y = _unit_rows(x), _unit_rows(y)
    nx = torch.from_numpy(knn_indices(x, k, device=device))
    ny = torch.from_numpy(knn_indices(y, k, device=device))
    hits = (nx[:, :, None] == ny[:, None, :]).any(-1).sum()
    return float(hits) / (len(x) * k)


def _check_kernel_rows(n: int, name: str) -> None:
    if n > MAX_KERNEL_ROWS:
        raise SjalignError(f"{name} holds n × n matrices: n = {n} is above {MAX_KERNEL_ROWS}; subsample the states "
                           "first")


def _top_k_mask(sim: np.ndarray, k: int) -> np.ndarray:
    """(n, n) bool: the k most similar *other* columns of each row (ties to the smaller index)."""
    n = len(sim)
    s = sim.copy()
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    mask = np.zeros((n, n), bool)
    mask[np.arange(n)[:, None], order] = True
    return mask


def _hsic_unbiased_gram(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al.'s unbiased HSIC of two (n, n) kernel matrices (their diagonals are ignored)."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    return float((np.sum(k * l.T) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 * np.sum(k @ l) / (n - 2))
                 / (n * (n - 3)))


def cknna(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """CKNNA (Huh et al. 2024): CKA with the unbiased HSIC on kernels kept only where both spaces agree.

    K = X̂X̂ᵀ and L = ŶŶᵀ on L2-normalised rows (cosine kernels); α_ij = 1 when j is among the
    k most similar other states of i in *both* spaces (ties to the smaller index);
    CKNNA = HSIC_u(α∘K, α∘L) / √(HSIC_u(α_K∘K, α_K∘K) · HSIC_u(α_L∘L, α_L∘L)), where α_K (α_L) is K's
    (L's) own neighbour mask. 1 for X and XQ (Q orthogonal); near 0 for unrelated spaces.

    Args:
        x: (n, d_x), y: (n, d_y) with 4 ≤ n ≤ :data:`MAX_KERNEL_ROWS`; k: 2 ≤ k < n.

    Raises:
        ShapeError: different numbers of rows.  SjalignError: n or k out of range.
    """
    x, y = _pair(x, y, "CKNNA", min_rows=4)
    n = len(x)
    _check_kernel_rows(n, "CKNNA")
    if not 2 <= k < n:
        raise SjalignError(f"CKNNA needs 2 <= k < n = {n}, got k = {k}")
    ux, uy = _unit_rows(x), _unit_rows(y)
    kx, ly = ux @ ux.T, uy @ uy.T
    mx, my = _top_k_mask(kx, k), _top_k_mask(ly, k)
    both = mx & my
    kk, ll = _hsic_unbiased_gram(mx * kx, mx * kx), _hsic_unbiased_gram(my * ly, my * ly)
    if kk <= 0 or ll <= 0:
        return float("nan")
    return _hsic_unbiased_gram(both * kx, both * ly) / float(np.sqrt(kk * ll))


def _reduce(x: np.ndarray, keep: float) -> np.ndarray:
    """Centred x projected on its top singular directions that explain ``keep`` of its variance (n, d')."""
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    var = s ** 2
    if var.sum() == 0:
        raise SjalignError("SVCCA: a representation with no variance")
    d = int(np.searchsorted(np.cumsum(var) / var.sum(), keep - 1e-12) + 1)
    return u[:, :d] * s[:d]


def _cca(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical correlations of centred x (n, d_x) and y (n, d_y), largest first, and x's canonical
    variates (n, m) (unit norm), m = min(rank x, rank y).

    Orthonormal bases Q_x, Q_y of their column spaces (SVD, rank-revealing); the correlations are the
    singular values of Q_xᵀQ_y and the variates Q_x U (Björck & Golub 1973).
    """
    def basis(z: np.ndarray) -> np.ndarray:
        u, s, _ = np.linalg.svd(z, full_matrices=False)
        return u[:, s > s[0] * max(z.shape) * np.finfo(float).eps] if len(s) and s[0] > 0 else u[:, :0]

    qx, qy = basis(x), basis(y)
    if qx.shape[1] == 0 or qy.shape[1] == 0:
        raise SjalignError("CCA: a representation with no variance")
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return np.clip(rho, 0.0, 1.0), qx @ u


def svcca(x: np.ndarray, y: np.ndarray, *, keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): the mean canonical correlation after reducing each side to the top
    singular directions that explain ``keep`` of its variance.

    Invariant to invertible linear transforms of the reduced spaces (1 for X and XA with A invertible).

    Args:
        x: (n, d_x), y: (n, d_y); keep: in (0, 1].

    Raises:
        ShapeError: different numbers of rows.  SjalignError: keep out of range, or a side with no variance.
    """
    x, y = _pair(x, y, "SVCCA")
    if not 0 < keep <= 1:
        raise SjalignError(f"SVCCA keep must be in (0, 1], got {keep}")
    rho, _ = _cca(_reduce(x, keep), _reduce(y, keep))
    return float(rho.mean())


def pwcca(x: np.ndarray, y: np.ndarray) -> float:
    """PWCCA (Morcos et al. 2018): canonical correlations weighted by how much of the representation
    each canonical direction accounts for.

    On the side with fewer dimensions (x after a swap, as the reference code), with canonical
    variates h_i (unit norm, orthonormal): α_i = Σ_j |⟨h_i, x_j⟩| over its centred columns x_j,
    normalised to sum 1; PWCCA = Σ α_i ρ_i. 1 for X and XA with A invertible.

    Args:
        x: (n, d_x), y: (n, d_y), n > max(d_x, d_y) for a meaningful value (else every ρ is 1).

    Raises:
        ShapeError: different numbers of rows.  SjalignError: a side with no variance.
    """
    x, y = _pair(x, y, "PWCCA")
    if x.shape[1] > y.shape[1]:
        x, y = y, x
    x, y = x - x.mean(0), y - y.mean(0)
    rho, h = _cca(x, y)
    weights = np.abs(h.T @ x).sum(1)
    return float(weights @ rho / weights.sum())


def _condensed_correlation_distances(x: np.ndarray) -> np.ndarray:
    """1 − Pearson correlation between every pair of rows i < j (``scipy.spatial.distance.pdist``'s order)."""
    z = x - x.mean(1, keepdims=True)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise SjalignError("RSA: a state whose latent is constant across dimensions has no correlation distance")
    z /= norms
    iu = np.triu_indices(len(x), k=1)
    return 1.0 - (z @ z.T)[iu]


def rsa(x: np.ndarray, y: np.ndarray) -> float:
    """RSA: Spearman correlation between the two spaces' dissimilarity matrices (correlation distance).

    Spearman = Pearson correlation of the average ranks (ties share their rank) of the
    n(n−1)/2 dissimilarities. 1 when one space's dissimilarities are a monotone function of the other's.

    Args:
        x: (n, d_x), y: (n, d_y) with 3 ≤ n ≤ :data:`MAX_KERNEL_ROWS` and d ≥ 2.

    Raises:
        ShapeError: different numbers of rows.  SjalignError: n out of range, or a constant row.
    """
    from sjalign.metrics.distances import average_ranks

    x, y = _pair(x, y, "RSA", min_rows=3)
    _check_kernel_rows(len(x), "RSA")
    rx = average_ranks(torch.from_numpy(_condensed_correlation_distances(x))).numpy()
    ry = average_ranks(torch.from_numpy(_condensed_correlation_distances(y))).numpy()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / denom) if denom > 0 else float("nan")


def _cosine_scores(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return q @ t.T


def retrieval_at_k(target: np.ndarray, pred: np.ndarray, ks=(1, 5, 10), *, csls_k: int | None = None,
                   chunk: int = 2048) -> dict[int, float]:
    """Fraction of states i whose own target Ẑbᵢ is among the k targets most similar to the prediction Pᵢ.

    Similarity is cosine; with ``csls_k`` it is CSLS (Conneau et al. 2018, MUSE):
    CSLS(p, t) = 2 cos(p, t) − r_T(p) − r_P(t), r_T(p) the mean cosine of p to its ``csls_k`` nearest
    targets and r_P(t) that of t to its ``csls_k`` nearest predictions, which discounts hubs. Ties go
    to the smaller target index (a target tied with the true one ranks before it only if its index
    is smaller).

    Args:
        target: (n, d), pred: (n, d), rows paired. ks: each 1 ≤ k ≤ n. chunk: query rows per tile.

    Returns:
        {k: retrieval@k}; chance is k/n.

    Raises:
        ShapeError: different shapes.  SjalignError: a k out of range.
    """
    target, pred = np.asarray(target), np.asarray(pred)
    if target.shape != pred.shape or target.ndim != 2:
        raise ShapeError(f"retrieval needs two arrays of one shape, got {target.shape} and {pred.shape}")
    n = len(target)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > n:
        raise SjalignError(f"retrieval@k needs 1 <= k <= n = {n}, got {ks}")
    t = torch.from_numpy(_unit_rows(target.astype(np.float64)))
    p = torch.from_numpy(_unit_rows(pred.astype(np.float64)))
    r_t = r_p = None
    if csls_k is not None:
        if not 1 <= csls_k <= n:
            raise SjalignError(f"CSLS needs 1 <= k <= n = {n}, got {csls_k}")
        r_t = torch.cat([_cosine_scores(p[s:s + chunk], t).topk(csls_k, dim=1).values.mean(1)
                         for s in range(0, n, chunk)])  # (n,) per prediction
        r_p = torch.cat([_cosine_scores(t[s:s + chunk], p).topk(csls_k, dim=1).values.mean(1)
                         for s in range(0, n, chunk)])  # (n,) per target
    hits = dict.fromkeys(ks, 0)
    for s in range(0, n, chunk):
        scores = _cosine_scores(p[s:s + chunk], t)  # (m, n)
        if r_t is not None:
            scores = 2 * scores - r_t[s:s + chunk, None] - r_p[None, :]
        rows = torch.arange(s, s + len(scores))
        own = scores[torch.arange(len(scores)), rows][:, None]  # (m, 1)
        cols = torch.arange(n)[None, :]
        rank = ((scores > own) | ((scores == own) & (cols < rows[:, None]))).sum(1)  # targets ranked before i's own
        for k in ks:
            hits[k] += int((rank < k).sum())
    return {k: hits[k] / n for k in ks}
