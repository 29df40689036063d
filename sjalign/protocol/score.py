"""Fit on the train pairs, score on the test pairs beside the shuffled-pair null (SPEC §4).

Pure functions over paired latents read through ``take_x`` / ``take_y``
(:class:`sjalign.align.pairing.Pairs` in memory, :class:`sjalign.align.streaming.FilePairs`
from the files): the split's rows are read in chunks and only their moments kept
(:mod:`sjalign.protocol.gram`), so memory is O(d² + chunk) plus the ≤ ``max_test`` test rows the
neighbour metrics and the ≤ ``dsc_points`` rows DSC compare exactly, and the two blocks of train rows
the shuffled-pair null multiplies (:data:`sjalign.protocol.gram.NULL_BLOCK_BYTES`). The CLI only reads
files and prints what these return.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg

from sjalign.align import AlignmentMap, fit_map, map_from_moments
from sjalign.align.maps import solve_procrustes
from sjalign.align.moments import Standardised
from sjalign.errors import OptionError, SjalignError
from sjalign.metrics import DEFAULT_DSC_POINTS, DEFAULT_KS, dsc, effective_rank, kappa, nos_at_k, numerical_rank
from sjalign.metrics import orth_dev, retrieval_at_1
from sjalign.protocol.gram import PairGram, chunks, shuffled_cross_grams
from sjalign.protocol.split import Split

LOW_RANK_FRACTION = 0.1
# NOS@k and retrieval@1 are exact kNN over the test pairs (O(n²·d) in tiles); above this many test pairs
# they run on a seeded subsample of it, reported in the result (evaluate --max-test)
DEFAULT_MAX_TEST = 50_000
# Figures of the latents alone, the same whatever the map: the null column leaves them out
MAP_FREE_KEYS = ("cka_raw", "eff_rank_a", "eff_rank_b")


def fit_on_split(pairs, split: Split, *, method: str = "ridge", lam: float | str = 1e-3,
                 seed: int = 0) -> AlignmentMap:
    """Fit a map on the train pairs of ``split`` (in memory for :class:`Pairs`, streamed from the files for
    :class:`FilePairs`, both in float64); warnings (κ, constant features) go through ``warnings``."""
    from sjalign.align.streaming import FilePairs, fit_map_streaming

    if isinstance(pairs, FilePairs):
        return fit_map_streaming(pairs.a, pairs.b, pairs.paired, split.train, method=method, lam=lam, seed=seed,
                                 precision="float64", lstsq_fallback=False)
    tr = split.train
    return fit_map(pairs.x[tr], pairs.y[tr], pairs.state_ids[tr], method=method, lam=lam, seed=seed)


def null_map(pairs, split: Split, amap: AlignmentMap, *, seed: int = 0, std: Standardised | None = None) -> AlignmentMap:
    """The shuffled-pair null: ``amap``'s method and λ refitted on train pairs whose targets are permuted
    (the permutation of :func:`sjalign.align.shuffled_map` with seed ``seed + 1``).

    Permuting targets leaves the train means, stds and C_aa unchanged, so only C_ab is recomputed
    (:func:`sjalign.protocol.gram.shuffled_cross_grams`). ``std``: the train split's standardised
    moments when the caller has them.
    """
    tr = np.flatnonzero(split.train)
    std = std if std is not None else PairGram.of(pairs, tr).moments().standardised()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return map_from_moments(shuffled_moments(pairs, tr, seed + 1, std), amap.train_state_ids,
                                **amap.refit_options())


def shuffled_moments(pairs, train_idx: np.ndarray, seed: int, std: Standardised) -> Standardised:
    """The train moments ``std`` with C_ab of the pairs (x_i, y_π(i)), π drawn from ``seed``; constant
    features' rows and columns stay 0, as :meth:`sjalign.align.moments.Moments.standardised` leaves them."""
    c_ab = next(shuffled_cross_grams(pairs, train_idx, [seed], std.a_mean, std.a_std, std.b_mean, std.b_std))
    c_ab[std.constant_a, :] = 0.0
    c_ab[:, std.constant_b] = 0.0
    return replace(std, c_ab=c_ab)


