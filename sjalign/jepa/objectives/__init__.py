"""Pretraining objectives, one per module, behind one registry.

An objective is a :class:`~sjalign.jepa.objectives.common.Objective` (an ``nn.Module``
whose submodule names are its checkpoint's tensor prefixes), with:

- ``name`` and ``export_prefix`` (the submodule :func:`sjalign.jepa.load_encoder` returns),
- ``from_config(config)`` (classmethod), ``trainable_parameters()``, ``export_encoder()``,
- ``sample_masks(batch_size, generator)`` -> a NamedTuple of CPU tensors (the trainer moves
  each field to the device) that its ``forward`` takes as masks,
- ``forward(images, masks)`` -> scalar loss,
- ``after_step(step, total_steps)`` -> float, called after each optimizer step (EMA).

Add an objective by writing its module and adding it to :data:`OBJECTIVES`. Pure loss
functions live in :mod:`sjalign.jepa.objectives.losses`. Every field of the masks tuple is
batch-first (see :mod:`sjalign.jepa.objectives.common`), so it can be sliced per rank.
"""

from __future__ import annotations

from torch import nn

from sjalign.errors import SjalignError
from sjalign.jepa.objectives.ae import AutoEncoder
from sjalign.jepa.objectives.cjepa import CJEPA
from sjalign.jepa.objectives.ijepa import IJEPA, ema_momentum, ema_update, ijepa_loss
from sjalign.jepa.objectives.lejepa import LeJEPA
from sjalign.jepa.objectives.lpjepa import LpJEPA
from sjalign.jepa.objectives.mae import MAE
from sjalign.jepa.objectives.simclr import SimCLR

OBJECTIVES: dict[str, type[nn.Module]] = {
    "ijepa": IJEPA, "lejepa": LeJEPA, "cjepa": CJEPA, "lpjepa": LpJEPA, "mae": MAE, "simclr": SimCLR,
    "ae": AutoEncoder,
}


def build_objective(config) -> nn.Module:
    """Instantiate ``config.objective`` for a :class:`sjalign.jepa.config.PretrainConfig`.

    Raises:
        SjalignError: unknown objective (the message lists the known ones).
    """
    if config.objective not in OBJECTIVES:
        raise SjalignError(f"unknown objective '{config.objective}' (available: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[config.objective].from_config(config)


__all__ = ["OBJECTIVES", "AutoEncoder", "CJEPA", "IJEPA", "LeJEPA", "LpJEPA", "MAE", "SimCLR", "build_objective",
           "ema_momentum", "ema_update", "ijepa_loss"]
