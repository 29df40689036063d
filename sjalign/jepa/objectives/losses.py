"""Pure loss functions and samplers of the pretraining objectives, with shape checks.

Every function takes tensors and returns tensors; nothing here holds parameters or draws
random numbers except from a ``torch.Generator`` it is given. The objective modules
(``lejepa``, ``cjepa``, ``lpjepa``, ``mae``, ``simclr``, ``ae``) are thin ``nn.Module`` s
around them.

- :func:`sigreg` — Epps–Pulley statistic of random 1-D projections against N(0, 1) (LeJEPA).
- :func:`vicreg_terms` — invariance, variance and covariance terms of VICReg (C-JEPA).
- :func:`rdmreg` / :func:`sample_rgg` — sliced W2² to rectified generalised Gaussian samples
  (Rectified LpJEPA).
- :func:`nt_xent` — SimCLR's normalised-temperature cross entropy.
- :func:`random_directions`, :func:`patchify`, :func:`normalize_patches` — helpers.

All statistics are computed in float32 whatever the input dtype, with autocast switched off
inside (under bf16 autocast a matmul would otherwise round the projections to 8 bits).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _fp32(x: torch.Tensor) -> torch.autocast:
    """A context in which autocast is off on ``x``'s device (the statistics stay float32)."""
    return torch.autocast(x.device.type, enabled=False)


def _check_2d(name: str, fn: str, x: torch.Tensor, min_rows: int = 1) -> None:
    if x.ndim != 2:
        raise ValueError(f"{fn}: {name} must be 2-D, got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{fn}: {name} needs at least {min_rows} rows, got shape {tuple(x.shape)}")


def random_directions(dim: int, num_slices: int, *, generator: torch.Generator) -> torch.Tensor:
    """Directions drawn uniformly on the unit sphere S^(dim−1) (normalised Gaussian vectors).

    Args:
        dim: embedding width d.
        num_slices: number of directions S.
        generator: CPU generator; the same state gives the same directions.

    Returns:
        (dim, num_slices) float32 on the CPU, every column of unit L2 norm.

    Raises:
        ValueError: ``dim`` or ``num_slices`` below 1.
    """
    if dim < 1 or num_slices < 1:
        raise ValueError(f"random_directions: dim and num_slices must be >= 1, got {dim} and {num_slices}")
    a = torch.randn(dim, num_slices, generator=generator)  # (d, S)
    return a / a.norm(dim=0, keepdim=True)


def epps_pulley_weights(t_max: float = 3.0, n_t: int = 17) -> tuple[torch.Tensor, torch.Tensor]:
    """Integration grid and weights of the Epps–Pulley statistic.

    The integrand |φ̂(t) − φ(t)|² e^{−t²/2} is even in t, so ∫_{−t_max}^{t_max} is twice the
    integral over [0, t_max], computed with the trapezoid rule on ``n_t`` equally spaced
    points (LeJEPA's ``EppsPulley``).

    Returns:
        (t, w): (n_t,) float32 grid t_k = k·t_max/(n_t−1) and weights
        w_k = 2·Δ·c_k·e^{−t_k²/2} with c_k = 1/2 at both ends and 1 inside.

    Raises:
        ValueError: ``t_max`` <= 0 or ``n_t`` < 2.
    """
    if not t_max > 0 or n_t < 2:
        raise ValueError(f"epps_pulley_weights: need t_max > 0 and n_t >= 2, got {t_max} and {n_t}")
    t = torch.linspace(0.0, t_max, n_t, dtype=torch.float32)  # (T,)
    dt = t_max / (n_t - 1)
    trap = torch.full((n_t,), dt)
    trap[[0, -1]] = dt / 2
    return t, 2.0 * trap * torch.exp(-0.5 * t ** 2)