def neighbour_rows(n_test: int, max_test: int | None, seed: int) -> np.ndarray | None:
    """The test rows NOS@k and retrieval@1 use: None (all of them) up to ``max_test`` test pairs, else a
    sorted seeded subsample of ``max_test`` rows (the same rows for a map, its null and the sweeps)."""
    if max_test is None or n_test <= max_test:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_test, max_test, replace=False))


def dsc_rows(n_test: int, dsc_points: int, seed: int) -> np.ndarray:
    """The test rows DSC compares: all up to ``dsc_points``, else the seeded subsample
    :func:`sjalign.metrics.dsc` draws."""
    if n_test <= dsc_points:
        return np.arange(n_test)
    return np.sort(np.random.default_rng(seed).choice(n_test, dsc_points, replace=False))


@dataclass
class TestSums:
    """What one pass over the test pairs keeps for a map: Σ‖Ẑb − ẐaWᵀ‖², Σ‖Ẑb − ẐaQᵀ‖² and Σ‖Ẑb‖²
    (Ẑ standardised with the map's train statistics, as :meth:`AlignmentMap.standardise_a` does)."""

    sse: float = 0.0
    sse_q: float = 0.0
    ss_b: float = 0.0


def test_pass(pairs, test_idx: np.ndarray, maps: dict[str, AlignmentMap], q: np.ndarray
              ) -> tuple[PairGram, dict[str, TestSums]]:
    """One chunked pass over the test pairs: their raw Gram and each map's squared errors.

    The errors are summed from the predictions themselves (no cancellation however close R² is to
    1); CKA and the null's R² come from the Gram by algebra.
    """
    gram, sums = None, {name: TestSums() for name in maps}
    for sl in chunks(len(test_idx)):
        x, y = pairs.take_x(test_idx[sl]), pairs.take_y(test_idx[sl])
        gram = PairGram.start(x, y) if gram is None else gram
        gram.add(x, y)
        for name, m in maps.items():
            za, zb = m.standardise_a(x), m.standardise_b(y).astype(np.float64)
            s = sums[name]
            s.sse += float(np.sum((zb - za @ m.W.T) ** 2))
            s.sse_q += float(np.sum((zb - za @ q.T) ** 2))
            s.ss_b += float(np.sum(zb**2))
    return gram, sums


def moment_scores(amap: AlignmentMap, gram: PairGram, sums: TestSums) -> dict[str, float]:
    """mse, r2, cka, cka_raw and the Procrustes error of ``amap`` on the test pairs, from one pass.

    With Ẑ standardised by the map's train statistics and C the column-centred test covariances
    (Σ/n): P = ẐaWᵀ has C_pp = W C_aa Wᵀ and C_pb = W C_ab, so linear CKA (Kornblith et al. 2019)
    is ‖C_pb‖²_F / (‖C_pp‖_F ‖C_bb‖_F); R² = 1 − Σ‖Ẑb − P‖² / (n tr C_bb) — the definitions of
    :mod:`sjalign.metrics` (tested equal to them).
    """
    c_aa, c_ab, c_bb = gram.standardised(amap.a_mean, amap.a_std, amap.b_mean, amap.b_std, centred=True)
    w = amap.W.astype(np.float64)
    c_pp, c_pb = w @ c_aa @ w.T, w @ c_ab
    n, d_b = gram.n, amap.d_b
    total = n * float(np.trace(c_bb))

    def cka(cross: np.ndarray, left: np.ndarray) -> float:
        denom = np.linalg.norm(left) * np.linalg.norm(c_bb)
        return float(np.linalg.norm(cross) ** 2 / denom) if denom > 0 else float("nan")

    return {
        "mse": sums.sse / (n * d_b),
        "r2": 1.0 - sums.sse / total if total > 0 else float("nan"),
        "cka": cka(c_pb, c_pp),
        "cka_raw": cka(c_ab, c_aa),
        "procrustes_error": sums.sse_q / sums.ss_b,
    }


