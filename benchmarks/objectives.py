"""Does each objective learn? Its exported encoder against its own random init and raw pixels (run by hand).

    python benchmarks/objectives.py --out runs/bench [--objectives ijepa,lejepa,...] [--max-states 10000]
                                    [--seed 0] [--view identity] [--extra "--epochs 2"]

For every objective X, as a user would, with real ``sjalign`` commands:

1. ``sjalign pretrain --objective X --max-states N --seed S -o OUT/X`` with X's recipe defaults
   (timed: wall seconds and the trainer's training FLOPs);
2. ``sjalign pretrain --objective X --epochs 0`` (the same seed: the trained run's epoch-0
   weights), and ``sjalign embed --encoder jepa:RUN`` of both runs and of ``--encoder pixels``;
3. on the latents' official split (``--max-states 10000``: 8,572 train / 1,428 test), the online
   evaluation's figures (:func:`sjalign.jepa.monitor.score_latents`): linear-probe accuracy
   (scikit-learn logistic regression on train-standardised latents), kNN accuracy (k = 20,
   cosine, DINO's weighted vote), RankMe and the participation ratio of the test latents.

Prints a Markdown table objective × (epoch-0 probe, final probe, Δ, kNN at epoch 0 and final,
RankMe at epoch 0 and final, participation ratio, wall time, FLOPs) with the raw-pixel row, and
writes it with every figure to OUT/table.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

OBJECTIVES = ("ijepa", "lejepa", "cjepa", "lpjepa", "mae", "simclr", "ae")


def sh(*args: object) -> float:
    """Run one sjalign command (echoed), return its wall seconds; stop the benchmark if it fails."""
    cmd = [sys.executable, "-m", "sjalign", *map(str, args)]
    print("$ sjalign " + shlex.join(cmd[3:]), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
        sys.exit(f"stopped: 'sjalign {args[0]}' failed")
    return time.perf_counter() - t0


def score(path: Path) -> dict:
    """The online evaluation's figures of a latents file on its official split."""
    from sjalign.io import load_latents
    from sjalign.jepa.monitor import score_latents

    lat = load_latents(path)
    train, test = lat.split == 0, lat.split == 1
    return score_latents(lat.latents[train], lat.labels[train], lat.latents[test], lat.labels[test])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--max-states", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--view", default="identity")
    parser.add_argument("--extra", default="", help="more pretrain options for every trained run, e.g. '--epochs 2'")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    common = ["--max-states", args.max_states, "--view", args.view]
    results: dict = {}
    results_path = out / "results.json"
    if results_path.exists():  # a rerun continues where an interrupted one stopped
        results = json.loads(results_path.read_text())
    if "pixels" not in results:
        sh("embed", "--encoder", "pixels", *common, "-o", out / "pixels.safetensors", "--force")
        results["pixels"] = {"final": score(out / "pixels.safetensors")}
    for objective in args.objectives.split(","):
        if objective in results:
            continue
        run, init = out / objective, out / f"{objective}-init"
        seconds = sh("pretrain", "--objective", objective, *common, "--seed", args.seed, "--eval-every", 0,
                     *shlex.split(args.extra), "-o", run, "--force")
        sh("pretrain", "--objective", objective, *common, "--seed", args.seed, *shlex.split(args.extra),
           "--epochs", 0, "--eval-every", 0, "-o", init, "--force")  # the extras too: --input-norm shapes the init
        for r in (run, init):
            sh("embed", "--encoder", f"jepa:{r}", *common, "-o", f"{r}.safetensors", "--force")
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
        config = json.loads((run / "config.json").read_text())
        results[objective] = {"init": score(Path(f"{init}.safetensors")), "final": score(Path(f"{run}.safetensors")),
                              "seconds": round(seconds, 1), "flops": log[-1]["flops"], "epochs": config["epochs"],
                              "lr": config["lr"], "batch_size": config["batch_size"]}
        results_path.write_text(json.dumps(results, indent=2))
    results_path.write_text(json.dumps(results, indent=2))
    table = render(results)
    (out / "table.md").write_text(table + "\n")
    print(table)


def render(results: dict) -> str:
    """The Markdown table of :func:`main`'s results."""
    rows = ["| latents | probe, epoch 0 | probe, final | Δ probe | kNN, epoch 0 | kNN, final | RankMe, epoch 0 "
            "| RankMe, final | PR, final | epochs | wall s | train FLOPs |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    px = results["pixels"]["final"]
    rows.append(f"| raw pixels | | {px['probe_acc']:.3f} | | | {px['knn_acc']:.3f} | | {px['rankme']:.1f} "
                f"| {px['participation_ratio']:.1f} | | | |")
    for name, r in results.items():
        if name == "pixels":
            continue
        a, b = r["init"], r["final"]
        rows.append(f"| `{name}` | {a['probe_acc']:.3f} | {b['probe_acc']:.3f} | {b['probe_acc'] - a['probe_acc']:+.3f} "
                    f"| {a['knn_acc']:.3f} | {b['knn_acc']:.3f} | {a['rankme']:.1f} | {b['rankme']:.1f} "
                    f"| {b['participation_ratio']:.1f} | {r['epochs']} | {r['seconds']:.0f} | {r['flops']:.2e} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
