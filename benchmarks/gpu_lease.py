"""Every GPU-only figure of the project in one call of a lent GPU (run by hand, not a test).

    PYTHONUNBUFFERED=1 python benchmarks/gpu_lease.py --out $OUT [--deadline 480] [--smoke]

A lent GPU comes for minutes, once; this script spends them in one prepared call and writes
what it measured under ``--out`` (``lease.json`` with every figure, ``lease.log``, ``runs.tgz``
with each training run's ``config.json`` and ``log.jsonl``). Phases, each guarded by the deadline
(seconds from the start; a phase that would pass it is cut, its partial figures kept):

1. the environment (GPU, torch) and the CUDA tests (``pytest -m gpu``);
2. ``benchmarks/pretrain.py`` on CUDA: vit_tiny at 28 px and ViT-S/16 at 224 px, bf16, eager and
   ``torch.compile`` — sjalign's trainer against the plain I-JEPA loop and the naive fp32 loop,
   and the trainer's FLOP rate against a bf16 GEMM measured in the same run;
3. training runs, all at once (one process each, ``OMP_NUM_THREADS=1``):
   * the CPU recipes and variants of them on 10,000 Fashion-MNIST states (fp32, the 2-core recipe's
     numerics), each evaluated at epoch 0 and at its end (online evaluation: probe, kNN, RankMe);
   * every objective on the full 60,000 training images (vit_tiny, bf16, ``--epochs 100``, batch
     1,024, evaluated every 25 epochs) until the deadline stops them: the log keeps every
     finished epoch.

``--smoke`` runs the same code on the CPU with tiny sizes (to check the script, not to measure).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
T0 = time.monotonic()

# (name, pretrain options): the 2-core recipes (10,000 states) and variants that stay within
# 20 CPU-minutes per model at the measured CPU epoch times (ijepa ~33 s, cjepa ~54 s). Fifth
# session: I-JEPA's random resized crop (crop_scale, the reference's 0.3-1) against no crop.
# (The fourth session's grid, lpjepa and lejepa variants, is recorded in docs/results.md.)
RECIPE_GRID = [
    ("ijepa-crop0.3", "--objective ijepa --crop-scale 0.3,1"),
    ("ijepa-nocrop", "--objective ijepa --crop-scale 1,1"),
    ("ijepa-crop0.5", "--objective ijepa --crop-scale 0.5,1"),
    ("ijepa-crop0.3-lr5e-4", "--objective ijepa --crop-scale 0.3,1 --lr 5e-4"),
    ("cjepa-crop0.3", "--objective cjepa --crop-scale 0.3,1"),
    ("cjepa-nocrop", "--objective cjepa --crop-scale 1,1"),
    ("cjepa-crop0.5", "--objective cjepa --crop-scale 0.5,1"),
    ("cjepa-crop0.3-lr5e-4", "--objective cjepa --crop-scale 0.3,1 --lr 5e-4"),
]
# The full 60,000 training images, every objective, vit_tiny, bf16, 100 epochs. A batch of 1,024
# (58 steps per epoch) so that a run fits the lease: at the recipes' 128 a vit_tiny step is bound
# by the host (about 25 ms whatever the batch), so 100 epochs would take 20 minutes. Each
# recipe's learning rate is scaled by sqrt(1024 / 128) and capped at 2e-3; warm-up 10 epochs.
FULL_OBJECTIVES = ("ijepa", "lejepa", "cjepa", "lpjepa", "mae", "simclr", "ae")
FULL_BATCH = 1024


def full_lr(objective: str) -> float:
    """The recipe's learning rate at batch 128, scaled by sqrt(FULL_BATCH / 128), at most 2e-3."""
    from sjalign.jepa import PretrainConfig

    return min(PretrainConfig(objective=objective).lr * (FULL_BATCH / 128) ** 0.5, 2e-3)


def left() -> float:
    return ARGS.deadline - (time.monotonic() - T0)


def log(msg: str) -> None:
    line = f"[{time.monotonic() - T0:6.1f}s] {msg}"
    print(line, flush=True)
    with open(ARGS.out / "lease.log", "a") as f:
        f.write(line + "\n")


def run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str]:
    """Run a command with a timeout; (return code or 124, its output)."""
    log("$ " + shlex.join(cmd))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1), cwd=ROOT,
                           env={**os.environ, **(env or {})})
        out = p.stdout + p.stderr
        code = p.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        code = 124
    with open(ARGS.out / "lease.log", "a") as f:
        f.write(out + f"\n(exit {code})\n")
    return code, out


def environment(results: dict) -> None:
    import torch

    results["env"] = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                      "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                      "cpus": os.cpu_count()}
    log(f"environment: {results['env']}")
    if not ARGS.smoke and not ARGS.no_tests:
        code, out = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"],
                        timeout=60)
        results["gpu_tests"] = {"exit": code, "tail": out.strip().splitlines()[-3:]}
        log(f"gpu tests: exit {code}: {results['gpu_tests']['tail']}")