def score_maps(pairs, test_idx: np.ndarray, maps: dict[str, AlignmentMap], q: np.ndarray, *, ks=DEFAULT_KS,
               dsc_points: int = DEFAULT_DSC_POINTS, seed: int = 0, device="auto",
               neighbour_rows: np.ndarray | None = None) -> tuple[dict[str, dict[str, float]], PairGram]:
    """Every single-map metric of SPEC §4 for each map, on the test pairs ``test_idx``.

    The same figures as :func:`sjalign.metrics.score_map` on the whole standardised test arrays, but
    the test pairs are read in chunks: the moment metrics (mse, r2, cka, cka_raw, procrustes_error)
    from one pass (:func:`test_pass`, :func:`moment_scores`); NOS@k and retrieval@1 (exact kNN) on the
    rows ``neighbour_rows`` of the test pairs (all when None) and DSC on its ≤ ``dsc_points`` rows,
    the only rows held at once; κ, rank and orth_dev of W alone.

    Args:
        maps: {name: map}, each scored in its own train statistics.
        q: (d_b, d_a) orthogonal Procrustes map fitted on train, for ``procrustes_error``.

    Returns:
        ({name: {"mse", "r2", "cka", "cka_raw", "dsc", "nos@K"..., "retrieval@1", "procrustes_error",
        "kappa", "rank", "orth_dev"}}, the test pairs' raw Gram).
    """
    n_test = len(test_idx)
    gram, sums = test_pass(pairs, test_idx, maps, q)
    nb = np.arange(n_test) if neighbour_rows is None else neighbour_rows
    ds = dsc_rows(n_test, dsc_points, seed)
    held = np.union1d(nb, ds)  # the test rows read whole: ≤ max_test + dsc_points
    x, y = pairs.take_x(test_idx[held]), pairs.take_y(test_idx[held])
    at_nb, at_ds = np.searchsorted(held, nb), np.searchsorted(held, ds)
    out = {}
    for name, m in maps.items():
        zb, p = m.standardise_b(y), m.standardise_a(x) @ m.W.T
        scores = moment_scores(m, gram, sums[name])
        row = {key: scores[key] for key in ("mse", "r2", "cka", "cka_raw")}
        row["dsc"] = dsc(zb[at_ds], p[at_ds], max_points=dsc_points, seed=seed, device=device)
        row.update({f"nos@{k}": v for k, v in nos_at_k(zb[at_nb], p[at_nb], ks, device=device).items()})
        row["retrieval@1"] = retrieval_at_1(zb[at_nb], p[at_nb], device=device)
        row["procrustes_error"] = scores["procrustes_error"]
        row.update(kappa=kappa(m.W), rank=numerical_rank(m.W), orth_dev=orth_dev(m.W))
        out[name] = row
    return out, gram


