"""Fit on the train pairs, score on the test pairs beside the shuffled-pair null (SPEC §4).

Pure functions over arrays; the CLI only reads files and prints what these return.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

from sjalign.align import AlignmentMap, Standardised, accumulate, fit_map, shuffled_map
from sjalign.align.maps import solve_procrustes
from sjalign.align.pairing import Pairs
from sjalign.errors import OptionError, SjalignError
from sjalign.metrics import DEFAULT_KS, effective_rank, r2, score_map
from sjalign.protocol.split import Split

LOW_RANK_FRACTION = 0.1
ROW_CHUNK = 65536  # rows standardised at a time for the train-split products (standardised_gram)
# NOS@k and retrieval@1 are exact kNN over the test pairs (O(n²·d) in tiles); above this many test pairs
# they run on a seeded subsample of it, reported in the result (evaluate --max-test)
DEFAULT_MAX_TEST = 50_000
# Figures of the latents alone, the same whatever the map: the null column leaves them out
MAP_FREE_KEYS = ("cka_raw", "eff_rank_a", "eff_rank_b")


def fit_on_split(pairs: Pairs, split: Split, *, method: str = "ridge", lam: float | str = 1e-3,
                 seed: int = 0) -> AlignmentMap:
    """Fit a map on the train pairs of ``split``; warnings (κ, constant features) go through ``warnings``."""
    tr = split.train
    return fit_map(pairs.x[tr], pairs.y[tr], pairs.state_ids[tr], method=method, lam=lam, seed=seed)


def null_map(pairs: Pairs, split: Split, amap: AlignmentMap, *, seed: int = 0) -> AlignmentMap:
    """The shuffled-pair null: ``amap``'s method and λ refitted on train pairs whose targets are permuted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return shuffled_map(pairs.x[split.train], pairs.y[split.train], amap.train_state_ids, seed=seed + 1,
                            **amap.refit_options())


def neighbour_rows(n_test: int, max_test: int | None, seed: int) -> np.ndarray | None:
    """The test rows NOS@k and retrieval@1 use: None (all of them) up to ``max_test`` test pairs, else a
    sorted seeded subsample of ``max_test`` rows (the same rows for a map, its null and the sweeps)."""
    if max_test is None or n_test <= max_test:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_test, max_test, replace=False))


def evaluate_pairs(pairs: Pairs, split: Split, amap: AlignmentMap, *, ks=DEFAULT_KS, permutations: int = 99,
                   seed: int = 0, device="auto", dsc_points: int = 2000, with_null: bool = True,
                   trim_ks: bool = False, null: AlignmentMap | None = None,
                   max_test: int | None = DEFAULT_MAX_TEST) -> dict:
    """Score ``amap`` on the test pairs beside the shuffled-pair null (SPEC §4).

    Args:
        pairs: paired raw latents.
        split: train/test masks; train statistics come from ``amap``.
        amap: the map to judge (fitted on ``split.train``).
        permutations: number of shuffled-pair refits for the R² permutation p-value.
        with_null: False skips the null and the p-value (``null`` and ``r2_p_value`` are None),
            for controls that are themselves judged against the main map's null.
        trim_ks: drop the k ≥ n_test with a warning instead of raising (for the default ``ks``
            on a small test split); the ks used are returned under ``ks``.
        null: the shuffled-pair null map (:func:`null_map` with this ``seed``) when the caller
            keeps it (a report draws its spectrum); None fits it here.
        max_test: NOS@k and retrieval@1 (exact kNN, quadratic in the test pairs) use a seeded
            subsample of this many test pairs when there are more (the same rows for the map and
            the null; a warning says so); None: every test pair. The other metrics use them all.

    Returns:
        A dict in the JSON shape of SPEC §1: metrics, null, n_train, n_test, r2_p_value,
        permutations, split (its ``describe()``), ks, warnings, n_neighbour_test (the test pairs
        NOS@k and retrieval@1 used).

    Raises:
        SjalignError: map dimensions that do not fit the latents, or a k ≥ n_test (unless
            ``trim_ks`` and some k < n_test remain).
    """
    if amap.d_a != pairs.x.shape[1] or amap.d_b != pairs.y.shape[1]:
        raise SjalignError(f"the map is {amap.d_a} -> {amap.d_b} but the latents are "
                           f"{pairs.x.shape[1]} -> {pairs.y.shape[1]}")
    x_tr, y_tr = pairs.x[split.train], pairs.y[split.train]
    x_te, y_te = pairs.x[split.test], pairs.y[split.test]
    n_test = len(x_te)
    notes: list[str] = []
    if max_test is not None and max_test < 2:
        raise OptionError(f"{{max_test}} must be at least 2 test pairs, got {max_test}")
    rows = neighbour_rows(n_test, max_test, seed)
    n_nb = n_test if rows is None else len(rows)
    if rows is not None:
        notes.append(f"NOS@k and retrieval@1 on a seeded subsample of {max_test} of the {n_test} test pairs "
                     "(exact kNN among them); the other metrics on all")
    bad_k = [k for k in ks if not 1 <= k < n_nb]
    if bad_k and trim_ks and len(bad_k) < len(ks):
        ks = tuple(k for k in ks if k not in bad_k)
        notes.append(f"only {n_nb} test pairs: NOS@k for k = {','.join(map(str, bad_k))} left out")
    elif bad_k:
        raise OptionError(f"{{ks}} {','.join(map(str, bad_k))}: each k must be between 1 and n_test - 1 = {n_nb - 1}")
    std = accumulate(x_tr, y_tr).standardised()
    q = solve_procrustes(std.c_ab)
    za, zb = amap.standardise_a(x_te), amap.standardise_b(y_te)
    kw = dict(ks=ks, q=q, dsc_points=dsc_points, seed=seed, device=device, neighbour_rows=rows)
    metrics = score_map(amap.W, za, zb, **kw)

    null, p_value, n_perm = None, None, 0
    if with_null:
        nmap = null if null is not None else null_map(pairs, split, amap, seed=seed)
        null = score_map(nmap.W, nmap.standardise_a(x_te), nmap.standardise_b(y_te), **kw)
        for key in MAP_FREE_KEYS:  # they do not depend on the map: the null has none of its own
            null.pop(key, None)
        null_r2 = null_r2_distribution(x_tr, y_tr, x_te, y_te, permutations=permutations, seed=seed + 1, std=std,
                                       **amap.refit_options())
        p_value = (1 + sum(v >= metrics["r2"] for v in null_r2)) / (1 + len(null_r2))
        n_perm = len(null_r2)

    eff_a = effective_rank(std.c_aa)
    eff_b = effective_rank(standardised_gram(y_tr, std.b_mean, std.b_std, y_tr, std.b_mean, std.b_std))
    for side, eff, d in (("a", eff_a, amap.d_a), ("b", eff_b, amap.d_b)):
        if eff < LOW_RANK_FRACTION * d:
            notes.append(f"latents {side} are nearly rank-deficient (effective rank {eff:.1f} of {d}): R² and CKA "
                         "are inflated by a few global factors and κ means little; judge by retrieval@1 and NOS@k "
                         "against the null")
    for side, idx in (("a", std.constant_a), ("b", std.constant_b)):
        if len(idx):
            notes.append(f"latents {side}: {len(idx)} constant feature(s) on the train split (std 0), left at 0")
    metrics.update(eff_rank_a=eff_a, eff_rank_b=eff_b)
    return {
        "metrics": metrics,
        "null": null,
        "r2_p_value": p_value,
        "permutations": n_perm,
        "n_train": int(split.train.sum()),
        "n_test": n_test,
        "n_neighbour_test": n_nb,
        "split": split.describe(),
        "ks": list(ks),
        "warnings": notes,
    }


