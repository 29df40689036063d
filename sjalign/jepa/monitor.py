"""Online evaluation: does the encoder that ``sjalign embed`` would export learn?

At epoch 0 (before the first step) and every ``eval_every`` epochs the trainer hands its
exported encoder to :func:`evaluate_encoder`, which embeds a fixed labelled selection the
way ``sjalign embed --encoder jepa:RUN`` does (final-normed patch tokens, mean-pooled) and
scores it:

- ``knn_acc``: weighted kNN accuracy (k = 20, cosine similarity, votes e^{s/0.07}; DINO's
  eval, Caron et al. 2021) of held-out states against the train bank;
- ``probe_acc``: a multinomial logistic-regression probe (scikit-learn, L2, C = 1) fitted
  on the standardised train bank and scored on the held-out states. Convex, deterministic,
  free of tuning, and the estimator ``transfer-probe`` uses, so the figure means the same
  thing across the toolkit;
- ``rankme``: RankMe (Garrido et al. 2023) of the held-out embeddings;
- ``participation_ratio``: (Σλ)²/Σλ² of their covariance eigenvalues.

A dataset without labels gets the two ranks only (``knn_acc`` and ``probe_acc`` are None).
Nothing here draws from the trainer's generators or the global RNG, so evaluation does not
change a run's weights (a run with and without it trains identically).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sjalign.metrics.representation import knn_accuracy, linear_probe_accuracy, participation_ratio, rankme

KNN_K = 20
KNN_TEMPERATURE = 0.07
EVAL_BANK_CAP = 5_000  # train states the probe and kNN are fitted on, at most
DEFAULT_EVAL_STATES = 2_000


@dataclass(frozen=True)
class EvalSet:
    """The fixed labelled selection a run is scored on.

    Attributes:
        train_images: (n_tr, C, H, W) float32 in [0, 1]: the probe's fit and the kNN bank.
        test_images: (n_te, C, H, W) float32 in [0, 1]: the held-out states scored.
        train_labels: (n_tr,) int64, or None for a dataset without labels.
        test_labels: (n_te,) int64, or None.
    """

    train_images: torch.Tensor
    test_images: torch.Tensor
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    @property
    def labelled(self) -> bool:
        """Whether accuracies can be computed (both sides labelled, two classes or more)."""
        return (self.train_labels is not None and self.test_labels is not None
                and len(np.unique(self.train_labels)) >= 2)


def pick_eval_rows(is_test: np.ndarray | None, n_states: int, *, eval_states: int,
                   bank_cap: int = EVAL_BANK_CAP, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows of a selection to evaluate on: a seeded sample of its test split and of its train split.

    The sample depends on ``seed`` only (not on the run's seed), so runs of different seeds are
    scored on the same states. A dataset without a split (``is_test`` None) holds out a seeded
    sixth of its states.

    Args:
        is_test: (n,) bool per state of the selection, or None.
        n_states: n.
        eval_states: held-out states wanted (>= 1).
        bank_cap: train states at most.
        seed: seed of the sample.

    Returns:
        (train_rows, test_rows, available): sorted int64 row indices, and the number of
        held-out states there were (``len(test_rows) < eval_states`` when fewer).
    """
    rng = np.random.default_rng(seed)
    if is_test is None:
        is_test = np.zeros(n_states, bool)
        is_test[rng.permutation(n_states)[: max(1, n_states // 6)]] = True
    test, train = np.flatnonzero(is_test), np.flatnonzero(~is_test)
    test_rows = np.sort(rng.permutation(test)[:eval_states])
    train_rows = np.sort(rng.permutation(train)[:bank_cap])
    return train_rows.astype(np.int64), test_rows.astype(np.int64), len(test)


@torch.no_grad()
def embed_images(encoder: nn.Module, images: torch.Tensor, device: torch.device, *,
                 batch_size: int = 512) -> np.ndarray:
    """Mean-pooled final-normed tokens of ``encoder``, as ``sjalign embed --encoder jepa:RUN`` exports.

    Args:
        encoder: a :class:`sjalign.jepa.vit.VisionTransformer` (put in eval mode for the call).
        images: (n, C, H, W) float32.
        device: where to run it.
        batch_size: images per forward.

    Returns:
        (n, D) float32 numpy array.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        out = [encoder(images[i:i + batch_size].to(device, torch.float32)).float().mean(1).cpu()
               for i in range(0, images.shape[0], batch_size)]  # (b, D) each
    finally:
        encoder.train(was_training)
    return torch.cat(out).numpy()


def evaluate_encoder(encoder: nn.Module, eval_set: EvalSet, device: torch.device) -> dict[str, Any]:
    """Score the exported encoder on ``eval_set`` (see the module docstring for each figure).

    Args:
        encoder: the exported ViT.
        eval_set: the run's fixed selection.
        device: where to embed.

    Returns:
        ``{"knn_acc", "probe_acc", "rankme", "participation_ratio", "n_train", "n_test",
        "seconds"}``; the accuracies are None when ``eval_set`` is not labelled; a figure
        that is not finite is returned as NaN (the trainer stops on it).
    """
    t0 = time.perf_counter()
    test = embed_images(encoder, eval_set.test_images, device)  # (n_te, D)
    train = embed_images(encoder, eval_set.train_images, device) if eval_set.labelled else None  # (n_tr, D)
    out = score_latents(train, eval_set.train_labels, test, eval_set.test_labels)
    out["n_train"] = int(eval_set.train_images.shape[0])
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def score_latents(train: np.ndarray | None, train_labels: np.ndarray | None, test: np.ndarray,
                  test_labels: np.ndarray | None) -> dict[str, Any]:
    """The online evaluation's figures of given latents (also what ``benchmarks/objectives.py`` reports).

    Args:
        train: (n_tr, d) latents the probe and kNN are fitted on, or None (ranks only).
        train_labels: (n_tr,) int64, or None.
        test: (n_te, d) held-out latents.
        test_labels: (n_te,) int64, or None.

    Returns:
        ``{"knn_acc", "probe_acc", "rankme", "participation_ratio", "n_test"}``: RankMe and the
        participation ratio of ``test``; the accuracies None without labels (or without
        ``train``); every figure NaN when a latent is not finite.
    """
    nan = float("nan")
    finite = bool(np.isfinite(test).all()) and (train is None or bool(np.isfinite(train).all()))
    out: dict[str, Any] = {"knn_acc": None, "probe_acc": None,
                           "rankme": rankme(test) if finite else nan,
                           "participation_ratio": participation_ratio(test) if finite else nan,
                           "n_test": int(test.shape[0])}
    if train is not None and train_labels is not None and test_labels is not None:
        out["knn_acc"] = knn_accuracy(train, train_labels, test, test_labels, k=KNN_K,
                                      temperature=KNN_TEMPERATURE) if finite else nan
        out["probe_acc"] = linear_probe_accuracy(train, train_labels, test, test_labels) if finite else nan
    return out


def non_finite(figures: dict[str, Any]) -> list[str]:
    """Names of the numeric entries of ``figures`` that are NaN or infinite (None is fine)."""
    return [k for k, v in figures.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not np.isfinite(v)]


__all__ = ["DEFAULT_EVAL_STATES", "EVAL_BANK_CAP", "EvalSet", "embed_images", "evaluate_encoder", "non_finite",
           "pick_eval_rows", "score_latents"]