def evaluate_pairs(pairs, split: Split, amap: AlignmentMap, *, ks=DEFAULT_KS, permutations: int = 99,
                   seed: int = 0, device="auto", dsc_points: int = 2000, with_null: bool = True,
                   trim_ks: bool = False, null: AlignmentMap | None = None,
                   max_test: int | None = DEFAULT_MAX_TEST) -> dict:
    """Score ``amap`` on the test pairs beside the shuffled-pair null (SPEC §4).

    The split's rows are read in chunks (:func:`score_maps`): memory O(d² + chunk) plus the
    ≤ ``max_test`` + ``dsc_points`` test rows the neighbour metrics and DSC compare and the null's two
    blocks of train rows, whether ``pairs`` is in memory or read from the files.

    Args:
        pairs: paired raw latents (:class:`Pairs` or :class:`FilePairs`).
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
    if amap.d_a != pairs.d_a or amap.d_b != pairs.d_b:
        raise SjalignError(f"the map is {amap.d_a} -> {amap.d_b} but the latents are {pairs.d_a} -> {pairs.d_b}")
    train_idx, test_idx = np.flatnonzero(split.train), np.flatnonzero(split.test)
    n_test = len(test_idx)
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
    train = PairGram.of(pairs, train_idx)
    std = train.moments().standardised()
    maps = {"map": amap}
    if with_null:
        maps["null"] = null if null is not None else null_map(pairs, split, amap, seed=seed, std=std)
    scores, test = score_maps(pairs, test_idx, maps, solve_procrustes(std.c_ab), ks=ks, dsc_points=dsc_points,
                              seed=seed, device=device, neighbour_rows=rows)
    metrics, null_scores, p_value, n_perm = scores["map"], None, None, 0
    if with_null:
        null_scores = {k: v for k, v in scores["null"].items() if k not in MAP_FREE_KEYS}  # the latents' own
        null_r2 = null_r2_distribution(pairs, train_idx, test, std, permutations=permutations, seed=seed + 1,
                                       **amap.refit_options())
        p_value = (1 + sum(v >= metrics["r2"] for v in null_r2)) / (1 + len(null_r2))
        n_perm = len(null_r2)

    eff_a = effective_rank(std.c_aa)
    eff_b = effective_rank(train.standardised(std.a_mean, std.a_std, std.b_mean, std.b_std, centred=True)[2])
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
        "null": null_scores,
        "r2_p_value": p_value,
        "permutations": n_perm,
        "n_train": int(split.train.sum()),
        "n_test": n_test,
        "n_neighbour_test": n_nb,
        "split": split.describe(),
        "ks": list(ks),
        "warnings": notes,
    }


def null_r2_distribution(pairs, train_idx: np.ndarray, test: PairGram, std: Standardised, *, method: str,
                         lam: float, permutations: int, seed: int) -> list[float]:
    """Held-out R² of maps refitted on shuffled training pairs, one per permutation.

    Permuting target rows leaves the train statistics and C_aa unchanged, so each shuffle costs one
    product C_π = Ẑa_trainᵀ Ẑb_train[π] / n (:func:`sjalign.protocol.gram.shuffled_cross_grams`, block-wise) and
    the map M = (C_aa + λI)⁻¹ C_π (lstsq: λ = 0, the pseudoinverse when singular; Procrustes: M = Qᵀ
    of C_π). Its held-out R² follows from the test pairs' Gram G (standardised with the train
    statistics): Σ‖Ẑb − ẐaM‖² = tr G_bb − 2⟨M, G_ab⟩ + ⟨G_aa M, M⟩, no test rows held.
    Permutation ``i`` uses the generator seeded ``seed + i``, the same draw as
    :func:`sjalign.align.shuffled_map`.

    Args:
        train_idx: (n_train,) indices of the train pairs in ``pairs``.
        test: raw Gram of the test pairs (:class:`PairGram`).
        std: the train split's standardised moments.

    Returns:
        ``permutations`` R² values.
    """
    d_a = len(std.c_aa)
    stats = (std.a_mean, std.a_std, std.b_mean, std.b_std)
    g_aa, g_ab, g_bb = (c * test.n for c in test.standardised(*stats, centred=False))  # Σzzᵀ over the test pairs
    t_bb = float(np.trace(g_bb))
    total = test.n * float(np.trace(test.standardised(*stats, centred=True)[2]))
    if method != "procrustes":
        a = std.c_aa + lam * np.eye(d_a)
        try:
            if lam <= 0:
                raise np.linalg.LinAlgError
            inverse = scipy.linalg.solve(a, np.eye(d_a), assume_a="pos")
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
            inverse = np.linalg.pinv(a, rcond=1e-10, hermitian=True)
    out = []
    for c_ab in shuffled_cross_grams(pairs, train_idx, range(seed, seed + permutations), *stats):
        m = solve_procrustes(c_ab).T if method == "procrustes" else inverse @ c_ab  # (d_a, d_b): P = Ẑa M
        resid = t_bb - 2.0 * float(np.sum(m * g_ab)) + float(np.sum((g_aa @ m) * m))
        out.append(1.0 - resid / total if total > 0 else float("nan"))
    return out
