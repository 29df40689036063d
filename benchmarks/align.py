"""Scale of sjalign's alignment fit and neighbour metrics, each against a baseline in the same run.

Run by hand, not a test (each part writes one summary line; --json prints one JSON object):

    python benchmarks/align.py fit [--n 1000000] [--d 768] [--reps 3] [--dir /tmp] [--keep DIR]
    python benchmarks/align.py nos [--n 100000] [--d 384] [--k 10] [--reps 2]
    python benchmarks/align.py all --json
    python benchmarks/align.py memory --keep DIR [--threads 1]   # allocation peaks over fit --keep's files
    python benchmarks/align.py precision A1 B1 [A2 B2 ...]       # float32 vs float64 products on real latents

Every measurement runs in a fresh subprocess (so peak memory does not mix) and the
repetitions are interleaved (baseline, sjalign, baseline, sjalign, ...); the summary gives the
median and the spread (min-max) of the ratio sjalign / baseline over repetitions.

fit (issue 5, "Scale"): two latents files of n × d float32 with a planted map
B = ((A − μa)/σa) W*ᵀ·σb + μb + noise are written once with ``sjalign.lazy_io.write_latents_stream``
(about 3 GB each at the default size), then

* baseline: one bare ``X.T @ X`` pass in torch (float32 GEMM, all threads) over A, with A taken
  from its file as a memory-mapped tensor (``safe_open(..., "pt").get_tensor``: zero-copy, so
  the pass also pays for reading the file from the page cache). Also reported: the same product
  on an A already in memory (``compute only``) and numpy's ``X.T @ X`` (numpy detects the
  transposed pair and calls BLAS syrk, which computes one triangle: half the flops).
* sjalign: ``fit_map_streaming`` over all n pairs (every row is a train pair), ridge λ = 1e-3,
  reading both files lazily in chunks of ``--chunk-rows``, in ``--precision float32`` and
  ``float64`` and the default ``auto`` (float32 here: the planted latents are well-conditioned);
  it must compute AᵀA (syrk) and AᵀB (GEMM): 1.5× the flops of the float32 GEMM
  baseline at best, plus reading twice the bytes. The recovered map is checked against W*.
* peak memory: VmHWM − VmRSS after imports, per subprocess, against the bound
  3·d² float64 + one chunk (chunk_rows × (d_a + d_b) values of the chosen precision).

nos: NOS@k of two paired (n, d) float32 sets (a planted partial relation), sjalign's tiled
torch top-k (``sjalign.metrics.nos_at_k``, CPU) against scikit-learn
``NearestNeighbors(algorithm="brute").kneighbors()`` in both spaces plus the same overlap count;
the answers must agree (NOS value and the neighbour sets of a subsample of rows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def rss_mib() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon and RssFile of this process, MiB (from /proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


class AnonSampler:
    """Peak RssAnon (process-private memory, i.e. not the pages of mapped input files), sampled every 2 ms."""

    def __init__(self) -> None:
        import threading

        self.peak = rss_mib()["RssAnon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_mib()["RssAnon"])

    def __enter__(self) -> "AnonSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib()["RssAnon"])


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- data

def planted(n: int, d: int, seed: int = 0):
    """Chunks of (A, B) with B = ((A − μa)/σa) W*ᵀ σb + μb + 0.1·noise; returns (blocks_a, blocks_b, truth)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mu_a, sd_a = rng.uniform(-3, 3, d), rng.uniform(0.5, 2.0, d)
    mu_b, sd_b = rng.uniform(-3, 3, d), rng.uniform(0.5, 2.0, d)
    w = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)  # (d_b, d_a)
    step = 65536

    def z_block(i):
        return np.random.default_rng([seed, 1, i]).standard_normal((min(step, n - i), d), dtype=np.float32)

    def blocks_a():
        for i in range(0, n, step):
            yield z_block(i) * sd_a.astype(np.float32) + mu_a.astype(np.float32)

    def blocks_b():
        for i in range(0, n, step):
            z = z_block(i)
            noise = np.random.default_rng([seed, 2, i]).standard_normal(z.shape, dtype=np.float32)
            yield (z @ w.T + 0.1 * noise) * sd_b.astype(np.float32) + mu_b.astype(np.float32)

    return blocks_a, blocks_b, {"w": w, "mu_a": mu_a, "sd_a": sd_a, "mu_b": mu_b, "sd_b": sd_b}


