"""compare against evaluate on every pair: one matrix of M files versus M(M−1)/2 evaluate calls (run by hand).

    python benchmarks/compare.py FILE FILE ... [--out runs/bench_compare]

Times, in one run on the same machine, ``sjalign compare FILES --metrics cka,r2,retrieval@1`` and
``sjalign evaluate A B --permutations 1 --dsc-points 3 --k 1`` for every pair (the cheapest evaluate
that still fits and scores a map: the null and DSC cut to their minimum), each as a fresh process
as a user's shell loop would, and prints both wall times and their ratio. The issue's target: the
matrix of 8 files × 10,000 states costs less than half of the pairwise loop.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from objectives import sh  # the same runner: echo the command, time it, stop on failure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_compare"))
    parser.add_argument("--metrics", default="cka,r2,retrieval@1")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_compare = sh("compare", *args.files, "--metrics", args.metrics, "-o", args.out / "compare.json", "--force")
    t_pairs = 0.0
    for a, b in itertools.combinations(args.files, 2):
        t_pairs += sh("evaluate", a, b, "--permutations", 1, "--dsc-points", 3, "--k", 1, "--json")
    pairs = len(args.files) * (len(args.files) - 1) // 2
    result = {"files": len(args.files), "pairs": pairs, "compare_s": round(t_compare, 1),
              "evaluate_every_pair_s": round(t_pairs, 1), "ratio": round(t_compare / t_pairs, 3)}
    (args.out / "timing.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
