"""The evaluation protocol (Social-JEPA Algorithm 1): pair, split, fit on train, score on test, controls.

Pure functions over arrays; the CLI only reads files and prints what these return.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from sjalign.align import AlignmentMap, Standardised, accumulate, fit_map, map_from_moments, shuffled_map
from sjalign.align.maps import solve_procrustes
from sjalign.data.pairing import Pairs, random_split
from sjalign.errors import SjalignError
from sjalign.metrics import DEFAULT_KS, effective_rank, r2, score_map

LOW_RANK_FRACTION = 0.1
# Figures of the latents alone, the same whatever the map: the null column leaves them out
MAP_FREE_KEYS = ("cka_raw", "eff_rank_a", "eff_rank_b")
@dataclass(frozen=True)
class Split:
    """Train/test masks over paired rows and how they were drawn.

    Attributes:
        train, test: (n,) bool masks over the rows of a :class:`Pairs` (disjoint; a shift split
            leaves some rows in neither).
        how: one human sentence.
        kind: ``map`` (a map's train ids), ``file`` (the files' split tensor), ``seeded`` (by
            state id), ``shift`` (fit on some classes, test on others) or ``in-distribution``.
        seed, test_fraction: of a seeded draw (None otherwise).
    """

    train: np.ndarray
    test: np.ndarray
    how: str
    kind: str = "seeded"
    seed: int | None = None
    test_fraction: float | None = None

    def describe(self) -> dict:
        """The JSON form: kind, how, n_train, n_test, seed, test_fraction."""
        return {"kind": self.kind, "how": self.how, "n_train": int(self.train.sum()), "n_test": int(self.test.sum()),
                "seed": self.seed, "test_fraction": self.test_fraction}


def choose_split(pairs: Pairs, *, test_fraction: float = 0.2, seed: int = 0,
                 train_state_ids: np.ndarray | None = None, use_file_split: bool = True) -> Split:
    """Train/test by state id: a map's recorded train ids, else the files' split, else a seeded draw.

    A files' split that holds only train (or only test) states, as ``embed --split train``
    writes, cannot be used and gives way to the seeded draw, with a warning; any files' split
    does when ``use_file_split`` is False (``evaluate --resplit``), silently.

    Raises:
        SjalignError: an empty side, or a map whose train ids are missing from the latents.
    """
    kind, split_seed, fraction = "seeded", None, None
    if train_state_ids is not None:
        train = np.isin(pairs.state_ids, train_state_ids)
        missing = len(train_state_ids) - int(train.sum())
        if missing:
            raise SjalignError(f"{missing} of the map's {len(train_state_ids)} train state ids are missing "
                               "from the paired latents; the map was fitted on other data")
        how, kind = "the map's train state ids; test = the other shared ids", "map"
    elif use_file_split and pairs.split is not None and len(np.unique(pairs.split)) == 2:
        train = pairs.split == 0
        how, kind = "the files' split tensor", "file"
    else:
        if use_file_split and pairs.split is not None:
            side = "test" if pairs.split[0] else "train"
            warnings.warn(f"the files' 'split' tensors mark all {len(pairs.split)} paired states as {side}, which "
                          f"leaves nothing to {'fit' if side == 'test' else 'test'} on; using a seeded split by "
                          f"state id instead (seed {seed}, test fraction {test_fraction})", stacklevel=2)
        train = random_split(pairs.state_ids, test_fraction, seed) == 0
        how = f"seeded by state id (seed {seed}, test fraction {test_fraction})"
        split_seed, fraction = seed, test_fraction
    if train.all() or not train.any():
        raise SjalignError(f"the split ({how}) leaves no {'test' if train.all() else 'train'} pairs")
    return Split(train, ~train, how, kind, split_seed, fraction)


@dataclass(frozen=True)
class Shift:
    """Fit on the states of some classes, test on the states of others (``evaluate --shift``).

    Attributes:
        train_classes: labels whose train-split states fit the map.
        test_classes: labels whose test-split states score it; None = every other label present.
    """

    train_classes: tuple[int, ...]
    test_classes: tuple[int, ...] | None = None


def _classes(values) -> str:
    return ",".join(str(int(v)) for v in values)


def shift_split(pairs: Pairs, base: Split, shift: Shift, *, seed: int = 0) -> tuple[Split, Split]:
    """The shifted split and its in-distribution reference on the same test states.

    Train and test states still come from ``base`` (so no state is in both): the shifted
    map fits on base-train states of ``train_classes``, the reference map on base-train
    states of ``test_classes``; both score on base-test states of ``test_classes``. Both
    fits use the same number of pairs, min(|pool_shift|, |pool_in|), a seeded subset of the
    larger pool, so the two differ only in which classes they saw.

    Returns:
        (shift split, in-distribution split), sharing one test mask.

    Raises:
        SjalignError: no labels, a class that no state carries, or an empty subset.
    """
    if pairs.labels is None:
        raise SjalignError("--shift selects states by class, but neither latents file carries a 'labels' tensor")
    present = np.unique(pairs.labels)
    train_cls = np.asarray(shift.train_classes, dtype=np.int64)
    test_cls = (np.setdiff1d(present, train_cls) if shift.test_classes is None
                else np.asarray(shift.test_classes, dtype=np.int64))
    absent = np.setdiff1d(np.r_[train_cls, test_cls], present)
    if len(absent):
        raise SjalignError(f"--shift: class(es) {_classes(absent)} carried by no paired state "
                           f"(labels present: {_classes(present)})")
    if not len(test_cls):
        raise SjalignError(f"--shift: no test classes left (train classes {_classes(train_cls)} are every label)")
    pool_shift = base.train & np.isin(pairs.labels, train_cls)
    pool_in = base.train & np.isin(pairs.labels, test_cls)
    test = base.test & np.isin(pairs.labels, test_cls)
    for name, mask, cls in (("train", pool_shift, train_cls), ("in-distribution train", pool_in, test_cls),
                            ("test", test, test_cls)):
        if mask.sum() < 2:
            raise SjalignError(f"--shift: {int(mask.sum())} {name} state(s) of class(es) {_classes(cls)} "
                               f"in the split ({base.how}); need at least 2")
    n = int(min(pool_shift.sum(), pool_in.sum()))
    rng = np.random.default_rng(seed)
    masks = []
    for pool in (pool_shift, pool_in):
        chosen = np.zeros(len(pool), dtype=bool)
        chosen[rng.permutation(np.flatnonzero(pool))[:n]] = True
        masks.append(chosen)
    what = f"{n} train pairs each, within {base.how}"
    return (Split(masks[0], test, f"shift: fit on classes {_classes(train_cls)}, test on classes "
                  f"{_classes(test_cls)} ({what})", "shift", base.seed, base.test_fraction),
            Split(masks[1], test, f"in-distribution: fit and test on classes {_classes(test_cls)} ({what})",
                  "in-distribution", base.seed, base.test_fraction))


def transfer_split(split: Split, source: Pairs, target: Pairs, *, name: str = "control") -> tuple[Split, int]:
    """The same train/test state ids on other paired latents (a control's), by state id.

    Returns:
        (split over ``target``'s rows, number of train ids ``target`` lacks).

    Raises:
        SjalignError: ``target`` lacks some test ids (its scores would not be comparable)
            or every train id.
    """
    train_ids, test_ids = source.state_ids[split.train], source.state_ids[split.test]
    test = np.isin(target.state_ids, test_ids)
    missing = len(test_ids) - int(test.sum())
    if missing:
        raise SjalignError(f"{name}: {missing} of the {len(test_ids)} test state ids are missing from its latents; "
                           "a control must cover the whole test split")
    train = np.isin(target.state_ids, train_ids)
    if train.sum() < 2:
        raise SjalignError(f"{name}: holds {int(train.sum())} of the {len(train_ids)} train state ids; "
                           "need at least 2 to fit its map")
    return Split(train, test, split.how, split.kind, split.seed, split.test_fraction), len(train_ids) - int(train.sum())


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


def evaluate_pairs(pairs: Pairs, split: Split, amap: AlignmentMap, *, ks=DEFAULT_KS, permutations: int = 99,
                   seed: int = 0, device="auto", dsc_points: int = 2000, with_null: bool = True,
                   trim_ks: bool = False) -> dict:
    """Score ``amap`` on the test pairs beside the shuffled-pair null (SPEC §4).

    Args:
        pairs: paired raw latents.
        split: train/test masks; train statistics come from ``amap``.
        amap: the map to judge (fitted on ``split.train``).
        permutations: number of shuffled-pair refits for the R² permutation p-value.
        with_null: False skips the null and the p-value (``null`` and ``r2_p_value`` are None),
            for controls that are themselves judged against the main map's null.
        trim_ks: drop the k ≥ n_test with a warning instead of raising (for the default ``--k``
            on a small test split); the ks used are returned under ``ks``.

    Returns:
        A dict in the JSON shape of SPEC §1: metrics, null, n_train, n_test, r2_p_value,
        permutations, split (its ``describe()``), ks, warnings.

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
    bad_k = [k for k in ks if not 1 <= k < n_test]
    if bad_k and trim_ks and len(bad_k) < len(ks):
        ks = tuple(k for k in ks if k not in bad_k)
        notes.append(f"only {n_test} test pairs: NOS@k for k = {','.join(map(str, bad_k))} left out")
    elif bad_k:
        raise SjalignError(f"--k {','.join(map(str, bad_k))}: each k must be between 1 and n_test - 1 = {n_test - 1}")
    std = accumulate(x_tr, y_tr).standardised()
    q = solve_procrustes(std.c_ab)
    za, zb = amap.standardise_a(x_te), amap.standardise_b(y_te)
    kw = dict(ks=ks, q=q, dsc_points=dsc_points, seed=seed, device=device)
    metrics = score_map(amap.W, za, zb, **kw)

    null, p_value, n_perm = None, None, 0
    if with_null:
        nmap = null_map(pairs, split, amap, seed=seed)
        null = score_map(nmap.W, nmap.standardise_a(x_te), nmap.standardise_b(y_te), **kw)
        for key in MAP_FREE_KEYS:  # they do not depend on the map: the null has none of its own
            null.pop(key, None)
        null_r2 = null_r2_distribution(x_tr, y_tr, x_te, y_te, permutations=permutations, seed=seed + 1, std=std,
                                       **amap.refit_options())
        p_value = (1 + sum(v >= metrics["r2"] for v in null_r2)) / (1 + len(null_r2))
        n_perm = len(null_r2)

    zb_tr = (y_tr - std.b_mean) / std.b_std
    eff_a = effective_rank(std.c_aa)
    eff_b = effective_rank(zb_tr.T @ zb_tr / len(zb_tr))
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
        "split": split.describe(),
        "ks": list(ks),
        "warnings": notes,
    }


def null_r2_distribution(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, *, method: str,
                         lam: float, permutations: int, seed: int, std: Standardised | None = None) -> list[float]:
    """Held-out R² of maps refitted on shuffled training pairs, one per permutation.

    Permuting target rows leaves the train statistics and C_aa unchanged, so for ridge and
    lstsq the test projection G = Ẑa_test (C_aa + λI)⁻¹ is computed once and each shuffle
    costs one product: P = G · Ẑa_trainᵀ Ẑb_train[perm] / n. Permutation ``i`` uses the
    generator seeded ``seed + i``, the same draw as :func:`sjalign.align.shuffled_map`.
    ``std``: the train split's standardised moments, when the caller has them already.
    """
    std = std if std is not None else accumulate(x_tr, y_tr).standardised()
    za_tr, zb_tr = (x_tr - std.a_mean) / std.a_std, (y_tr - std.b_mean) / std.b_std
    za_te, zb_te = (x_te - std.a_mean) / std.a_std, (y_te - std.b_mean) / std.b_std
    n = len(za_tr)
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
        c_ab = za_tr.T @ zb_tr[perm] / n  # (d_a, d_b)
        if method == "procrustes":
            pred = za_te @ solve_procrustes(c_ab).T
        else:
            pred = g @ c_ab
        out.append(r2(zb_te, pred))
    return out


def _subset_fit_score(pairs: Pairs, train_idx: np.ndarray, y_train: np.ndarray, test: np.ndarray, *, method: str,
                      lam: float, ks, seed: int, device, dsc_points: int) -> dict[str, float]:
    std = accumulate(pairs.x[train_idx], y_train).standardised()  # one pass serves the map and Q
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        amap = map_from_moments(std, pairs.state_ids[train_idx], method=method, lam=lam)
    x_te, y_te = pairs.x[test], pairs.y[test]
    return score_map(amap.W, amap.standardise_a(x_te), amap.standardise_b(y_te), ks=ks,
                     q=solve_procrustes(std.c_ab), dsc_points=dsc_points, seed=seed, device=device)


def pair_budget_sweep(pairs: Pairs, split: Split, budgets, *, method: str = "ridge", lam: float = 1e-3,
                      ks=DEFAULT_KS, seed: int = 0, device="auto", dsc_points: int = 2000) -> list[dict]:
    """Metrics and κ(W) against the number of training pairs, on one fixed test split (paper App. B.1).

    For each budget b a seeded subset of b train pairs (nested: smaller budgets are prefixes
    of one permutation) fits the map; every point is scored on the same test pairs.

    Returns:
        [{"n_train": b, "metrics": {...}}, ...] in the order of ``budgets``.

    Raises:
        SjalignError: a budget below 2 or above the train split.
    """
    train_idx = np.flatnonzero(split.train)
    for b in budgets:
        if not 2 <= b <= len(train_idx):
            raise SjalignError(f"--pair-budget {b}: must be between 2 and the train split's {len(train_idx)} pairs")
    order = train_idx[np.random.default_rng(seed).permutation(len(train_idx))]
    return [{"n_train": int(b), "metrics": _subset_fit_score(pairs, order[:b], pairs.y[order[:b]], split.test,
                                                             method=method, lam=lam, ks=ks, seed=seed,
                                                             device=device, dsc_points=dsc_points)}
            for b in budgets]


def pair_noise_sweep(pairs: Pairs, split: Split, fractions, *, method: str = "ridge", lam: float = 1e-3,
                     ks=DEFAULT_KS, seed: int = 0, device="auto", dsc_points: int = 2000) -> list[dict]:
    """Metrics and κ(W) when a fraction of training pairs is mismatched (paper App. B.2, Table 4).

    For fraction f, round(f·n_train) seeded train pairs get their targets permuted among
    themselves (a derangement is not forced); the test pairs stay correct.

    Returns:
        [{"noise": f, "mismatched": m, "metrics": {...}}, ...].

    Raises:
        SjalignError: a fraction outside [0, 1].
    """
    train_idx = np.flatnonzero(split.train)
    out = []
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise SjalignError(f"--pair-noise {f}: fractions must be between 0 and 1")
        rng = np.random.default_rng(seed)
        m = int(round(f * len(train_idx)))
        y_train = pairs.y[train_idx].copy()
        chosen = rng.choice(len(train_idx), m, replace=False)
        y_train[chosen] = y_train[chosen[rng.permutation(m)]]
        out.append({"noise": float(f), "mismatched": m,
                    "metrics": _subset_fit_score(pairs, train_idx, y_train, split.test, method=method, lam=lam,
                                                 ks=ks, seed=seed, device=device, dsc_points=dsc_points)})
    return out
