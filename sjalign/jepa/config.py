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

# Training defaults every objective starts from; an objective's ``recipe`` overrides some of them.
TRAINING_DEFAULTS: dict[str, Any] = {
    "epochs": 10, "batch_size": 128, "lr": 3e-4, "min_lr": 1e-6, "warmup_epochs": 1.0, "weight_decay": 0.05,
    "ema": (0.996, 1.0), "pred_dim": 64, "pred_depth": 2, "input_norm": True,
}


def check_objective_options(objective: str, values: dict[str, Any], *, name=lambda field: field) -> None:
    """Refuse an unknown objective, then hyper-parameters that ``objective`` does not declare.

    Args:
        objective: objective name.
        values: option name -> value; None means "not given".
        name: how to name an option in the message (the CLI passes ``--flag`` names).

    Raises:
        SjalignError: unknown objective (the message lists all of them), an option no
            objective has, or e.g. "temperature applies to simclr only (objective 'mae')".
    """
    from sjalign.jepa.objectives import OBJECTIVE_OPTIONS, objective_class  # deferred: they import vit

    objective_class(objective)
    unknown = [f"unknown objective option {name(f)} (known: {', '.join(map(name, OBJECTIVE_OPTIONS))})"
               for f, v in values.items() if v is not None and f not in OBJECTIVE_OPTIONS]
    bad = [f"{name(field)} applies to {', '.join(users)} only (objective '{objective}')"
           for field, users in inapplicable_options(objective, values)]
    if unknown or bad:
        raise SjalignError("; ".join(unknown + bad))


