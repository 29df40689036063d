"""Alignability objective by objective (the paper's Tables 1-2 protocol, small and on the CPU).

For every pretraining objective, two encoders are trained *independently* (different seeds)
on two views of the same Fashion-MNIST states (``crop:top`` and ``crop:bottom``), each is
embedded, a ridge map A -> B is fitted on the official train split and scored on the
official test split. One row per objective: first and last epoch loss, then held-out R²,
CKA and NOS@10 (lower is better) beside the shuffled-pair null's R². A random-init row
(``--epochs 0``) is the control every trained row must beat.

Every step is a real ``sjalign`` command::

    python examples/objectives.py --out runs/objectives                        # all objectives
    python examples/objectives.py --out runs/obj --objectives ijepa,lejepa --epochs 2 --max-states 3000
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

VIEWS = {"a": "crop:top", "b": "crop:bottom"}
OBJECTIVES = ("ijepa", "lejepa", "cjepa", "lpjepa", "mae", "simclr", "ae")


def sh(*args: object) -> None:
    """Run one sjalign command, echoing it; stop if it fails."""
    cmd = [sys.executable, "-m", "sjalign", *map(str, args)]
    print("$ sjalign " + shlex.join(cmd[3:]), file=sys.stderr, flush=True)
    if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
        sys.exit(f"stopped: 'sjalign {args[0]}' failed")


def losses(run: Path) -> tuple[float | None, float | None]:
    """First and last epoch loss of a run's log.jsonl (None for an untrained control)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()] \
        if (run / "log.jsonl").exists() else []
    records = [r for r in records if "loss" in r]  # the epoch-0 record holds the evaluation only
    return (records[0]["loss"], records[-1]["loss"]) if records else (None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/objectives"))
    parser.add_argument("--objectives", default=",".join(OBJECTIVES), help="comma-separated objectives")
    parser.add_argument("--max-states", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="vit_tiny")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    n = args.max_states
    rows = []
    for objective in ["random-init", *args.objectives.split(",")]:
        t0 = time.perf_counter()
        name = objective.replace("-", "_")
        for side, view in VIEWS.items():
            run = out / f"{name}_{side}"
            seed = 0 if side == "a" else 1  # independent models: different seeds, different views
            if not (run / "checkpoint.safetensors").exists():
                sh("pretrain", "--dataset", "fashion-mnist", "--view", view, "--model", args.model,
                   "--objective", "ijepa" if objective == "random-init" else objective,
                   "--epochs", 0 if objective == "random-init" else args.epochs, "--max-states", n,
                   "--seed", seed, "-o", run, "--force")
            sh("embed", "--encoder", f"jepa:{run}", "--dataset", "fashion-mnist", "--view", view,
               "--max-states", n, "-o", out / f"{name}_{side}.safetensors", "--force")
        a, b = out / f"{name}_a.safetensors", out / f"{name}_b.safetensors"
        sh("evaluate", a, b, "-o", out / f"{name}_metrics.json", "--force")
        result = json.loads((out / f"{name}_metrics.json").read_text())
        first, last = zip(*(losses(out / f"{name}_{side}") for side in VIEWS))
        m, null = result["metrics"], result["null"]
        rows.append({"objective": objective, "first_loss": first, "last_loss": last, "r2": m["r2"], "cka": m["cka"],
                     "nos@10": m["nos@10"], "retrieval@1": m["retrieval@1"], "null_r2": null["r2"],
                     "eff_rank_a": m.get("eff_rank_a"), "eff_rank_b": m.get("eff_rank_b"),
                     "n_train": result["n_train"], "n_test": result["n_test"],
                     "seconds": round(time.perf_counter() - t0, 1)})
        (out / "objectives.json").write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows, args)


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    """Markdown table on stdout (pasted into docs/results.md)."""
    def loss(pair: tuple) -> str:
        return " / ".join("—" if v is None else f"{v:.3g}" for v in pair)

    print(f"\nA = {VIEWS['a']} → B = {VIEWS['b']}, {args.model}, {args.epochs} epoch(s), --max-states {args.max_states}, "
          f"n_train {rows[0]['n_train']}, n_test {rows[0]['n_test']}; losses are model A / model B\n")
    print("| objective | first loss | last loss | R² ↑ | CKA ↑ | NOS@10 ↓ | retrieval@1 ↑ | null R² | eff. rank A/B | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ranks = "—" if r["eff_rank_a"] is None else f"{r['eff_rank_a']:.1f} / {r['eff_rank_b']:.1f}"
        print(f"| {r['objective']} | {loss(r['first_loss'])} | {loss(r['last_loss'])} | {r['r2']:.3f} | {r['cka']:.3f} "
              f"| {r['nos@10']:.3f} | {r['retrieval@1']:.3f} | {r['null_r2']:.3f} | {ranks} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
