"""Raw pixels scored as a pretraining run's online evaluation scores its encoder (run by hand).

    python benchmarks/pixel_control.py [--max-states N] [--eval-states 2000]

The same held-out states and probe/kNN bank that ``sjalign pretrain --eval-every`` picks for a run on
Fashion-MNIST (identity view, ``--max-states N`` or all 70,000 states), embedded as flattened pixels and
scored with :func:`sjalign.jepa.monitor.score_latents`: the raw-pixel row to set beside a run's
``log.jsonl`` figures. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from sjalign.cli.pretrain import _eval_set
    from sjalign.data import open_dataset
    from sjalign.data.selection import Subset
    from sjalign.jepa.monitor import score_latents

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-states", type=int, default=None, help="the run's --max-states (default: all)")
    ap.add_argument("--eval-states", type=int, default=None, help="the run's --eval-states (default: 2,000)")
    args = ap.parse_args()
    selection = open_dataset("fashion-mnist", view="identity", seed=0, subset=Subset("all", None, args.max_states))
    es = _eval_set(selection, args.eval_states)
    flat = lambda x: x.reshape(len(x), -1).numpy()  # noqa: E731 - (n, C*H*W) float32
    figures = score_latents(flat(es.train_images), es.train_labels, flat(es.test_images), es.test_labels)
    print(json.dumps({"max_states": args.max_states, "n_train": len(es.train_images), **figures}))


if __name__ == "__main__":
    main()