def sigreg(z: torch.Tensor, directions: torch.Tensor, *, t_max: float = 3.0, n_t: int = 17) -> torch.Tensor:
    """SIGReg: Epps–Pulley test of every 1-D projection of ``z`` against N(0, 1), averaged.

    For each direction c (a column of ``directions``) with projections u_i = cᵀz_i:

        φ̂(t) = (1/n) Σ_i e^{i t u_i},     φ(t) = e^{−t²/2}
        EP_c = n ∫_{−t_max}^{t_max} |φ̂(t) − φ(t)|² e^{−t²/2} dt     (trapezoid, see
               :func:`epps_pulley_weights`)
        SIGReg = (1/S) Σ_c EP_c

    Scaled by n it is the test *statistic*: for Gaussian samples its expectation is
    Σ_k w_k (1 − e^{−t_k²}) ≈ 1.06 whatever n (E|φ̂ − φ|² = (1 − φ²)/n), while for collapsed
    or low-rank embeddings it grows like n (a direction orthogonal to their span sees a
    point mass). The per-sample discrepancy SIGReg/n → 0 for Gaussian samples.

    Args:
        z: (n, d) embeddings, n >= 2.
        directions: (d, S) unit-norm projection directions (see :func:`random_directions`).
        t_max: integration range [−t_max, t_max] (LeJEPA: 3).
        n_t: grid points on [0, t_max] (LeJEPA: 17).

    Returns:
        () float32 statistic, averaged over the S directions.

    Raises:
        ValueError: non-2-D inputs, fewer than 2 rows, or d that differ.

    References:
        Balestriero & LeCun 2025 (LeJEPA), arXiv:2511.08544, §4 (SIGReg, Epps–Pulley);
        Epps & Pulley 1983, Biometrika 70(3).
    """
    _check_2d("z", "sigreg", z, min_rows=2)
    _check_2d("directions", "sigreg", directions)
    if z.shape[1] != directions.shape[0]:
        raise ValueError(f"sigreg: z {tuple(z.shape)} and directions {tuple(directions.shape)} differ in d")
    t, w = epps_pulley_weights(t_max, n_t)
    t, w = t.to(z.device), w.to(z.device)
    with _fp32(z):
        u = z.float() @ directions.to(z.device, torch.float32)  # (n, S)
        ut = u.unsqueeze(-1) * t  # (n, S, T)
        phi = torch.exp(-0.5 * t ** 2)  # (T,)
        err = (ut.cos().mean(0) - phi) ** 2 + ut.sin().mean(0) ** 2  # (S, T) = |φ̂ − φ|²
        return (err @ w).mean() * z.shape[0]