def inapplicable_options(objective: str, values: dict[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """The objective hyper-parameters set (not None) in ``values`` that ``objective`` does not use.

    Args:
        objective: objective name.
        values: option name -> value (names no objective declares are ignored).

    Returns:
        [(option, the objectives it applies to), ...] in declaration order.
    """
    from sjalign.jepa.objectives import OBJECTIVE_OPTIONS

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
        pred_dim: predictor width (multiple of 4 and of ``vit.num_heads``); the pixel
            decoders of mae and ae use it as their width.
        pred_depth: predictor (or pixel decoder) blocks.
        input_norm: standardise the encoder's input pixels per channel with the training images'
            mean and std (``pretrain`` measures them and stores them in ``vit``, so the exported
            encoder applies them too), as the references' ``Normalize`` does; on by default.
        max_states: cap on the number of states used (provenance; applied by the loader).
        seed: seeds model init, shuffling and masks.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        precision: "fp32", or "bf16" (autocast, CUDA only; ignored with a warning on CPU).
        compile: run ``torch.compile`` on the modules.
        grad_clip: max global gradient norm; None or 0 disables clipping.
        num_workers: DataLoader worker processes when ``pretrain`` reads a Dataset (0 = in the
            main process); does not change the results.
        teacher: teacher–student migration (:mod:`sjalign.jepa.teacher`): ``{"spec", "view", "weight"
            (μ), "every" (refit every N steps), "mode" ("align" or "kd"), "dim" (the teacher's
            latent width), "buffer"}``; None: no teacher.
        target_acc: probe accuracy in (0, 1) whose first crossing the run records (cost to
            threshold); None: not recorded.
        mutual: provenance of a model trained by mutual teaching (:mod:`sjalign.jepa.mutual`):
            ``{"method", "weight" (γ), "every", "role" ("a" or "b"), "partner_view", "partner_seed"}``;
            None: trained alone.
        options: the objective's hyper-parameters (``reg_weight``, ``temperature``, ...), as its
            class declares them (``Objective.options``: default, help, check); missing ones are
            filled with the objective's defaults, one it does not declare is an error. Each is
            also readable as an attribute (``config.reg_weight``; None for an option of another
            objective).

    A field left at None (``epochs``, ``batch_size``, ``lr``, ...) is filled from the
    objective's ``recipe``, else from :data:`TRAINING_DEFAULTS`, so a config read back from a
    checkpoint always carries the values the run used.
    """

    dataset: str = "fashion-mnist"
    view: str = "identity"
    objective: str = "ijepa"
    model: str = "vit_tiny"
    vit: ViTConfig | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    min_lr: float | None = None
    warmup_epochs: float | None = None
    weight_decay: float | None = None
    ema: tuple[float, float] | None = None
    pred_dim: int | None = None
    pred_depth: int | None = None
    input_norm: bool | None = None
    max_states: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    grad_clip: float | None = 1.0
    num_workers: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher: dict[str, Any] | None = None
    target_acc: float | None = None
    mutual: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from sjalign.jepa.objectives import objective_class  # deferred: the objectives import this package's vit

        if self.vit is None:
            if self.model not in PRESETS:
                raise SjalignError(f"unknown model preset '{self.model}' (known: {', '.join(PRESETS)})")
            object.__setattr__(self, "vit", PRESETS[self.model])
        check_objective_options(self.objective, dict(self.options))
        cls = objective_class(self.objective)
        recipe, declared = getattr(cls, "recipe", {}), getattr(cls, "options", {})  # a duck-typed objective has neither
        for field, default in TRAINING_DEFAULTS.items():
            if field == "pred_dim":  # half the encoder's width (64 for vit_tiny, 192 for vit_small)
                default = self.vit.embed_dim // 2
            if getattr(self, field) is None:
                object.__setattr__(self, field, recipe.get(field, default))
        object.__setattr__(self, "ema", tuple(float(m) for m in self.ema))
        options = {field: option.coerce(self.options[field]) if self.options.get(field) is not None else option.default
                   for field, option in declared.items()}
        object.__setattr__(self, "options", options)
        problems = [f"{field} {problem}" for field, option in declared.items()
                    if option.check is not None and (problem := option.check(options[field]))]
        if not problems and hasattr(cls, "config_problems"):
            problems += cls.config_problems(options, self.vit)
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
        if self.teacher is not None:
            from sjalign.jepa.teacher import check_teacher_options

            problems += check_teacher_options(self.teacher)
        if self.target_acc is not None and not 0 < self.target_acc < 1:
            problems.append(f"--target-acc must be in (0, 1), got {self.target_acc}")
        if not (0 < self.lr < math.inf and 0 <= self.min_lr < math.inf and 0 <= self.warmup_epochs < math.inf):
            problems.append("lr must be a finite number > 0, min_lr and warmup_epochs finite and >= 0")
        if problems:
            raise SjalignError("pretrain config: " + "; ".join(problems))

    def __getattr__(self, name: str) -> Any:
        """An objective option as an attribute: ``config.reg_weight`` (None for another objective's option)."""
        options = self.__dict__.get("options")
        if options is not None and not name.startswith("_"):
            if name in options:
                return options[name]
            from sjalign.jepa.objectives import OBJECTIVE_OPTIONS

            if name in OBJECTIVE_OPTIONS:
                return None
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __hash__(self) -> int:
        return hash(self.to_json())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``vit`` nested, tuples as lists)."""
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        """JSON text of :meth:`to_dict`, keys sorted."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PretrainConfig":
        """Rebuild a config from :meth:`to_dict` output; unknown keys are dropped with a warning.

        Objective options may also be given flat (``{"objective": "lejepa", "reg_weight": 0.1}``),
        as configs written before ``options`` existed hold them; a flat None is "not given".

        Raises:
            SjalignError: values that do not make a valid config.
        """
        from sjalign.jepa.objectives import OBJECTIVE_OPTIONS

        names = {f.name for f in dataclasses.fields(cls)}
        flat = {k: data[k] for k in data if k not in names and k in OBJECTIVE_OPTIONS}
        unknown = sorted(set(data) - names - set(flat))
        if unknown:
            warnings.warn(f"pretrain config: ignoring unknown keys {unknown}", stacklevel=2)
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["options"] = {**{k: v for k, v in flat.items() if v is not None}, **(kwargs.get("options") or {})}
        vit = kwargs.get("vit")
        if "input_norm" not in data and isinstance(vit, dict):  # written before input_norm existed: raw pixels
            kwargs["input_norm"] = vit.get("input_mean") is not None
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
        from sjalign.jepa.objectives import objective_class

        declared = getattr(objective_class(self.objective), "options", {})
        teacher = None if self.teacher is None else {k: self.teacher.get(k) for k in ("spec", "view", "mode", "dim")}
        return {"objective": self.objective, "vit": dataclasses.asdict(self.vit), "pred_dim": self.pred_dim,
                "pred_depth": self.pred_depth, "teacher": teacher,
                **{k: v for k, v in self.options.items() if declared[k].architecture}}
