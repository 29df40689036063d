"""Pretraining objectives, one per module, found by this package: adding one touches one file.

An objective is a :class:`~sjalign.jepa.objectives.common.Objective` (an ``nn.Module``
whose submodule names are its checkpoint's tensor prefixes), with:

- ``name``, ``summary`` and ``export_prefix`` (the submodule :func:`sjalign.jepa.load_encoder` returns),
- ``options``: its hyper-parameters as :class:`~sjalign.jepa.objectives.common.ObjectiveOption`
  (default, help, check) — the config, the command line (``--reg-weight``) and
  ``sjalign objectives`` read them from there — and ``recipe``: its training defaults
  (``lr``, ``epochs``, ...) where they differ from the config's,
- ``from_config(config)`` (classmethod), ``trainable_parameters()``, ``export_encoder()``,
- ``sample_masks(batch_size, generator)`` -> a NamedTuple of CPU tensors (the trainer moves
  each field to the device) that its ``forward`` takes as masks,
- ``forward(images, masks)`` -> scalar loss, leaving its detached terms in ``last_terms``,
- ``after_step(step, total_steps)`` -> float, called after each optimizer step (EMA).

Add an objective by writing its module in this package: every ``Objective`` subclass with its
own ``name`` defined in a module here is registered (:data:`OBJECTIVES`, the default ``ijepa``
first, then by name). Pure loss functions live in :mod:`sjalign.jepa.objectives.losses`. Every
field of the masks tuple is batch-first (see :mod:`sjalign.jepa.objectives.common`), so it can
be sliced per rank.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from sjalign.errors import SjalignError
from sjalign.jepa.objectives.ae import AutoEncoder
from sjalign.jepa.objectives.cjepa import CJEPA
from sjalign.jepa.objectives.common import Objective, ObjectiveOption
from sjalign.jepa.objectives.ijepa import IJEPA, ema_momentum, ema_update, ijepa_loss
from sjalign.jepa.objectives.lejepa import LeJEPA
from sjalign.jepa.objectives.lpjepa import LpJEPA
from sjalign.jepa.objectives.mae import MAE
from sjalign.jepa.objectives.simclr import SimCLR

DEFAULT_OBJECTIVE = "ijepa"


def _discover() -> dict[str, type[Objective]]:
    """Every Objective subclass defined, with its own ``name``, in a module of this package."""
    found: dict[str, type[Objective]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Objective) and obj.__module__ == module.__name__
                    and "name" in vars(obj)):
                found[obj.name] = obj
    return {DEFAULT_OBJECTIVE: found.pop(DEFAULT_OBJECTIVE), **dict(sorted(found.items()))}


OBJECTIVES: dict[str, type[Objective]] = _discover()

# option name -> {objective that has it: its default}, in first-declared order
OBJECTIVE_OPTIONS: dict[str, dict[str, Any]] = {}
for _name, _cls in OBJECTIVES.items():
    for _field, _option in _cls.options.items():
        OBJECTIVE_OPTIONS.setdefault(_field, {})[_name] = _option.default


def objective_class(name: str) -> type[Objective]:
    """The registered objective ``name``.

    Raises:
        SjalignError: unknown objective (the message lists the known ones).
    """
    if name not in OBJECTIVES:
        raise SjalignError(f"unknown objective '{name}' (available: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name]


def option_of(field: str) -> ObjectiveOption:
    """The declaration of option ``field`` (from the first objective that declares it: parse and coerce only)."""
    return next(cls.options[field] for cls in OBJECTIVES.values() if field in cls.options)


def build_objective(config) -> Objective:
    """Instantiate ``config.objective`` for a :class:`sjalign.jepa.config.PretrainConfig`.

    Raises:
        SjalignError: unknown objective (the message lists the known ones).
    """
    return objective_class(config.objective).from_config(config)


__all__ = ["DEFAULT_OBJECTIVE", "OBJECTIVES", "OBJECTIVE_OPTIONS", "AutoEncoder", "CJEPA", "IJEPA", "LeJEPA", "LpJEPA",
           "MAE", "Objective", "ObjectiveOption", "SimCLR", "build_objective", "ema_momentum", "ema_update",
           "ijepa_loss", "objective_class", "option_of"]
