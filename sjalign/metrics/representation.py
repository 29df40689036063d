"""Has an encoder learned? Label-free spectra and labelled probes of its latents z (n, d).

Used by online evaluation during pretraining: ``rankme`` and ``participation_ratio`` need no
labels and flag dimensional collapse; ``knn_accuracy`` and ``linear_probe_accuracy`` score how
linearly / locally the labels can be read from frozen features. Every function is pure, takes
numpy arrays or torch tensors, and raises ``ValueError`` on unusable input (not 2-D, empty,
non-finite, mismatched shapes, bad options).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from sjalign.device import resolve_device
from sjalign.metrics.diagnostics import effective_rank
from sjalign.probe.transfer import train_probe


def _matrix(z, name: str, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Any (n, d) array or tensor -> a detached tensor of ``dtype`` (on ``device``, else where it was)."""
    t = torch.as_tensor(z.detach() if isinstance(z, torch.Tensor) else np.asarray(z))
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D (n, d) array, got shape {tuple(t.shape)}")
    t = t.to(device=device if device is not None else t.device, dtype=dtype)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    return t


def _labels(y, n: int, name: str) -> np.ndarray:
    """Any (n,) array or tensor of labels -> a numpy array, checked against the n rows it labels."""
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must have shape ({n},) to match the latents, got {y.shape}")
    return y


def rankme(z: np.ndarray | torch.Tensor, *, eps: float = 1e-7) -> float:
    """RankMe: exp of the entropy of the normalised singular values of z, a smooth rank.

    p_k = σ_k / Σ_j σ_j + eps,   RankMe = exp(−Σ_k p_k log p_k),   k = 1..min(n, d).

    z is *not* centred, as in the paper. Computed in float64 on z's device.

    Args:
        z: (n, d) latents, any float dtype.
        eps: added to every p_k (the paper's ε) so that log 0 never occurs.

    Returns:
        RankMe, clipped to [1, min(n, d)] (eps can push it a hair over the top by about
        min(n, d)·eps·log min(n, d)). An all-zero z, which has no direction at all, gives 1.0,
        the value of total collapse.

    Raises:
        ValueError: z not 2-D, empty or not finite.

    References:
        Garrido, Balestriero, Najman, LeCun 2023, "RankMe: Assessing the downstream performance
        of pretrained self-supervised representations by their rank", arXiv:2210.02885, Eq. 1.
    """
    t = _matrix(z, "z", torch.float64)
    s = torch.linalg.svdvals(t)  # (min(n, d),)
    total = float(s.sum())
    if total <= 0:
        return 1.0
    p = s / total + eps
    value = math.exp(float(-(p * p.log()).sum()))
    return float(min(max(value, 1.0), min(t.shape)))


def participation_ratio(z: np.ndarray | torch.Tensor) -> float:
    """Participation ratio (Σλ)² / Σλ² of the eigenvalues λ of the covariance of column-centred z.

    The covariance (d, d) is formed in float64 and handed to ``effective_rank``. Scale- and
    rotation-invariant; 1 when one direction holds all variance, d when the spread is isotropic.

    Args:
        z: (n, d) latents, any float dtype.

    Returns:
        The ratio in [1, d], or 0.0 when z has no variance (all rows equal, or n = 1): no
        direction is used, and 0.0 keeps a collapsed run below every healthy one in a plot.

    Raises:
        ValueError: z not 2-D, empty or not finite.

    References:
        Gao, Trautmann, Yu et al. 2017, "A theory of multineuronal dimensionality, dynamics and
        measurement", bioRxiv 214262 (the participation ratio of a covariance spectrum).
    """
    x = _matrix(z, "z", torch.float64).cpu().numpy()
    x = x - x[0]  # exact zeros in constant columns, so an all-constant z has covariance exactly 0
    x -= x.mean(axis=0)
    pr = effective_rank(x.T @ x / len(x))  # NaN for a zero covariance
    return 0.0 if math.isnan(pr) else pr


