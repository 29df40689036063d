"""The pretraining config: one frozen dataclass, written into every checkpoint.

Lives apart from ``train.py`` so that checkpoints can be read without importing the
trainer; ``sjalign.jepa.train.PretrainConfig`` is the same class.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

from sjalign.errors import SjalignError
from sjalign.jepa.vit import PRESETS, ViTConfig

PRECISIONS = ("fp32", "bf16")

# Objective hyper-parameters: field -> {objective it applies to: its default}. A field left at
# None is filled with the objective's default; a value given for an objective that does not
# use it is an error (see :func:`inapplicable_options`).
OBJECTIVE_OPTIONS: dict[str, dict[str, Any]] = {
    "reg_weight": {"lejepa": 0.02, "lpjepa": 10.0},
    "num_slices": {"lejepa": 256, "lpjepa": 256},
    "num_views": {"lejepa": 4, "lpjepa": 2},
    "rgg_p": {"lpjepa": 1.0},
    "proj_dim": {"cjepa": 256, "lejepa": 16, "lpjepa": 512, "simclr": 256},
    "temperature": {"simclr": 0.5},
    "mask_ratio": {"mae": 0.75},
    "vicreg_weight": {"cjepa": 0.001},
    "vicreg_coeffs": {"cjepa": (25.0, 25.0, 1.0)},
}


def check_objective_options(objective: str, values: dict[str, Any], *, name=lambda field: field) -> None:
    """Refuse an unknown objective, then hyper-parameters that ``objective`` does not use.

    Args:
        objective: objective name.
        values: field name -> value; None means "not given".
        name: how to name a field in the message (the CLI passes ``--flag`` names).

    Raises:
        SjalignError: unknown objective (the message lists all of them), or e.g.
            "temperature applies to simclr only (objective 'mae')".
    """
    from sjalign.jepa.objectives import OBJECTIVES  # deferred: the objectives import this package's vit

    if objective not in OBJECTIVES:
        raise SjalignError(f"unknown objective '{objective}' (available: {', '.join(OBJECTIVES)})")
    bad = [f"{name(field)} applies to {', '.join(users)} only (objective '{objective}')"
           for field, users in inapplicable_options(objective, values)]
    if bad:
        raise SjalignError("; ".join(bad))


def inapplicable_options(objective: str, values: dict[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """The objective hyper-parameters set (not None) in ``values`` that ``objective`` does not use.

    Args:
        objective: objective name.
        values: field name -> value (fields outside :data:`OBJECTIVE_OPTIONS` are ignored).

    Returns:
        [(field, the objectives it applies to), ...] in :data:`OBJECTIVE_OPTIONS` order.
    """
    return [(field, tuple(users)) for field, users in OBJECTIVE_OPTIONS.items()
            if values.get(field) is not None and objective not in users]


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines one pretraining run (``sjalign pretrain`` options).

    Attributes:
        dataset: dataset name or path (provenance; ``pretrain`` receives the images).
        view: view spec the images were rendered with (provenance).
        objective: training objective, a key of ``sjalign.jepa.objectives.OBJECTIVES``.
        model: ViT preset name, a key of ``sjalign.jepa.vit.PRESETS``.
        vit: the architecture; None means ``PRESETS[model]`` (filled in on construction,
            so a config read back from a checkpoint always carries it).
        epochs: passes over the data; 0 writes the randomly initialised model (a control).
        batch_size: images per optimizer step (the last incomplete batch is dropped).
        lr: peak learning rate after the linear warm-up.
        min_lr: learning rate at the end of the cosine decay.
        warmup_epochs: length of the linear warm-up from 0 to ``lr``, in epochs.
        weight_decay: AdamW decoupled weight decay on weight matrices (not biases/norms).
        ema: (start, end) momentum of the target-encoder EMA, linear over all steps.
        pred_dim: predictor width (multiple of 4 and of ``vit.num_heads``).
        pred_depth: predictor blocks.
        max_states: cap on the number of states used (provenance; applied by the loader).
        seed: seeds model init, shuffling and masks.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        precision: "fp32", or "bf16" (autocast, CUDA only; ignored with a warning on CPU).
        compile: run ``torch.compile`` on the modules.
        grad_clip: max global gradient norm; None or 0 disables clipping.
        num_workers: DataLoader worker processes when ``pretrain`` reads a Dataset (0 = in the
            main process); does not change the results.

    Objective hyper-parameters (None = the objective's default, see :data:`OBJECTIVE_OPTIONS`;
    setting one for an objective that does not use it is an error):
        reg_weight: λ of the regulariser — SIGReg for lejepa (0.05), RDMReg for lpjepa (10).
        num_slices: random 1-D projections per step for SIGReg / RDMReg (256).
        rgg_p: shape p of lpjepa's rectified generalised Gaussian target (1 = rectified Laplace).
        proj_dim: width of the projection head of cjepa (VICReg), lpjepa (ReLU projector) and
            simclr (256); changes the weights' shapes.
        temperature: τ of simclr's NT-Xent (0.5).
        mask_ratio: fraction of patches mae masks (0.75).
        vicreg_weight: β_vicreg of cjepa (0.001).
        vicreg_coeffs: (β_sim, β_std, β_cov) of cjepa's VICReg (25, 25, 1).
    The pixel decoders of mae and ae use ``pred_dim`` / ``pred_depth`` as width / depth.
    """

    dataset: str = "fashion-mnist"
    view: str = "identity"
    objective: str = "ijepa"
    model: str = "vit_tiny"
    vit: ViTConfig | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    ema: tuple[float, float] = (0.996, 1.0)
    pred_dim: int = 64
    pred_depth: int = 2
    max_states: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    grad_clip: float | None = 1.0
    num_workers: int = 0
    reg_weight: float | None = None
    num_slices: int | None = None
    num_views: int | None = None
    rgg_p: float | None = None
    proj_dim: int | None = None
    temperature: float | None = None
    mask_ratio: float | None = None
    vicreg_weight: float | None = None
    vicreg_coeffs: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.vit is None:
            if self.model not in PRESETS:
                raise SjalignError(f"unknown model preset '{self.model}' (known: {', '.join(PRESETS)})")
            object.__setattr__(self, "vit", PRESETS[self.model])
        object.__setattr__(self, "ema", tuple(float(m) for m in self.ema))
        check_objective_options(self.objective, {f: getattr(self, f) for f in OBJECTIVE_OPTIONS})
        problems = []
        for field, defaults in OBJECTIVE_OPTIONS.items():
            if self.objective in defaults and getattr(self, field) is None:
                object.__setattr__(self, field, defaults[self.objective])
        problems += self._objective_problems()
        if self.epochs < 0:
            problems.append(f"epochs must be >= 0 (0 = the randomly initialised model), got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            problems.append(f"num_workers must be >= 0, got {self.num_workers}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if len(self.ema) != 2 or not 0.0 <= self.ema[0] <= self.ema[1] <= 1.0:
            problems.append(f"ema must be (start, end) with 0 <= start <= end <= 1, got {self.ema}")
        if self.pred_dim % 4 or self.pred_dim % self.vit.num_heads:
            problems.append(f"pred_dim {self.pred_dim} must be a multiple of 4 and of num_heads {self.vit.num_heads}")
        if not (0 < self.lr < math.inf and 0 <= self.min_lr < math.inf and 0 <= self.warmup_epochs < math.inf):
            problems.append("lr must be a finite number > 0, min_lr and warmup_epochs finite and >= 0")
        if problems:
            raise SjalignError("pretrain config: " + "; ".join(problems))

    def _objective_problems(self) -> list[str]:
        """Range checks of the objective hyper-parameters that are set."""
        problems = []
        if self.vicreg_coeffs is not None:
            coeffs = tuple(float(c) for c in self.vicreg_coeffs)
            object.__setattr__(self, "vicreg_coeffs", coeffs)
            if len(coeffs) != 3 or min(coeffs) < 0:
                problems.append(f"vicreg_coeffs must be three numbers >= 0 (sim, std, cov), got {coeffs}")
        for field in ("reg_weight", "vicreg_weight"):
            if getattr(self, field) is not None and not 0 <= getattr(self, field) < math.inf:
                problems.append(f"{field} must be a finite number >= 0, got {getattr(self, field)}")
        for field in ("num_slices", "proj_dim"):
            if getattr(self, field) is not None and getattr(self, field) < 1:
                problems.append(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.num_views is not None and self.num_views < 2:
            problems.append(f"num_views must be >= 2 (the views predict their mean), got {self.num_views}")
        for field in ("rgg_p", "temperature"):
            if getattr(self, field) is not None and not 0 < getattr(self, field) < math.inf:
                problems.append(f"{field} must be a finite number > 0, got {getattr(self, field)}")
        if self.rgg_p is not None and not self.rgg_p >= 0.1:  # Γ(3/p) overflows a float below p ≈ 0.018
            problems.append(f"rgg_p must be >= 0.1 (sparser targets are not supported), got {self.rgg_p}")
        if self.mask_ratio is not None and not 0 < self.mask_ratio < 1:
            problems.append(f"mask_ratio must be between 0 and 1, got {self.mask_ratio}")
        elif self.mask_ratio is not None:
            n = self.vit.num_patches
            if not 0 < round(n * self.mask_ratio) < n:
                problems.append(f"mask_ratio {self.mask_ratio} must mask at least one and keep at least one "
                                f"of the {n} patches")
        return problems

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``vit`` nested, tuples as lists)."""
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        """JSON text of :meth:`to_dict`, keys sorted."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PretrainConfig":
        """Rebuild a config from :meth:`to_dict` output; unknown keys are dropped with a warning.

        Raises:
            SjalignError: values that do not make a valid config.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            warnings.warn(f"pretrain config: ignoring unknown keys {unknown}", stacklevel=2)
        kwargs = {k: v for k, v in data.items() if k in names}
        vit = kwargs.get("vit")
        try:
            if isinstance(vit, dict):
                kwargs["vit"] = ViTConfig(**vit)
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise SjalignError(f"pretrain config: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> "PretrainConfig":
        """Parse :meth:`to_json` output.

        Raises:
            SjalignError: not JSON, or not a valid config.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SjalignError(f"pretrain config: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SjalignError("pretrain config: expected a JSON object")
        return cls.from_dict(data)

    def architecture(self) -> dict[str, Any]:
        """The fields a checkpoint's weights depend on (compared on resume)."""
        return {"objective": self.objective, "vit": dataclasses.asdict(self.vit),
                "pred_dim": self.pred_dim, "pred_depth": self.pred_depth, "proj_dim": self.proj_dim}