def vicreg_terms(views: torch.Tensor, *, gamma: float = 1.0,
                 eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VICReg's invariance, variance and covariance terms over V >= 2 views.

    With z^v (n, d) the v-th view and C(z) = (1/(n−1)) Σ_i (z_i − z̄)(z_i − z̄)ᵀ:

        inv = 1/(V(V−1)) Σ_{v≠w} (1/(n·d)) ‖z^v − z^w‖²_F     (per-element MSE, as VICReg's code)
        var = (1/V) Σ_v (1/d) Σ_j max(0, γ − sqrt(C(z^v)_jj + ε))
        cov = (1/V) Σ_v (1/d) Σ_{j≠k} C(z^v)_jk²

    For V = 2 these are VICReg's F.mse_loss, its std_loss and half its cov_loss (VICReg
    sums the two views' covariance terms); C-JEPA's invariance averages over ordered pairs
    of mask blocks as here.

    Args:
        views: (V, n, d) embeddings of V views of the same n images (rows paired).
        gamma: target standard deviation γ (VICReg: 1).
        eps: ε under the square root.

    Returns:
        (inv, var, cov), three () float32 tensors.

    Raises:
        ValueError: ``views`` not 3-D, V < 2 or n < 2.

    References:
        Bardes et al. 2022 (VICReg), ICLR, Eqs. (1)-(5); Mo & Tong 2024 (C-JEPA), NeurIPS, §4.
    """
    if views.ndim != 3 or views.shape[0] < 2 or views.shape[1] < 2:
        raise ValueError(f"vicreg_terms: views must be (V, n, d) with V >= 2 and n >= 2, got {tuple(views.shape)}")
    z = views.float()
    V, n, d = z.shape
    with _fp32(z):
        diff = z.unsqueeze(0) - z.unsqueeze(1)  # (V, V, n, d); the diagonal is zero
        inv = diff.pow(2).mean(dim=(2, 3)).sum() / (V * (V - 1))
        zc = z - z.mean(dim=1, keepdim=True)  # (V, n, d)
        cov = zc.transpose(1, 2) @ zc / (n - 1)  # (V, d, d)
        diag = cov.diagonal(dim1=1, dim2=2)  # (V, d)
        var = F.relu(gamma - torch.sqrt(diag + eps)).mean()
        off = (cov.pow(2).sum(dim=(1, 2)) - diag.pow(2).sum(dim=1)) / d  # (V,)
        return inv, var, off.mean()


def rgg_sigma(p: float) -> float:
    """Scale σ that gives the generalised Gaussian GN_p unit variance (Kuang et al.'s default).

    GN_p has density ∝ exp(−|x|^p / p), so E x² = p^{2/p} Γ(3/p) / Γ(1/p) and
    σ = sqrt(Γ(1/p) / Γ(3/p)) / p^{1/p} (σ = 1 for p = 2, 1/√2 for p = 1).
    """
    return math.sqrt(math.gamma(1.0 / p) / math.gamma(3.0 / p)) / p ** (1.0 / p)


def sample_rgg(n: int, d: int, p: float, *, generator: torch.Generator, mu: float = 0.0) -> torch.Tensor:
    """Samples of the rectified generalised Gaussian RGG_p: ReLU(μ + σ·X), X ~ GN_p i.i.d.

    X = s·(p·G)^{1/p} with G ~ Gamma(1/p, 1) and s = ±1 with probability 1/2 has density
    ∝ exp(−|x|^p / p) (p = 2: N(0, 1); p = 1: Laplace(0, 1)); σ = :func:`rgg_sigma` (p) scales it
    to unit variance before the rectification. With μ = 0, P(0) = 1/2 exactly.

    Args:
        n: number of samples.
        d: dimensions (independent coordinates).
        p: shape parameter, > 0 (Kuang et al.'s default 1: the rectified Laplace).
        generator: CPU generator; the same state gives the same samples.
        mu: location before the rectification (lower = sparser).

    Returns:
        (n, d) float32 on the CPU, non-negative.

    Raises:
        ValueError: p <= 0, or n or d below 1.

    References:
        Kuang et al. 2026 (Rectified LpJEPA), arXiv:2602.01456, §3 (RGG) and ``sample_rgg``.
    """
    if not p > 0 or n < 1 or d < 1:
        raise ValueError(f"sample_rgg: need p > 0 and n, d >= 1, got p={p}, n={n}, d={d}")
    alpha = torch.full((n, d), 1.0 / p, dtype=torch.float64)
    g = torch._standard_gamma(alpha, generator=generator)  # (n, d) ~ Gamma(1/p, 1)
    sign = torch.randint(0, 2, (n, d), generator=generator, dtype=torch.float64) * 2 - 1
    x = sign * (p * g).pow(1.0 / p)  # (n, d) ~ GN_p
    return F.relu(mu + rgg_sigma(p) * x).float()


def rdmreg(z: torch.Tensor, target: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """RDMReg: sliced squared 2-Wasserstein distance between embeddings and target samples.

    For each direction c, the two sets of projections {cᵀz_i} and {cᵀy_i} (n each) are
    sorted; in one dimension the optimal coupling matches order statistics, so

        W2²_c = (1/n) Σ_i (cᵀz_(i) − cᵀy_(i))²,       RDMReg = (1/S) Σ_c W2²_c.

    Args:
        z: (n, d) embeddings.
        target: (n, d) samples of the target distribution (e.g. :func:`sample_rgg`), no gradient.
        directions: (d, S) unit-norm projection directions.

    Returns:
        () float32 loss.

    Raises:
        ValueError: non-2-D inputs, z and target of different shapes, or d that differ.

    References:
        Kuang et al. 2026 (Rectified LpJEPA), arXiv:2602.01456, Eq. (21) (``rdmreg_loss``);
        Bonneel et al. 2015 (sliced Wasserstein), JMIV 51.
    """
    _check_2d("z", "rdmreg", z)
    _check_2d("directions", "rdmreg", directions)
    if target.shape != z.shape:
        raise ValueError(f"rdmreg: z {tuple(z.shape)} and target {tuple(target.shape)} differ")
    if z.shape[1] != directions.shape[0]:
        raise ValueError(f"rdmreg: z {tuple(z.shape)} and directions {tuple(directions.shape)} differ in d")
    c = directions.to(z.device, torch.float32)
    with _fp32(z):
        pz = (z.float() @ c).sort(dim=0).values  # (n, S)
        py = (target.detach().to(z.device, torch.float32) @ c).sort(dim=0).values  # (n, S)
        return (pz - py).pow(2).mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR's InfoNCE) over the 2n embeddings of n positive pairs.

    With u = normalise(cat(z1, z2)) (2n, d), s_ij = u_iᵀu_j / τ and j(i) the other view of
    the same image:  L = (1/2n) Σ_i −log( e^{s_i j(i)} / Σ_{k≠i} e^{s_ik} ).

    Args:
        z1: (n, d) projections of view 1.
        z2: (n, d) projections of view 2 (row i is the same image as z1's row i).
        temperature: τ > 0.

    Returns:
        () float32 loss; log(2n − 1) for embeddings that carry no information.

    Raises:
        ValueError: shapes that differ or are not 2-D, n < 2, or τ <= 0.

    References:
        Chen et al. 2020 (SimCLR), ICML, Eq. (1); Oord et al. 2018 (InfoNCE).
    """
    _check_2d("z1", "nt_xent", z1, min_rows=2)
    if z2.shape != z1.shape:
        raise ValueError(f"nt_xent: z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} differ")
    if not temperature > 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    with _fp32(z1):
        u = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2n, d)
        logits = u @ u.T / temperature  # (2n, 2n)
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=u.device), float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(u.device)  # (2n,)
        return F.cross_entropy(logits, positives)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping patches in the ViT's raster order.

    Args:
        images: (B, C, H, W), H and W multiples of ``patch_size``.
        patch_size: p.

    Returns:
        (B, N, p·p·C) with N = (H/p)(W/p); patch index = row·(W/p) + col (the order of
        the ViT's convolutional patch embedding); pixels within a patch in (p, p, C) order.

    Raises:
        ValueError: not 4-D, or sides not multiples of p.
    """
    if images.ndim != 4 or images.shape[2] % patch_size or images.shape[3] % patch_size:
        raise ValueError(f"patchify: expects (B, C, H, W) with H, W multiples of {patch_size}, "
                         f"got {tuple(images.shape)}")
    B, C, H, W = images.shape
    gh, gw = H // patch_size, W // patch_size
    x = images.reshape(B, C, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, gh * gw, patch_size * patch_size * C)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's per-patch normalised pixel targets: (x − mean) / sqrt(var + eps) over each patch.

    Args:
        patches: (B, N, P) pixel patches (see :func:`patchify`).
        eps: added to the (biased) variance; a blank patch becomes all zeros.

    Returns:
        (B, N, P) float32.

    References:
        He et al. 2022 (MAE), arXiv:2111.06377, §4 ("norm_pix_loss").
    """
    if patches.ndim != 3:
        raise ValueError(f"normalize_patches: expects (B, N, P), got {tuple(patches.shape)}")
    x = patches.float()
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-element mean squared error (1/(B·T·P)) Σ (pred − target)² (MAE, autoencoder).

    Args:
        pred: (B, T, P) predicted pixels of T patches.
        target: (B, T, P) target pixels (normalised or raw), no gradient.

    Returns:
        () float32 loss.

    Raises:
        ValueError: shapes that differ or are not 3-D.
    """
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"reconstruction_loss: expects two (B, T, P) tensors of one shape, "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")
    return (pred.float() - target.detach().float()).pow(2).mean()


__all__ = [
    "epps_pulley_weights", "normalize_patches", "nt_xent", "patchify", "random_directions", "rdmreg",
    "reconstruction_loss", "rgg_sigma", "sample_rgg", "sigreg", "vicreg_terms",
]