def knn_accuracy(train_z, train_labels, test_z, test_labels, *, k: int = 20, temperature: float = 0.07,
                 chunk: int = 1024, device: str | torch.device = "cpu") -> float:
    """Accuracy of DINO's weighted k-nearest-neighbour classifier on cosine similarity.

    Rows are L2-normalised (an all-zero row stays zero: similarity 0 to everything). Each test
    row takes its k most similar train rows (k clipped to n_train); each votes for its label
    with weight exp(sim / temperature); the prediction is the label with the largest sum.
    Computed in float32 on ``device``, ``chunk`` test rows at a time, so memory is the data
    plus one (chunk, n_train) similarity tile whatever n_test is.

    Ties: equal similarities at the k-th place are resolved by ``torch.topk`` (unspecified,
    may differ between devices); equal vote sums go to the smallest label (``argmax`` takes
    the first maximum over the sorted labels, as scikit-learn's weighted mode does).

    Args:
        train_z: (n_train, d) latents.  train_labels: (n_train,) integer labels, any values.
        test_z: (n_test, d) latents.  test_labels: (n_test,) labels; one unseen in train is
            always counted wrong.
        k: neighbours that vote, >= 1.
        temperature: T > 0 of the vote weights (DINO's 0.07).
        chunk: test rows per similarity tile, >= 1.
        device: torch device for the similarities ("cpu", "cuda", "auto").

    Returns:
        Fraction of test rows whose predicted label is right, in [0, 1].

    Raises:
        ValueError: non-2-D, empty or non-finite latents, labels that do not match their rows,
            different widths d, k < 1, temperature <= 0 or chunk < 1.

    References:
        Caron et al. 2021, "Emerging properties in self-supervised vision transformers",
        arXiv:2104.14294, §4.1 and its eval_knn.py; Wu, Xiong, Yu, Lin 2018, "Unsupervised
        feature learning via non-parametric instance discrimination", arXiv:1805.01978.
    """
    if k < 1 or temperature <= 0 or chunk < 1:
        raise ValueError(f"need k >= 1, temperature > 0 and chunk >= 1, got k={k}, "
                         f"temperature={temperature}, chunk={chunk}")
    dev = resolve_device(device)
    xtr = F.normalize(_matrix(train_z, "train_z", torch.float32, dev), dim=1)  # (n_train, d)
    xte = _matrix(test_z, "test_z", torch.float32, dev)  # (n_test, d)
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train_z and test_z differ in width: {xtr.shape[1]} vs {xte.shape[1]}")
    y_tr = _labels(train_labels, len(xtr), "train_labels")
    y_te = _labels(test_labels, len(xte), "test_labels")
    classes, y_idx = np.unique(y_tr, return_inverse=True)
    y_idx = torch.as_tensor(y_idx.reshape(-1), device=dev)  # (n_train,) in 0..C-1
    k = min(int(k), len(xtr))
    preds = []
    for start in range(0, len(xte), chunk):
        q = F.normalize(xte[start:start + chunk], dim=1)  # (m, d)
        sim, idx = (q @ xtr.T).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(len(q), len(classes), dtype=torch.float32, device=dev)  # (m, C)
        votes.scatter_add_(1, y_idx[idx], (sim / temperature).exp())
        preds.append(votes.argmax(dim=1).cpu())
    pred = classes[torch.cat(preds).numpy()]  # (n_test,) back to the original label values
    return float(np.mean(pred == y_te))


def linear_probe_accuracy(train_z, train_labels, test_z, test_labels, *, c: float = 1.0,
                          max_iter: int = 1000, seed: int = 0) -> float:
    """Test accuracy of a multinomial logistic-regression probe on standardised frozen features.

    Features are standardised with the train mean and std (a constant feature gets std 1),
    then ``sjalign.probe.transfer.train_probe`` is fitted on train. This estimator because it
    is convex and deterministic (one optimum, no learning-rate or epoch schedule to tune) and
    the same one ``transfer-probe`` uses (SPEC §5), so its figures compare across the toolkit.

    Args:
        train_z: (n_train, d) latents.  train_labels: (n_train,) integer labels, >= 2 classes.
        test_z: (n_test, d) latents.  test_labels: (n_test,) labels.
        c: inverse L2 strength of the logistic regression (scikit-learn's ``C``).
        max_iter: L-BFGS iterations; not converging is not an error.
        seed: the estimator's ``random_state``.

    Returns:
        Fraction of test rows classified right, in [0, 1].

    Raises:
        ValueError: non-2-D, empty or non-finite latents, labels that do not match their rows,
            different widths d, or fewer than two classes in train_labels.

    References:
        Kolesnikov, Zhai, Beyer 2019, "Revisiting self-supervised visual representation
        learning", arXiv:1901.09005 (the linear-evaluation protocol).
    """
    xtr = _matrix(train_z, "train_z", torch.float64).cpu().numpy()
    xte = _matrix(test_z, "test_z", torch.float64).cpu().numpy()
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train_z and test_z differ in width: {xtr.shape[1]} vs {xte.shape[1]}")
    y_tr = _labels(train_labels, len(xtr), "train_labels")
    y_te = _labels(test_labels, len(xte), "test_labels")
    if len(np.unique(y_tr)) < 2:
        raise ValueError("the linear probe needs at least two classes in train_labels")
    mean, std = xtr.mean(axis=0), xtr.std(axis=0)
    std[std == 0] = 1.0
    head = train_probe((xtr - mean) / std, y_tr, c=c, max_iter=max_iter, seed=seed)
    return head.accuracy((xte - mean) / std, y_te)


__all__ = ["knn_accuracy", "linear_probe_accuracy", "participation_ratio", "rankme"]
