"""The Social-JEPA demo on real Fashion-MNIST: do two independently trained JEPAs share one latent space?

Two LeJEPA encoders (the objective that learns at this budget, README "Does it learn?") are
trained *independently* (different seeds, no shared parameters) on two views of the same states
that share **no pixel**: ``crop:top:0.5`` keeps rows 0-13, ``crop:bottom:0.5`` rows 14-27. Each is
embedded, a ridge map A -> B is fitted on the official train split and scored on the official
test split beside four controls: the shuffled-pair null, raw pixels of the two views, and
untrained encoders of the same architecture, both with the trained models' own seeds (their
epoch-0 weights) and with other seeds. A linear probe trained on A is moved to B through the map
with zero gradient steps, for the trained and for the untrained pair.

Every step is a real ``sjalign`` command, printed before it runs and run by the command line's own
entry point in this one process (as 24 separate processes, each starting Python and torch and loading
the data again, the same demo took 10.8 minutes instead of 7.5, with the same results); every artifact
lands under ``--out``::

    python examples/demo.py --out runs/demo            # about 7.5 minutes on 2 CPU cores
    python examples/demo.py --out runs/big --max-states 70000 --epochs 20 --num-views 4   # the full dataset
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import time
from pathlib import Path

VIEWS = {"a": "crop:top:0.5", "b": "crop:bottom:0.5"}
SUMMARY_KEYS = ("r2", "cka", "dsc", "nos@10", "retrieval@1", "kappa")
ROWS = (("trained", "LeJEPA, trained"), ("null", "shuffled-pair null"), ("pixels", "raw pixels"),
        ("same_seed", "untrained, same seeds"), ("other_seed", "untrained, other seeds"))


def sh(*args: object, capture: bool = False) -> str:
    """Run one sjalign command through the CLI's entry point, echoing it; stop the demo if it fails.

    ``capture``: return what the command wrote to stdout (its ``--json`` object) instead of showing it.
    """
    from sjalign.cli.app import app

    argv = list(map(str, args))
    print("\n$ sjalign " + shlex.join(argv), file=sys.stderr, flush=True)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout) if capture else contextlib.nullcontext():
        code = app(argv, prog_name="sjalign", standalone_mode=False)
    if code not in (None, 0):
        sys.exit(f"demo stopped: 'sjalign {argv[0]}' exited with {code}")
    return stdout.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (must not exist or be empty)")
    parser.add_argument("--max-states", type=int, default=8000, help="Fashion-MNIST states used (train and test in proportion)")
    parser.add_argument("--epochs", type=int, default=2, help="pretraining epochs per encoder")
    parser.add_argument("--num-views", type=int, default=2, help="LeJEPA's augmented views per image (its recipe: 2, for 14 epochs)")
    parser.add_argument("--model", default="vit_tiny", help="ViT preset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        sys.exit(f"demo stopped: {out} already holds files; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n = args.max_states
    data = ("--dataset", "fashion-mnist", "--max-states", n)

    for side, view in VIEWS.items():
        seed = args.seed + (0 if side == "a" else 1)  # independent models: different seeds, different views
        common = ("pretrain", *data, "--view", view, "--model", args.model, "--objective", "lejepa")
        sh(*common, "--num-views", args.num_views, "--epochs", args.epochs, "--seed", seed,
           "--eval-every", args.epochs, "-o", out / f"trained_{side}")  # scored at epoch 0 and at the end
        sh(*common, "--epochs", 0, "--seed", seed, "--eval-every", 0, "-o", out / f"same_seed_{side}")
        sh(*common, "--epochs", 0, "--seed", seed + 100, "--eval-every", 0, "-o", out / f"other_seed_{side}")
        for kind in ("trained", "same_seed", "other_seed"):
            sh("embed", "--encoder", f"jepa:{out / f'{kind}_{side}'}", *data, "--view", view,
               "-o", out / f"{kind}_{side}.safetensors")
        sh("embed", "--encoder", "pixels", *data, "--view", view, "-o", out / f"pixels_{side}.safetensors")

    results, probes = {}, {}
    for kind in ("trained", "pixels", "same_seed", "other_seed"):
        a, b = out / f"{kind}_a.safetensors", out / f"{kind}_b.safetensors"
        sh("fit-map", a, b, "-o", out / f"map_{kind}.safetensors")
        sh("evaluate", a, b, "--map", out / f"map_{kind}.safetensors", "-o", out / f"metrics_{kind}.json")
        results[kind] = json.loads((out / f"metrics_{kind}.json").read_text())
        if kind in ("trained", "same_seed"):
            probes[kind] = json.loads(sh("transfer-probe", a, b, "--map", out / f"map_{kind}.safetensors",
                                         "-o", out / f"probe_{kind}.safetensors", "--json", capture=True))
    seconds = time.perf_counter() - t0

    online = {side: [r["eval"] for r in map(json.loads, (out / f"trained_{side}" / "log.jsonl").read_text().splitlines())
                     if "eval" in r] for side in VIEWS}
    summary = {"views": VIEWS, "max_states": n, "epochs": args.epochs, "num_views": args.num_views,
               "objective": "lejepa", "model": args.model, "seconds": seconds,
               "n_train": results["trained"]["n_train"], "n_test": results["trained"]["n_test"],
               "trained": results["trained"]["metrics"], "null": results["trained"]["null"],
               "pixels": results["pixels"]["metrics"], "same_seed": results["same_seed"]["metrics"],
               "other_seed": results["other_seed"]["metrics"], "probe": probes, "online_eval": online}
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
    for name, label in ROWS:
        table.add_row(label, *(f"{s[name][k]:.3g}" if s[name].get(k) is not None else "—" for k in SUMMARY_KEYS))
    console = Console(stderr=False, emoji=False)
    console.print(table)
    console.print("null = the trained pair's map fitted on shuffled training pairs; pixels = raw pixels of the two "
                  "views; untrained = the same architecture with no step taken (--epochs 0), with the trained "
                  "models' seeds (their epoch-0 weights) or with other seeds")
    for side, evals in s["online_eval"].items():
        first, last = evals[0], evals[-1]
        console.print(f"model {side.upper()} ({s['views'][side]}), held-out probe / kNN / RankMe: epoch 0 "
                      f"{first['probe_acc']:.3f} / {first['knn_acc']:.3f} / {first['rankme']:.1f} -> epoch "
                      f"{s['epochs']} {last['probe_acc']:.3f} / {last['knn_acc']:.3f} / {last['rankme']:.1f}")
    for kind, label in (("trained", "trained"), ("same_seed", "untrained (same seeds)")):
        p = s["probe"][kind]
        console.print(f"{label}: probe trained on A, moved to B with 0 gradient steps: {p['transferred_acc']:.3f} "
                      f"(on A {p['source_acc']:.3f}, trained on B {p['target_acc']:.3f}, chance {p['chance']:.3f})")
    console.print(f"demo finished in {s['seconds'] / 60:.1f} min; artifacts and summary.json are in the output folder")


if __name__ == "__main__":
    main()