def null_r2_distribution(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, *, method: str,
                         lam: float, permutations: int, seed: int, std: Standardised | None = None) -> list[float]:
    """Held-out R² of maps refitted on shuffled training pairs, one per permutation.

    Permuting target rows leaves the train statistics and C_aa unchanged, so for ridge and
    lstsq the test projection G = Ẑa_test (C_aa + λI)⁻¹ is computed once and each shuffle
    costs one product: P = G · Ẑa_trainᵀ Ẑb_train[perm] / n (:func:`standardised_gram`, chunk by chunk: no
    standardised copy of the train split is held). Permutation ``i`` uses the generator seeded
    ``seed + i``, the same draw as :func:`sjalign.align.shuffled_map`.
    ``std``: the train split's standardised moments, when the caller has them already.
    """
    std = std if std is not None else accumulate(x_tr, y_tr).standardised()
    za_te, zb_te = (x_te - std.a_mean) / std.a_std, (y_te - std.b_mean) / std.b_std
    n = len(x_tr)
    if method != "procrustes":
        a = std.c_aa + lam * np.eye(len(std.c_aa))
        try:
            if lam <= 0:
                raise np.linalg.LinAlgError
            g = scipy.linalg.solve(a, za_te.T, assume_a="pos").T
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
            g = za_te @ np.linalg.pinv(a, rcond=1e-10, hermitian=True)
    out = []
    for i in range(permutations):
        perm = np.random.default_rng(seed + i).permutation(n)
        c_ab = standardised_gram(x_tr, std.a_mean, std.a_std, y_tr, std.b_mean, std.b_std, rows_v=perm)
        if method == "procrustes":
            pred = za_te @ solve_procrustes(c_ab).T
        else:
            pred = g @ c_ab
        out.append(r2(zb_te, pred))
    return out


def standardised_gram(u: np.ndarray, u_mean: np.ndarray, u_std: np.ndarray, v: np.ndarray, v_mean: np.ndarray,
                      v_std: np.ndarray, *, rows_v: np.ndarray | None = None) -> np.ndarray:
    """Ẑuᵀ Ẑv / n in float64 for Ẑu = (u − u_mean) / u_std (n, d_u) and Ẑv likewise over the rows
    ``v[rows_v]`` (all of v when None), in chunks of :data:`ROW_CHUNK` rows: memory O(chunk·d + d_u·d_v)
    instead of two standardised float64 copies of the n rows. Returns (d_u, d_v)."""
    n = len(u)
    out = np.zeros((u.shape[1], v.shape[1]))
    for start in range(0, n, ROW_CHUNK):
        stop = min(start + ROW_CHUNK, n)
        zu = (u[start:stop] - u_mean) / u_std
        zv = ((v[start:stop] if rows_v is None else v[rows_v[start:stop]]) - v_mean) / v_std
        out += zu.T @ zv
    return out / n