def write_files(folder: Path, n: int, d: int) -> tuple[Path, Path]:
    import numpy as np

    from sjalign.lazy_io import write_latents_stream

    blocks_a, blocks_b, truth = planted(n, d)
    ids = np.arange(n, dtype=np.int64)
    meta = {"encoder": "synthetic", "dataset": "planted", "view": "a"}
    a = write_latents_stream(folder / "a.safetensors", blocks_a(), n=n, dim=d, state_ids=ids, metadata=meta)
    b = write_latents_stream(folder / "b.safetensors", blocks_b(), n=n, dim=d, state_ids=ids,
                             metadata={**meta, "view": "b"})
    np.save(folder / "truth_w.npy", truth["w"])
    return a, b


# ---------------------------------------------------------------- workers (one per subprocess)

def worker(kind: str, args: dict) -> dict:
    """Prepare (untimed), then run one measured step; returns seconds, CPU seconds and peak memory."""
    import numpy as np
    import torch  # noqa: F401  (imported before the memory baseline, as in a running program)

    from sjalign.align.streaming import blas_threads, fit_map_streaming, pair_rows
    from sjalign.lazy_io import open_latents_set
    from sjalign.metrics import nos_at_k

    out: dict = {"kind": kind}
    if kind.startswith("baseline"):
        from safetensors import safe_open

        with safe_open(args["a"], framework="pt") as f:
            x = f.get_tensor("latents")  # (n, d) float32, memory-mapped: the pass reads the file
        if kind == "baseline_compute_only":
            x = x.clone()  # already in memory when the clock starts
        elif kind == "baseline_numpy_syrk":
            x = x.numpy().copy()

        def run():
            g = x.T @ x  # torch: one GEMM; numpy: BLAS syrk (one triangle, mirrored)
            out["check"] = float(g[0, 0])
    elif kind.startswith("fit"):
        precision = kind.split("_")[1]

        def run():
            a, b = open_latents_set([args["a"]]), open_latents_set([args["b"]])
            paired = pair_rows(a, b)
            amap = fit_map_streaming(a, b, paired, np.ones(len(paired.state_ids), bool), method="ridge", lam=1e-3,
                                     chunk=args["chunk_rows"], precision=precision)
            out["amap"] = amap
            out["precision_used"] = amap.info["precision"]  # auto's choice
            out["chunk_bytes"] = args["chunk_rows"] * (a.dim + b.dim) * np.dtype(amap.info["precision"]).itemsize
            out["moment_threads"] = blas_threads()  # threads of stream_moments, each with one part's products
    elif kind.startswith("cli"):  # the whole command in-process: finiteness scan, hashes, split, fit, write
        from sjalign.cli.app import app

        precision = kind.split("_")[1]
        out_map = Path(args["a"]).parent / f"map_{precision}_{os.getpid()}.safetensors"

        def run():
            try:
                app(["fit-map", args["a"], args["b"], "-o", str(out_map), "--precision", precision, "--json",
                     "--chunk-rows", str(args["chunk_rows"])], standalone_mode=False)
            finally:
                out_map.unlink(missing_ok=True)
    elif kind.startswith("nos"):
        t, p = _nos_data(args["n"], args["d"])

        def run():
            if kind == "nos_sjalign":
                out["nos"], out["nb"] = nos_at_k(t, p, (args["k"],), device="cpu")[args["k"]], None
            else:
                out["nos"], out["nb"] = _sklearn_nos(t, p, args["k"])
    else:
        raise SystemExit(f"unknown kind {kind}")

    before = rss_mib()
    reset_hwm()
    with AnonSampler() as anon:
        start, cpu = time.perf_counter(), time.process_time()
        run()
        out["seconds"], out["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
    after = rss_mib()
    out["peak_extra_mib"] = after["VmHWM"] - before["VmRSS"]  # includes mapped pages of the input files
    out["peak_extra_anon_mib"] = anon.peak - before["RssAnon"]  # process-private memory only

    if kind.startswith("fit"):  # recovered raw-space map vs the planted one: diag(σb) W diag(1/σa)
        amap = out.pop("amap")
        raw_hat = (amap.W.astype(np.float64) / amap.a_std[None, :]) * amap.b_std[:, None]  # (d_b, d_a)
        truth = _truth_raw(np.load(Path(args["a"]).parent / "truth_w.npy"), amap.d_a)
        out["map_rel_error"] = float(np.linalg.norm(raw_hat - truth) / np.linalg.norm(truth))
        out["n_train"] = len(amap.train_state_ids)
    if kind.startswith("nos"):  # the neighbour sets of 50 sampled rows, to compare the two answers
        sub = np.random.default_rng(0).choice(args["n"], min(50, args["n"]), replace=False)
        nb = out.pop("nb")
        if nb is None:  # sjalign's own tiled arithmetic for the sampled rows (untimed)
            out["subsample_sets"] = _sjalign_sets(t, p, sub, args["k"])
        else:
            out["subsample_sets"] = [[sorted(map(int, nb[0][i])), sorted(map(int, nb[1][i]))] for i in sub]
    return out


def _truth_raw(w_true, d):
    """The planted raw-space map diag(σb) W* diag(1/σa), (d_b, d_a), recomputed from the seed."""
    import numpy as np

    rng = np.random.default_rng(0)
    rng.uniform(-3, 3, d)
    sd_a = rng.uniform(0.5, 2.0, d)
    rng.uniform(-3, 3, d)
    sd_b = rng.uniform(0.5, 2.0, d)
    return (w_true.astype(np.float64) / sd_a[None, :]) * sd_b[:, None]


def _nos_data(n: int, d: int):
    import numpy as np

    rng = np.random.default_rng(0)
    t = rng.standard_normal((n, d), dtype=np.float32)
    mix = (np.eye(d) + 0.5 * rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    p = t @ mix + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    return t, p


def _sklearn_nos(t, p, k):
    from sklearn.neighbors import NearestNeighbors

    nbs = []
    for x in (t, p):
        nbs.append(NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(return_distance=False))
    hits = sum(len(set(a) & set(b)) for a, b in zip(*nbs))
    return 1.0 - hits / (len(t) * k), nbs


def _sjalign_sets(t, p, sub, k):
    """sjalign's k-nearest sets of rows ``sub`` in both spaces: the tile code of ``knn_indices`` on those rows."""
    import torch

    from sjalign.metrics.neighbours import _smallest_k, _sq_dists

    res = [[], []]
    for j, x in enumerate((t, p)):
        xt = torch.from_numpy(x)
        d2 = _sq_dists(xt[torch.from_numpy(sub)], xt, (xt * xt).sum(1))
        d2[torch.arange(len(sub)), torch.from_numpy(sub)] = float("inf")
        res[j] = [sorted(map(int, row)) for row in _smallest_k(d2, k)]
    return [list(pair) for pair in zip(*res)]


def run_worker(kind: str, args: dict) -> dict:
    cmd = [sys.executable, str(HERE), "_worker", kind, json.dumps(args)]
    env = dict(os.environ)
    if args.get("threads"):
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args["threads"])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- drivers

def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def bench_fit(opts) -> dict:
    import shutil

    folder = Path(opts.keep) if opts.keep else Path(tempfile.mkdtemp(prefix="sjalign-bench-", dir=opts.dir))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        a, b = folder / "a.safetensors", folder / "b.safetensors"
        if not (a.exists() and b.exists()):
            free = shutil.disk_usage(folder).free
            need = 2 * opts.n * opts.d * 4 * 1.05
            if free < need:
                raise SystemExit(f"{folder}: {free / 1e9:.1f} GB free, the two files need {need / 1e9:.1f} GB")
            start = time.perf_counter()
            write_files(folder, opts.n, opts.d)
            print(f"(wrote 2 x {opts.n} x {opts.d} float32 latents to {folder} in "
                  f"{time.perf_counter() - start:.0f} s)", file=sys.stderr)
        args = {"a": str(a), "b": str(b), "chunk_rows": opts.chunk_rows, "threads": opts.threads}
        kinds = ["baseline_torch_mmap", "fit_auto", "fit_float32", "fit_float64", "baseline_compute_only",
                 "baseline_numpy_syrk"]
        if opts.cli:
            kinds += ["cli_auto", "cli_float32", "cli_float64"]
        if opts.kinds:  # a subset (the baseline always runs: every ratio is taken to it)
            kinds = ["baseline_torch_mmap", *[k for k in kinds if k in opts.kinds.split(",") and k != kinds[0]]]
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for rep in range(opts.reps):
            for kind in kinds:
                res = run_worker(kind, args)
                runs[kind].append(res)
                print(f"  rep {rep} {kind:22s} {res['seconds']:7.2f} s (cpu {res['cpu_seconds']:7.2f} s)  "
                      f"peak extra {res['peak_extra_mib']:7.0f} MiB (private {res['peak_extra_anon_mib']:6.0f} MiB)",
                      file=sys.stderr)
        base = [r["seconds"] for r in runs["baseline_torch_mmap"]]
        d = opts.d
        cpu_base = [r["cpu_seconds"] for r in runs["baseline_torch_mmap"]]
        summary = {"n": opts.n, "d": d, "chunk_rows": opts.chunk_rows, "reps": opts.reps, "threads": opts.threads,
                   "load_average": os.getloadavg(), "seconds": {}, "ratio": {}, "cpu_ratio": {}, "peak_extra_mib": {},
                   "peak_extra_anon_mib": {}}
        for kind in kinds:
            secs = [r["seconds"] for r in runs[kind]]
            summary["seconds"][kind] = spread(secs)
            summary["ratio"][kind] = spread([s / bsec for s, bsec in zip(secs, base)])
            summary["cpu_ratio"][kind] = spread([r["cpu_seconds"] / c for r, c in zip(runs[kind], cpu_base)])
            summary["peak_extra_mib"][kind] = max(r["peak_extra_mib"] for r in runs[kind])
            summary["peak_extra_anon_mib"][kind] = max(r["peak_extra_anon_mib"] for r in runs[kind])
        # O(n) arrays besides the bound: both files' int64 state ids (read from the files) and the int32
        # row numbers of the pairing (all pairs are train here, so no train-subset copies)
        summary["id_arrays_mib"] = (2 * 8 + 4) * opts.n / 2**20
        summary["auto_chose"] = runs["fit_auto"][0]["precision_used"] if "fit_auto" in runs else None
        for prec in ("auto", "float32", "float64"):
            if f"fit_{prec}" not in runs:
                continue
            r = runs[f"fit_{prec}"][0]
            summary[f"map_rel_error_{prec}"] = r["map_rel_error"]
            summary[f"memory_bound_mib_{prec}"] = (3 * d * d * 8 + r["chunk_bytes"]) / 2**20
            summary["moment_threads"] = r["moment_threads"]
        return summary
    finally:
        if not opts.keep:
            shutil.rmtree(folder, ignore_errors=True)


def bench_memory(opts) -> dict:
    """Peak numpy allocation (tracemalloc) of the streamed pass and of the solve, over files kept by ``fit --keep``."""
    import tracemalloc

    import numpy as np
    import torch  # noqa: F401  (imported before tracing starts, as in a running program)

    from sjalign.align.maps import map_from_moments
    from sjalign.align.streaming import blas_threads, pair_rows, stream_moments
    from sjalign.lazy_io import open_latents_set

    folder = Path(opts.keep or "")
    if not (folder / "a.safetensors").exists():
        raise SystemExit("memory: give --keep DIR with the files of an earlier `fit --keep DIR` run")
    tracemalloc.start()
    a, b = open_latents_set([folder / "a.safetensors"]), open_latents_set([folder / "b.safetensors"])
    paired = pair_rows(a, b)
    ids_mib = tracemalloc.get_traced_memory()[0] / 2**20
    out = {"n": a.n, "d": a.dim, "chunk_rows": opts.chunk_rows, "moment_threads": blas_threads(),
           "ids_and_rows_mib": ids_mib}
    for prec in ("float32", "float64"):
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        moms = stream_moments(a, b, paired.rows_a, paired.rows_b, chunk=opts.chunk_rows, precision=prec)
        out[f"stream_peak_mib_{prec}"] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        map_from_moments(moms[0].standardised(), paired.state_ids, method="ridge", lam=1e-3)
        out[f"solve_peak_mib_{prec}"] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
        out[f"bound_mib_{prec}"] = (3 * a.dim**2 * 8 + opts.chunk_rows * 2 * a.dim * np.dtype(prec).itemsize) / 2**20
        del moms
    return out


def bench_precision(opts) -> dict:
    """float32 against float64 chunk products, and auto's choice, on given latents pairs (real latents).

    For each pair A B (official split or the seeded 80/20 split by state id) and method: κ of what the
    fit inverts (full float64 moments; :func:`sjalign.align.streaming.conditioning`), auto's pilot κ
    and choice, ‖W₃₂ − W₆₄‖/‖W₆₄‖, |R²₃₂ − R²₆₄| on the test pairs and κ(W) of each fit.
    """
    import warnings

    import numpy as np

    from sjalign.align.pairing import pair_by_state_id
    from sjalign.align.streaming import conditioning, fit_map_streaming, pair_rows, stream_moments
    from sjalign.io import load_latents
    from sjalign.lazy_io import open_latents_set
    from sjalign.metrics import kappa, r2
    from sjalign.protocol import choose_split

    if not opts.files or len(opts.files) % 2:
        raise SystemExit("precision: give latents files in pairs, A1 B1 [A2 B2 ...]")
    rows = []
    for fa, fb in zip(opts.files[::2], opts.files[1::2]):
        a, b = open_latents_set([fa]), open_latents_set([fb])
        paired = pair_rows(a, b)
        split = choose_split(paired.as_pairs(), test_fraction=0.2, seed=0)
        mem = pair_by_state_id(load_latents(fa), load_latents(fb))  # the same ids, sorted: test rows in memory
        x_te, y_te = mem.x[split.test], mem.y[split.test]
        methods = [("ridge", 1e-3), ("lstsq", 0.0)] + ([("procrustes", 0.0)] if a.dim == b.dim else [])
        for method, lam in methods:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fits = {p: fit_map_streaming(a, b, paired, split.train, method=method, lam=lam, precision=p)
                        for p in ("auto", "float32", "float64")}
                full = stream_moments(a, b, paired.rows_a[split.train], paired.rows_b[split.train],
                                      precision="float64")[0].standardised()
            r2s = {p: r2(m.standardise_b(y_te), m.predict_standardised(x_te)) for p, m in fits.items()}
            w64 = fits["float64"].W.astype(np.float64)
            rows.append({"a": Path(fa).name, "b": Path(fb).name, "method": method, "lambda": lam,
                         "kappa": conditioning(full, method, lam),
                         "kappa_pilot": fits["auto"].info["precision_auto"]["kappa_pilot"],
                         "auto_chose": fits["auto"].info["precision"],
                         "w_rel_diff_float32": float(np.linalg.norm(fits["float32"].W - w64) / np.linalg.norm(w64)),
                         "r2_float64": r2s["float64"], "r2_abs_diff_float32": abs(r2s["float32"] - r2s["float64"]),
                         "r2_abs_diff_auto": abs(r2s["auto"] - r2s["float64"]),
                         "kappa_w": {p: kappa(m.W) for p, m in fits.items()}})
            print(f"  {rows[-1]}", file=sys.stderr)
    return {"pairs": rows}


def bench_nos(opts) -> dict:
    args = {"n": opts.n, "d": opts.d, "k": opts.k, "threads": opts.threads}
    runs: dict[str, list[dict]] = {"nos_sklearn": [], "nos_sjalign": []}
    for rep in range(opts.reps):
        for kind in runs:
            res = run_worker(kind, args)
            runs[kind].append(res)
            print(f"  rep {rep} {kind:12s} {res['seconds']:7.2f} s (cpu {res['cpu_seconds']:7.2f} s)  NOS@{opts.k} {res['nos']:.6f}  "
                  f"peak extra {res['peak_extra_mib']:6.0f} MiB", file=sys.stderr)
    ours, ref = runs["nos_sjalign"], runs["nos_sklearn"]
    same_sets = sum(a == b for a, b in zip(ours[0]["subsample_sets"], ref[0]["subsample_sets"]))
    return {
        "n": opts.n, "d": opts.d, "k": opts.k, "reps": opts.reps, "threads": opts.threads,
        "load_average": os.getloadavg(),
        "cpu_ratio": spread([o["cpu_seconds"] / r["cpu_seconds"] for o, r in zip(ours, ref)]),
        "seconds": {k: spread([r["seconds"] for r in v]) for k, v in runs.items()},
        "ratio": spread([o["seconds"] / r["seconds"] for o, r in zip(ours, ref)]),
        "peak_extra_mib": {k: max(r["peak_extra_mib"] for r in v) for k, v in runs.items()},
        "peak_extra_anon_mib": {k: max(r["peak_extra_anon_mib"] for r in v) for k, v in runs.items()},
        "nos": {"sjalign": ours[0]["nos"], "sklearn": ref[0]["nos"]},
        "subsample_rows_with_identical_sets": f"{same_sets}/{len(ours[0]['subsample_sets'])}",
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        print(json.dumps(worker(sys.argv[2], json.loads(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["fit", "nos", "memory", "precision", "all"])
    ap.add_argument("files", nargs="*", help="precision: latents files in pairs, A1 B1 [A2 B2 ...]")
    ap.add_argument("--n", type=int, default=None, help="rows (default 1,000,000 for fit, 100,000 for nos)")
    ap.add_argument("--d", type=int, default=None, help="dimension (default 768 for fit, 384 for nos)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3 for fit, 2 for nos)")
    ap.add_argument("--chunk-rows", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=0,
                    help="BLAS/OpenMP threads of the measured processes (default: the libraries' own choice)")
    ap.add_argument("--dir", default=None, help="where the fit benchmark writes its temporary files")
    ap.add_argument("--keep", default=None, help="write (or reuse) the fit files in this folder and keep them")
    ap.add_argument("--cli", action="store_true", help="also time the whole `sjalign fit-map` command (in-process)")
    ap.add_argument("--kinds", default=None, help="fit: only these steps, comma-separated (e.g. fit_auto,cli_auto); "
                    "the summary line needs all of them")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    opts = ap.parse_args()
    result = {}
    say = (lambda line: print(line, file=sys.stderr)) if opts.json else print  # --json: stdout holds only JSON
    if opts.what in ("fit", "all"):
        o = argparse.Namespace(**{**vars(opts), "n": opts.n or 1_000_000, "d": opts.d or 768, "reps": opts.reps or 3})
        r = result["fit"] = bench_fit(o)
        sec, rat, cpu = r["seconds"], r["ratio"], r["cpu_ratio"]
        extra = "".join(f"; `sjalign fit-map` {k[4:]} {sec[k]['median']:.2f} s (ratio {rat[k]['median']:.2f})"
                        for k in sec if k.startswith("cli"))
        if not opts.kinds:
            say(f"fit n={r['n']} d={r['d']} threads={r['threads'] or 'default'}: baseline torch X.T@X from the file "
                  f"{sec['baseline_torch_mmap']['median']:.2f} s (in memory {sec['baseline_compute_only']['median']:.2f} s, "
                  f"numpy syrk {sec['baseline_numpy_syrk']['median']:.2f} s); fit auto (chose {r['auto_chose']}) "
                  f"{sec['fit_auto']['median']:.2f} s -> ratio {rat['fit_auto']['median']:.2f} "
                  f"(spread {rat['fit_auto']['min']:.2f}-{rat['fit_auto']['max']:.2f}; target <= 1.6), float32 "
                  f"{sec['fit_float32']['median']:.2f} s -> ratio {rat['fit_float32']['median']:.2f} "
                  f"(spread {rat['fit_float32']['min']:.2f}-{rat['fit_float32']['max']:.2f}, cpu-time ratio "
                  f"{cpu['fit_float32']['median']:.2f}; target <= 1.5), float64 {sec['fit_float64']['median']:.2f} s -> "
                  f"ratio {rat['fit_float64']['median']:.2f} (cpu {cpu['fit_float64']['median']:.2f}){extra}; "
                  f"peak extra private memory float32 {r['peak_extra_anon_mib']['fit_float32']:.0f} MiB (bound "
                  f"{r['memory_bound_mib_float32']:.0f} + ids {r['id_arrays_mib']:.0f}), float64 "
                  f"{r['peak_extra_anon_mib']['fit_float64']:.0f} MiB (bound {r['memory_bound_mib_float64']:.0f} + ids), "
                  f"with mapped file pages {r['peak_extra_mib']['fit_float32']:.0f} / {r['peak_extra_mib']['fit_float64']:.0f} "
                  f"MiB; baseline {r['peak_extra_mib']['baseline_torch_mmap']:.0f} MiB; "
                  f"planted map recovered to {r['map_rel_error_auto']:.1e} / {r['map_rel_error_float32']:.1e} / "
                  f"{r['map_rel_error_float64']:.1e} (auto / float32 / float64); "
                  f"{r['moment_threads']} moment thread(s); "
                  f"load average {r['load_average'][0]:.1f}")
        else:
            say(f"fit n={r['n']} d={r['d']}: " + "; ".join(
                f"{k} {sec[k]['median']:.2f} s, ratio {rat[k]['median']:.2f} ({rat[k]['min']:.2f}-{rat[k]['max']:.2f})"
                for k in sec) + f"; auto chose {r['auto_chose']}; load average {r['load_average'][0]:.1f}")
    if opts.what in ("nos", "all"):
        o = argparse.Namespace(**{**vars(opts), "n": opts.n or 100_000, "d": opts.d or 384, "reps": opts.reps or 2})
        r = result["nos"] = bench_nos(o)
        say(f"nos n={r['n']} d={r['d']} k={r['k']} threads={r['threads'] or 'default'}: sjalign "
              f"{r['seconds']['nos_sjalign']['median']:.1f} s vs sklearn brute {r['seconds']['nos_sklearn']['median']:.1f} s "
              f"-> ratio {r['ratio']['median']:.2f} (spread {r['ratio']['min']:.2f}-{r['ratio']['max']:.2f}, cpu-time "
              f"ratio {r['cpu_ratio']['median']:.2f}; target < 1); peak extra memory "
              f"{r['peak_extra_mib']['nos_sjalign']:.0f} MiB (sklearn {r['peak_extra_mib']['nos_sklearn']:.0f}; "
              f"target <= 1024); NOS@{r['k']} {r['nos']['sjalign']:.6f} vs {r['nos']['sklearn']:.6f}, "
              f"identical neighbour sets in {r['subsample_rows_with_identical_sets']} sampled rows; "
              f"load average {r['load_average'][0]:.1f}")
    if opts.what == "precision":
        r = result["precision"] = bench_precision(opts)
        say("| A -> B | method | κ | pilot κ | auto | ‖W₃₂ − W₆₄‖/‖W₆₄‖ | R² (float64) | |ΔR²| float32 | κ(W) float64 "
            "| κ(W) float32 | κ(W) auto |")
        say("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in r["pairs"]:
            kw = row["kappa_w"]
            say(f"| {row['a']} -> {row['b']} | {row['method']} | {row['kappa']:.2g} | {row['kappa_pilot']:.2g} | "
                f"{row['auto_chose']} | {row['w_rel_diff_float32']:.1e} | {row['r2_float64']:.4f} | "
                f"{row['r2_abs_diff_float32']:.1e} | {kw['float64']:.2g} | {kw['float32']:.2g} | {kw['auto']:.2g} |")
    if opts.what == "memory":
        if opts.threads:  # before numpy loads its BLAS (this process measures, no subprocess)
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = str(opts.threads)
        r = result["memory"] = bench_memory(opts)
        say(f"memory n={r['n']} d={r['d']} chunk={r['chunk_rows']} threads={r['moment_threads']}: ids and row numbers "
            f"{r['ids_and_rows_mib']:.1f} MiB; streamed pass peak {r['stream_peak_mib_float32']:.1f} MiB float32 / "
            f"{r['stream_peak_mib_float64']:.1f} MiB float64 (bound 3·d² float64 + one chunk: "
            f"{r['bound_mib_float32']:.1f} / {r['bound_mib_float64']:.1f}); solve peak "
            f"{r['solve_peak_mib_float32']:.1f} MiB")
    if opts.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