def throughput(results: dict) -> None:
    device = "cpu" if ARGS.smoke else "cuda"
    cases = [("vit_tiny", ["--n", "16384", "--batch-size", "128"], []),
             ("vit_small", ["--n", "1536", "--batch-size", "128"], []),
             ("vit_tiny", ["--n", "16384", "--batch-size", "128"], ["--compile"]),
             ("vit_small", ["--n", "1536", "--batch-size", "128"], ["--compile"])]
    cases = [case for case in cases if case[0] in ARGS.models.split(",")]
    if ARGS.smoke:
        cases = [("vit_tiny", ["--n", "256", "--batch-size", "64"], [])]
    results["throughput"] = []
    phase_end = ARGS.deadline * 0.5  # the training phase gets the other half
    for model, size, extra in cases:
        budget = phase_end - (time.monotonic() - T0)
        if budget < 30:
            log(f"throughput {model} {extra}: skipped, {budget:.0f} s left in the phase")
            continue
        cmd = [sys.executable, "benchmarks/pretrain.py", "--device", device, "--model", model, *size,
               "--epochs", "3", "--reps", "2", "--no-progress", *extra]
        code, out = run(cmd, timeout=min(100, budget))
        results["throughput"].append({"model": model, "options": size + extra, "exit": code,
                                      "lines": [ln for ln in out.splitlines() if ln.strip()][-12:]})
        log("\n".join(results["throughput"][-1]["lines"][-8:]))


def training(results: dict) -> None:
    runs_dir = ARGS.runs
    runs_dir.mkdir(parents=True, exist_ok=True)
    device = "cpu" if ARGS.smoke else "cuda"
    jobs = []
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    states = "600" if ARGS.smoke else "10000"
    for name, options in RECIPE_GRID:
        opts = shlex.split(options)
        epochs = _epochs_of(opts)
        if ARGS.smoke:
            opts = [o for o in opts] + ["--epochs", "1"]
            epochs = 1
        cmd = [sys.executable, "-m", "sjalign", "pretrain", *opts, "--max-states", states, "--seed", "0",
               "--device", device, "--eval-every", str(epochs), "--json", "-o", str(runs_dir / name), "--force"]
        jobs.append((f"grid/{name}", cmd))
    for objective in FULL_OBJECTIVES:
        name = f"full-{objective}"
        epochs, every, extra = ("1", "1", ["--max-states", "700", "--batch-size", "64"]) if ARGS.smoke else \
            ("100", "25", ["--batch-size", str(FULL_BATCH), "--warmup-epochs", "10"])
        cmd = [sys.executable, "-m", "sjalign", "pretrain", "--objective", objective, *extra, "--seed", "0",
               "--lr", f"{full_lr(objective):.3g}", "--device", device,
               "--precision", "fp32" if ARGS.smoke else "bf16", "--epochs", epochs,
               "--eval-every", every, "--json", "-o", str(runs_dir / name), "--force"]
        jobs.append((name, cmd))
    procs = []
    for name, cmd in jobs:
        log("& " + shlex.join(cmd))
        out = open(runs_dir / f"{name.replace('/', '_')}.out", "w")
        procs.append((name, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                             env={**os.environ, **env}), out))
    while any(p.poll() is None for _, p, _ in procs) and left() > 25:
        time.sleep(5)
    for name, p, out in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
            log(f"{name}: stopped by the deadline")
        out.close()
    results["training"] = {}
    for name, p, _ in procs:
        run_dir = runs_dir / name.split("/")[-1]
        text = (runs_dir / f"{name.replace('/', '_')}.out").read_text()
        summary = None
        try:
            summary = json.loads(text[text.index("{"):])
        except ValueError:
            pass
        records = []
        if (run_dir / "log.jsonl").exists():
            records = [json.loads(ln) for ln in (run_dir / "log.jsonl").read_text().splitlines() if ln.strip()]
        evals = [{"epoch": r["epoch"], "flops": r.get("flops"), **r["eval"]} for r in records if "eval" in r]
        results["training"][name] = {
            "exit": p.returncode, "epochs_done": max((r["epoch"] for r in records), default=None),
            "seconds": summary["seconds"] if summary else None, "img_per_s": summary["img_per_s"] if summary else None,
            "evals": evals, "tail": text.strip().splitlines()[-2:] if summary is None else None}
        first, last = (evals[0], evals[-1]) if evals else ({}, {})
        log(f"{name}: exit {p.returncode}, epoch {results['training'][name]['epochs_done']}, "
            f"probe {first.get('probe_acc')} -> {last.get('probe_acc')}, RankMe {first.get('rankme')} -> "
            f"{last.get('rankme')}, kNN {last.get('knn_acc')}")
    with tarfile.open(ARGS.out / "runs.tgz", "w:gz") as tar:
        for path in sorted(runs_dir.glob("*/")):
            for f in ("config.json", "log.jsonl"):
                if (path / f).exists():
                    tar.add(path / f, arcname=f"{path.name}/{f}")
        for path in sorted(runs_dir.glob("*.out")):
            tar.add(path, arcname=path.name)


def _epochs_of(opts: list[str]) -> int:
    if "--epochs" in opts:
        return int(opts[opts.index("--epochs") + 1])
    from sjalign.jepa import PretrainConfig

    return PretrainConfig(objective=opts[opts.index("--objective") + 1]).epochs


def main() -> None:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--deadline", type=float, default=470, help="seconds from the start for the whole script")
    ap.add_argument("--runs", type=Path, default=Path("/tmp/lease_runs"), help="the training runs' folders")
    ap.add_argument("--models", default="vit_tiny,vit_small", help="the throughput phase's models")
    ap.add_argument("--no-tests", action="store_true", help="skip the CUDA tests")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: check the script")
    ARGS = ap.parse_args()
    ARGS.out.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    results: dict = {}
    for phase in (environment, throughput, training):
        try:
            phase(results)
        except Exception as exc:  # noqa: BLE001 - one phase's failure must not lose the others' figures
            log(f"{phase.__name__} failed: {type(exc).__name__}: {exc}")
        (ARGS.out / "lease.json").write_text(json.dumps(results, indent=1))
    log("done")


ARGS: argparse.Namespace
if __name__ == "__main__":
    main()
