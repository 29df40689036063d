"""The Social-JEPA demo on real Fashion-MNIST: do two independently trained JEPAs share one latent space?

Two I-JEPA encoders are trained *independently* on two views of the same states that
share few pixels (``crop:top`` keeps rows 0-15, ``crop:bottom`` rows 12-27), each is
embedded, a ridge map A -> B is fitted on the official train split and scored on the
official test split beside three controls: the shuffled-pair null, raw pixels of the two
views, and randomly initialised encoders of the same architecture. Finally a linear probe
trained on A is moved to B through the map with zero gradient steps.

Every step is a real ``sjalign`` command (printed before it runs); every artifact lands
under ``--out``::

    python examples/demo.py --out runs/demo            # about 7 minutes on 2 CPU cores
    python examples/demo.py --out runs/big --max-states 70000 --epochs 20   # the full dataset
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
SUMMARY_KEYS = ("r2", "cka", "dsc", "nos@10", "retrieval@1", "kappa")


def sh(*args: object, capture: bool = False) -> str:
    """Run one sjalign command, echoing it; stop the demo if it fails."""
    cmd = [sys.executable, "-m", "sjalign", *map(str, args)]
    print("\n$ sjalign " + shlex.join(cmd[3:]), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True)
    if proc.returncode != 0:
        sys.exit(f"demo stopped: 'sjalign {args[0]}' exited with {proc.returncode}")
    return proc.stdout if capture else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (must not exist or be empty)")
    parser.add_argument("--max-states", type=int, default=10000, help="Fashion-MNIST states used (train and test in proportion)")
    parser.add_argument("--epochs", type=int, default=4, help="pretraining epochs per encoder")
    parser.add_argument("--model", default="vit_tiny", help="ViT preset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        sys.exit(f"demo stopped: {out} already holds files; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n = args.max_states

    for side, view in VIEWS.items():
        seed = args.seed + (0 if side == "a" else 1)  # independent models: different seeds, different views
        sh("pretrain", "--dataset", "fashion-mnist", "--view", view, "--model", args.model, "--epochs", args.epochs,
           "--max-states", n, "--seed", seed, "-o", out / f"jepa_{side}")
        sh("pretrain", "--dataset", "fashion-mnist", "--view", view, "--model", args.model, "--epochs", 0,
           "--max-states", n, "--seed", seed + 100, "-o", out / f"random_{side}")
        for kind in ("jepa", "random"):
            sh("embed", "--encoder", f"jepa:{out / f'{kind}_{side}'}", "--dataset", "fashion-mnist", "--view", view,
               "--max-states", n, "-o", out / f"{kind}_{side}.safetensors")
        sh("embed", "--encoder", "pixels", "--dataset", "fashion-mnist", "--view", view, "--max-states", n,
           "-o", out / f"pixels_{side}.safetensors")

    results = {}
    for kind in ("jepa", "pixels", "random"):
        a, b = out / f"{kind}_a.safetensors", out / f"{kind}_b.safetensors"
        sh("fit-map", a, b, "-o", out / f"map_{kind}.safetensors")
        sh("evaluate", a, b, "--map", out / f"map_{kind}.safetensors", "-o", out / f"metrics_{kind}.json")
        results[kind] = json.loads((out / f"metrics_{kind}.json").read_text())
    probe = json.loads(sh("transfer-probe", out / "jepa_a.safetensors", out / "jepa_b.safetensors", "--map",
                          out / "map_jepa.safetensors", "-o", out / "probe_a_to_b.safetensors", "--json",
                          capture=True))
    seconds = time.perf_counter() - t0

    summary = {"views": VIEWS, "max_states": n, "epochs": args.epochs, "model": args.model, "seconds": seconds,
               "n_train": results["jepa"]["n_train"], "n_test": results["jepa"]["n_test"],
               "jepa": results["jepa"]["metrics"], "null": results["jepa"]["null"],
               "pixels": results["pixels"]["metrics"], "random_init": results["random"]["metrics"],
               "probe": probe}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)


def print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"A = {s['views']['a']}  →  B = {s['views']['b']}   (held-out Fashion-MNIST states, "
                        f"n_train = {s['n_train']}, n_test = {s['n_test']})")
    table.add_column("")
    for key in SUMMARY_KEYS:
        table.add_column(key + (" ↓" if key.startswith(("nos", "kappa")) else " ↑"), justify="right")
    for name, label in (("jepa", "I-JEPA"), ("null", "null"), ("pixels", "pixels"), ("random_init", "random ViT")):
        table.add_row(label, *(f"{s[name][k]:.3g}" if s[name].get(k) is not None else "—" for k in SUMMARY_KEYS))
    console = Console(stderr=False, emoji=False)
    console.print(table)
    console.print("null = the same map fitted on shuffled training pairs; pixels = raw pixels of the two views; "
                  "random ViT = the same architecture, untrained (--epochs 0)")
    p = s["probe"]
    console.print(f"probe trained on A, moved to B with 0 gradient steps: {p['transferred_acc']:.3f} "
                  f"(on A {p['source_acc']:.3f}, trained on B {p['target_acc']:.3f}, A-probe without map "
                  f"{'—' if p['a_probe_acc'] is None else format(p['a_probe_acc'], '.3f')}, chance {p['chance']:.3f})")
    console.print(f"demo finished in {s['seconds'] / 60:.1f} min; artifacts and summary.json are in the output folder")


if __name__ == "__main__":
    main()
