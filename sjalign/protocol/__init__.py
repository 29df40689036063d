"""The evaluation protocol (Social-JEPA Algorithm 1): pair, split, fit on train, score on test, controls.

One package, the data flowing one way (latents → pairs → split → map → scores → result):

- :mod:`~sjalign.protocol.split`: which pairs fit and which score (a map's ids, the files' split,
  a seeded draw by state id, a class shift, a control on the same ids);
- :mod:`~sjalign.protocol.score`: fit on the train split, score on the test split beside the
  shuffled-pair null and its permutation p-value;
- :mod:`~sjalign.protocol.sweeps`: pair-budget and pair-noise curves on one test split;
- :mod:`~sjalign.protocol.runs`: one run per model × split seed, with controls, summarised;
- :mod:`~sjalign.protocol.result`: the typed result of ``sjalign evaluate`` and its JSON form.

Pairing by state id is :mod:`sjalign.align.pairing`. Pure functions over arrays; the CLI reads
files, calls these and prints what they return. Errors name options by field
(:class:`sjalign.errors.OptionError`); the CLI names them by flag.
"""

from sjalign.metrics import DEFAULT_KS
from sjalign.protocol.result import EvaluateResult, build_result
from sjalign.protocol.runs import (
    EvalOptions, Run, evaluate_runs, layer_rows, layerwise_cka, mean_std, run_once, summarise_runs,
)
from sjalign.protocol.score import (
    DEFAULT_MAX_TEST, MAP_FREE_KEYS, evaluate_pairs, fit_on_split, neighbour_rows, null_map, null_r2_distribution,
)
from sjalign.protocol.split import Shift, Split, choose_split, random_split, shift_split, transfer_split
from sjalign.protocol.sweeps import default_budgets, pair_budget_sweep, pair_noise_sweep

__all__ = [
    "DEFAULT_KS", "DEFAULT_MAX_TEST", "EvalOptions", "EvaluateResult", "MAP_FREE_KEYS", "Run", "Shift", "Split",
    "build_result", "choose_split",
    "default_budgets", "evaluate_pairs", "evaluate_runs", "fit_on_split", "layer_rows", "layerwise_cka", "mean_std",
    "neighbour_rows", "null_map", "null_r2_distribution", "pair_budget_sweep", "pair_noise_sweep", "random_split", "run_once",
    "shift_split", "summarise_runs", "transfer_split",
]
