"""Many encoders at once: every pair of latents files scored on their shared states, as matrices.

For each pair (i, j) of files, rows are joined on state id and split as ``evaluate`` splits them
(:func:`sjalign.protocol.choose_split`: the files' split tensor, else a seeded draw by state id).
Map-free measures (:mod:`sjalign.metrics.similarity`, linear CKA) are computed on the raw test
latents and are symmetric; map-based ones fit a ridge map on the train pairs in each direction
(as ``fit-map``, standardised, λ per sample) and score it on the test pairs: entry (i, j) is the
map from file i to file j.

Example::

    result = compare_latents([lat_a, lat_b, lat_c], ["a", "b", "c"])
    result["matrix"]["cka_debiased"]  # 3 x 3, symmetric, diagonal 1
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from sjalign.align.maps import DEFAULT_LAMBDA
from sjalign.errors import OptionError, SjalignError
from sjalign.metrics import higher_is_better

MAP_FREE = ("cka", "cka_debiased", "mutual_knn", "cknna", "svcca", "pwcca", "rsa")
MAP_BASED = ("r2", "retrieval@1", "retrieval@5", "retrieval@10", "csls@1")
METRICS = MAP_FREE + MAP_BASED


def check_metrics(names: list[str]) -> list[str]:
    """The metrics asked for, in :data:`METRICS` order; an unknown name is an error naming the known ones."""
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise OptionError(f"{{metrics}}: unknown {', '.join(unknown)} (known: {', '.join(METRICS)})")
    return [m for m in METRICS if m in names]


def map_free_scores(x: np.ndarray, y: np.ndarray, metrics: list[str], *, k: int = 10,
                    knn_metric: str = "cosine") -> dict[str, float]:
    """Map-free measures of paired test latents x (n, d_x), y (n, d_y); k for mutual kNN and CKNNA
    (clamped to n − 1). CKNNA and RSA are skipped (None) above n = ``MAX_KERNEL_ROWS``."""
    from sjalign.metrics.cka import linear_cka
    from sjalign.metrics.similarity import MAX_KERNEL_ROWS, cknna, debiased_cka, mutual_knn, pwcca, rsa, svcca

    n = len(x)
    k = max(1, min(k, n - 1))
    big = n > MAX_KERNEL_ROWS
    fns: dict[str, Callable[[], float | None]] = {
        "cka": lambda: linear_cka(x, y),
        "cka_debiased": lambda: debiased_cka(x, y) if n >= 4 else None,
        "mutual_knn": lambda: mutual_knn(x, y, k, metric=knn_metric, device="cpu"),
        "cknna": lambda: None if big or k < 2 or n < 4 else cknna(x, y, k),
        "svcca": lambda: svcca(x, y),
        "pwcca": lambda: pwcca(x, y),
        "rsa": lambda: None if big or n < 3 else rsa(x, y),
    }
    return {m: fns[m]() for m in metrics if m in fns}


def map_scores(pairs, split, metrics: list[str], *, lam: float = DEFAULT_LAMBDA) -> dict[str, float]:
    """Fit ridge W (x → y) on the split's train pairs as ``evaluate`` does
    (:func:`sjalign.protocol.fit_on_split`) and score it on its test pairs (standardised with train
    statistics): R² and retrieval@k (cosine; ``csls@1``: CSLS with 10 neighbours) of Ẑ_y from Ẑ_x Wᵀ.

    Args:
        pairs: :class:`sjalign.align.pairing.Pairs` (x the source side).
        split: :class:`sjalign.protocol.Split` over its rows.
        metrics: names from :data:`METRICS`; only the map-based ones are computed.
    """
    from sjalign.metrics.regression import r2
    from sjalign.metrics.similarity import retrieval_at_k
    from sjalign.protocol import fit_on_split

    wanted = [m for m in metrics if m in MAP_BASED]
    if not wanted:
        return {}
    amap = fit_on_split(pairs, split, method="ridge", lam=lam)
    zb = amap.standardise_b(pairs.y[split.test])
    pred = amap.standardise_a(pairs.x[split.test]) @ amap.W.T
    n = len(zb)
    out: dict[str, float | None] = {}
    if "r2" in wanted:
        out["r2"] = r2(zb, pred)
    ks = [int(m.split("@")[1]) for m in wanted if m.startswith("retrieval@")]
    if ks:
        got = retrieval_at_k(zb, pred, [min(k, n) for k in ks])
        out.update({f"retrieval@{k}": got[min(k, n)] for k in ks})
    if "csls@1" in wanted:
        out["csls@1"] = retrieval_at_k(zb, pred, (1,), csls_k=min(10, n))[1]
    return out


def compare_latents(latents: list, names: list[str], *, metrics=METRICS, k: int = 10,
                    knn_metric: str = "cosine", test_fraction: float = 0.2, seed: int = 0, lam: float = DEFAULT_LAMBDA,
                    progress: Callable[[str, str], None] | None = None) -> dict:
    """Every pair of latents sets on their shared states: ``{"files", "metrics", "pairs", "matrix"}``.

    Args:
        latents: :class:`sjalign.io.Latents`, two or more.
        names: one label per file (its path).
        metrics: names from :data:`METRICS`.
        progress: called with (name_i, name_j) before each pair.

    Returns:
        ``pairs``: one record per unordered pair ``{"a", "b", "n_shared", "n_train", "n_test", "split"
        (:meth:`sjalign.protocol.Split.describe`, as ``evaluate``'s),
        "map_free": {...}, "a_to_b": {...}, "b_to_a": {...}}``, plus ``"layers"`` (:func:`layer_matrices`)
        when both files carry ``layer.*`` tensors; ``matrix``: {metric: (m, m) nested lists},
        map-free ones symmetric with 1 on the diagonal, map-based ones [i][j] = the map from i to j and
        None on the diagonal; a metric that could not be computed for a pair is None.

    Raises:
        SjalignError: fewer than 2 files, a pair with fewer than 2 shared states, or a split with an empty side.
    """
    from sjalign.align.pairing import pair_by_state_id
    from sjalign.protocol import choose_split

    if len(latents) < 2:
        raise SjalignError("compare needs at least two latents files")
    metrics = check_metrics(list(metrics))
    m = len(latents)
    matrix = {name: [[(1.0 if name in MAP_FREE and i == j else None) for j in range(m)] for i in range(m)]
              for name in metrics}
    pairs = []
    for i in range(m):
        for j in range(i + 1, m):
            if progress is not None:
                progress(names[i], names[j])
            paired = pair_by_state_id(latents[i], latents[j])
            if len(paired.state_ids) < 2:
                raise SjalignError(f"{names[i]} and {names[j]} share {len(paired.state_ids)} state id(s); at least 2 "
                                   "are needed")
            split = choose_split(paired, test_fraction=test_fraction, seed=seed)
            free = map_free_scores(paired.x[split.test], paired.y[split.test], metrics, k=k, knn_metric=knn_metric)
            forward = map_scores(paired, split, metrics, lam=lam)
            backward = map_scores(dataclasses.replace(paired, x=paired.y, y=paired.x), split, metrics, lam=lam)
            for name, value in free.items():
                matrix[name][i][j] = matrix[name][j][i] = value
            for name in forward:
                matrix[name][i][j], matrix[name][j][i] = forward[name], backward[name]
            record = {"a": names[i], "b": names[j], "n_shared": int(len(paired.state_ids)),
                      "n_train": int(split.train.sum()), "n_test": int(split.test.sum()), "split": split.describe(),
                      "map_free": free, "a_to_b": forward, "b_to_a": backward}
            layers = layer_matrices(latents[i], latents[j], paired.state_ids[split.test])
            if layers is not None:
                record["layers"] = layers
            pairs.append(record)
    return {"files": list(names), "metrics": metrics, "higher_is_better": higher_is_better(metrics),
            "knn_metric": knn_metric, "k": k, "lambda": lam, "pairs": pairs, "matrix": matrix}


LAYER_METRICS = ("cka", "cka_debiased")


def layer_matrices(a, b, state_ids: np.ndarray) -> dict | None:
    """Layer × layer linear and debiased CKA of two latents files on ``state_ids`` (ids in both), and each
    layer's best match on the other side (highest debiased CKA; linear CKA where that is undefined).

    Returns:
        ``{"layers_a", "layers_b", "n", "cka": (L_a, L_b), "cka_debiased": (L_a, L_b), "best_match_a":
        {layer of a: layer of b}, "best_match_b": {layer of b: layer of a}}``, or None when either file has
        no ``layer.*`` tensors.
    """
    from sjalign.metrics.cka import linear_cka_matrix
    from sjalign.metrics.similarity import debiased_cka
    from sjalign.protocol import layer_rows

    if not getattr(a, "layers", None) or not getattr(b, "layers", None):
        return None
    names_a, xa = layer_rows(a, state_ids)
    names_b, xb = layer_rows(b, state_ids)
    out = {"layers_a": names_a, "layers_b": names_b, "n": int(len(state_ids))}
    out["cka"] = linear_cka_matrix([xa[i] for i in names_a], [xb[j] for j in names_b])
    out["cka_debiased"] = [[debiased_cka(xa[i], xb[j]) for j in names_b] for i in names_a]

    def best(row: list[float], fallback: list[float]) -> int:
        values = np.array([np.nan if v is None else v for v in row], dtype=np.float64)
        if np.all(np.isnan(values)):
            values = np.asarray(fallback, dtype=np.float64)
        return int(np.nanargmax(values))

    deb, lin = np.array(out["cka_debiased"], dtype=np.float64), np.array(out["cka"], dtype=np.float64)
    out["best_match_a"] = {names_a[i]: names_b[best(deb[i], lin[i])] for i in range(len(names_a))}
    out["best_match_b"] = {names_b[j]: names_a[best(deb[:, j], lin[:, j])] for j in range(len(names_b))}
    return out


def to_csv(result: dict) -> str:
    """One row per (metric, file i, file j) entry of the matrices: ``metric,a,b,value`` (empty when None)."""
    lines = ["metric,a,b,value"]
    for name in result["metrics"]:
        for i, a in enumerate(result["files"]):
            for j, b in enumerate(result["files"]):
                value = result["matrix"][name][i][j]
                lines.append(f"{name},{_csv_field(a)},{_csv_field(b)},{'' if value is None else repr(float(value))}")
    return "\n".join(lines) + "\n"


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
