"""Zero-gradient probe transfer through an alignment map (Social-JEPA §3.7, SPEC §5).

A multinomial logistic-regression probe (scikit-learn) is trained on standardised source
latents ẑa. With M (d_a, d_b) mapping target to source, ẑa ≈ M ẑb, the head composes with
standardisation into one affine head on raw target latents b:

    logits = Wp M diag(1/b_std) b + (bp − Wp M (b_mean / b_std)).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from sjalign.align import AlignmentMap
from sjalign.align.pairing import Pairs
from sjalign.errors import SjalignError


@dataclass(frozen=True)
class LinearHead:
    """An affine classifier: logits = x Wᵀ + b.

    Attributes:
        weight: (c, d) float32.  bias: (c,) float32.  classes: (c,) int64 label of each row.
    """

    weight: np.ndarray
    bias: np.ndarray
    classes: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, d) -> (n,) predicted labels."""
        return self.classes[np.argmax(x @ self.weight.T + self.bias, axis=1)]

    def accuracy(self, x: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.predict(x) == labels))


def train_probe(z: np.ndarray, labels: np.ndarray, *, c: float = 1.0, max_iter: int = 2000, seed: int = 0) -> LinearHead:
    """Fit scikit-learn's multinomial LogisticRegression (L2, inverse strength ``c``) on z (n, d).

    Raises:
        SjalignError: fewer than two classes in ``labels``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(labels)) < 2:
        raise SjalignError("the probe needs at least two classes in the train split")
    clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(z, labels)
    weight, bias = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # scikit-learn stores one row for binary problems
        weight, bias = np.vstack([-weight, weight]) / 2, np.array([-bias[0], bias[0]]) / 2
    return LinearHead(weight.astype(np.float32), bias.astype(np.float32), clf.classes_.astype(np.int64))


def compose_head(head: LinearHead, m: AlignmentMap) -> LinearHead:
    """Fold a target->source map M (d_a, d_b) and target standardisation into one head on raw target latents."""
    wm = head.weight.astype(np.float64) @ m.W.astype(np.float64)  # (c, d_b)
    weight = wm / m.a_std  # M's source side is the target encoder b
    bias = head.bias - weight @ m.a_mean
    return LinearHead(weight.astype(np.float32), bias.astype(np.float32), head.classes)


def transfer_probe(pairs: Pairs, train: np.ndarray, m_b_to_a: AlignmentMap, *, seed: int = 0,
                   other_maps: dict[str, AlignmentMap] | None = None) -> dict:
    """Train a probe on source latents, move it to the target through M, score it on test pairs.

    Args:
        pairs: raw latents x (n, d_a) source, y (n, d_b) target, with labels.
        train: (n,) bool train mask (the map's train split).
        m_b_to_a: map from target to source; its ``a_*`` statistics are the target's,
            its ``b_*`` the source's.
        other_maps: more target->source maps to move the same probe through; each adds
            ``transferred_acc_NAME``.

    Returns:
        {"source_acc", "transferred_acc", "target_acc", "a_probe_acc" (None unless d_a = d_b),
        "chance", "target_gradient_steps": 0, "n_classes", "head": LinearHead on raw target latents}.

    Raises:
        SjalignError: no labels, or map dimensions that do not fit.
    """
    if pairs.labels is None:
        raise SjalignError("transfer-probe needs labels in at least one of the latents files")
    d_a, d_b = pairs.x.shape[1], pairs.y.shape[1]
    if m_b_to_a.W.shape != (d_a, d_b):
        raise SjalignError(f"the map does not fit the latents: need a {d_b} -> {d_a} (target -> source) map, "
                           f"got W of shape {m_b_to_a.W.shape}")
    test = ~train
    y_tr, y_te = pairs.labels[train], pairs.labels[test]
    za = (pairs.x - m_b_to_a.b_mean) / m_b_to_a.b_std  # source, standardised with train statistics
    zb = (pairs.y - m_b_to_a.a_mean) / m_b_to_a.a_std  # target, likewise
    source_head = train_probe(za[train], y_tr, seed=seed)
    moved = compose_head(source_head, m_b_to_a)
    target_head = train_probe(zb[train], y_tr, seed=seed)
    _, counts = np.unique(y_te, return_counts=True)
    extra = {f"transferred_acc_{name}": compose_head(source_head, m).accuracy(pairs.y[test], y_te)
             for name, m in (other_maps or {}).items()}
    return {
        "source_acc": source_head.accuracy(za[test], y_te),
        "transferred_acc": moved.accuracy(pairs.y[test], y_te),
        "target_acc": target_head.accuracy(zb[test], y_te),
        "a_probe_acc": source_head.accuracy(zb[test], y_te) if d_a == d_b else None,
        "chance": float(counts.max() / counts.sum()),
        "target_gradient_steps": 0,
        "n_classes": int(len(source_head.classes)),
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "head": moved,
        **extra,
    }
