"""Sweeps over one fixed test split: maps refitted on fewer or noisier train pairs (paper App. B.1)."""

from __future__ import annotations

import warnings

import numpy as np

from sjalign.align import accumulate, map_from_moments
from sjalign.align.maps import solve_procrustes
from sjalign.align.pairing import Pairs
from sjalign.errors import OptionError
from sjalign.metrics import DEFAULT_KS, score_map
from sjalign.protocol.score import DEFAULT_MAX_TEST, neighbour_rows
from sjalign.protocol.split import Split


def _subset_fit_score(pairs: Pairs, train_idx: np.ndarray, y_train: np.ndarray, test: np.ndarray, *, method: str,
                      lam: float, ks, seed: int, device, dsc_points: int, max_test: int | None) -> dict[str, float]:
    std = accumulate(pairs.x[train_idx], y_train).standardised()  # one pass serves the map and Q
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        amap = map_from_moments(std, pairs.state_ids[train_idx], method=method, lam=lam)
    x_te, y_te = pairs.x[test], pairs.y[test]
    return score_map(amap.W, amap.standardise_a(x_te), amap.standardise_b(y_te), ks=ks,
                     q=solve_procrustes(std.c_ab), dsc_points=dsc_points, seed=seed, device=device,
                     neighbour_rows=neighbour_rows(len(x_te), max_test, seed))


def pair_budget_sweep(pairs: Pairs, split: Split, budgets, *, method: str = "ridge", lam: float = 1e-3,
                      ks=DEFAULT_KS, seed: int = 0, device="auto", dsc_points: int = 2000,
                      max_test: int | None = DEFAULT_MAX_TEST) -> list[dict]:
    """Metrics and κ(W) against the number of training pairs, on one fixed test split (paper App. B.1).

    For each budget b a seeded subset of b train pairs (nested: smaller budgets are prefixes
    of one permutation) fits the map; every point is scored on the same test pairs (NOS@k and
    retrieval@1 on the same seeded subsample of ``max_test`` of them as
    :func:`sjalign.protocol.evaluate_pairs`, when there are more).

    Returns:
        [{"n_train": b, "metrics": {...}}, ...] in the order of ``budgets``.

    Raises:
        SjalignError: a budget below 2 or above the train split.
    """
    train_idx = np.flatnonzero(split.train)
    for b in budgets:
        if not 2 <= b <= len(train_idx):
            raise OptionError(f"{{pair_budget}} {b}: must be between 2 and the train split's {len(train_idx)} pairs",
                              pair_budget="budget")
    order = train_idx[np.random.default_rng(seed).permutation(len(train_idx))]
    return [{"n_train": int(b), "metrics": _subset_fit_score(pairs, order[:b], pairs.y[order[:b]], split.test,
                                                             method=method, lam=lam, ks=ks, seed=seed,
                                                             device=device, dsc_points=dsc_points,
                                                             max_test=max_test)}
            for b in budgets]


def pair_noise_sweep(pairs: Pairs, split: Split, fractions, *, method: str = "ridge", lam: float = 1e-3,
                     ks=DEFAULT_KS, seed: int = 0, device="auto", dsc_points: int = 2000,
                     max_test: int | None = DEFAULT_MAX_TEST) -> list[dict]:
    """Metrics and κ(W) when a fraction of training pairs is mismatched (paper App. B.2, Table 4).

    For fraction f, round(f·n_train) seeded train pairs get their targets permuted among
    themselves (a derangement is not forced); the test pairs stay correct (``max_test``: as
    :func:`pair_budget_sweep`).

    Returns:
        [{"noise": f, "mismatched": m, "metrics": {...}}, ...].

    Raises:
        SjalignError: a fraction outside [0, 1].
    """
    train_idx = np.flatnonzero(split.train)
    out = []
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise OptionError(f"{{pair_noise}} {f}: fractions must be between 0 and 1",
                              pair_noise="fraction")
        rng = np.random.default_rng(seed)
        m = int(round(f * len(train_idx)))
        y_train = pairs.y[train_idx].copy()
        chosen = rng.choice(len(train_idx), m, replace=False)
        y_train[chosen] = y_train[chosen[rng.permutation(m)]]
        out.append({"noise": float(f), "mismatched": m,
                    "metrics": _subset_fit_score(pairs, train_idx, y_train, split.test, method=method, lam=lam,
                                                 ks=ks, seed=seed, device=device, dsc_points=dsc_points,
                                                 max_test=max_test)})
    return out


def default_budgets(n_train: int, *, points: int = 6, smallest: int = 32) -> tuple[int, ...]:
    """Pair budgets for a report's curve: ``points`` geometric steps from min(smallest, n_train) to n_train."""
    low = max(2, min(smallest, n_train))
    return tuple(sorted({int(round(v)) for v in np.geomspace(low, n_train, points)}))
