"""Pieces shared by several objectives: their base class, an MLP head and batch-first per-step
tensors.

Every field of an objective's masks NamedTuple is batch-first (dimension 0 = the batch), so a
trainer may draw one global batch's masks and slice every field per rank; a quantity that is
the same for the whole batch (projection directions) is a stride-0 view expanded over the
batch (:func:`batch_shared`), free on the CPU, and read back with ``field[0]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from sjalign.jepa.vit import VisionTransformer


@dataclass(frozen=True)
class ObjectiveOption:
    """One hyper-parameter of an objective, declared in the objective's class (``options``).

    The config (``PretrainConfig.options``), the command line (``--reg-weight`` for
    ``reg_weight``) and ``sjalign objectives`` read its default, type and help from here.

    Attributes:
        default: the value used when none is given (its type is the option's type: int,
            float, or a tuple of floats written ``1,2,3`` on the command line).
        help: one line for ``sjalign objectives``.
        check: value -> a problem sentence ("must be >= 1, got 0"), or None when fine.
        architecture: the option changes the weights' shapes (compared on ``--resume``).
    """

    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None
    architecture: bool = False

    def parse(self, text: str) -> Any:
        """The option's value from command-line text.

        Raises:
            ValueError: text that is not of the option's type.
        """
        if isinstance(self.default, tuple):
            values = tuple(float(v) for v in text.split(","))
            if len(values) != len(self.default):
                raise ValueError(f"expected {len(self.default)} comma-separated numbers")
            return values
        return type(self.default)(text)

    def coerce(self, value: Any) -> Any:
        """A value read back from JSON in the option's type (lists become tuples)."""
        if isinstance(self.default, tuple):
            return tuple(float(v) for v in value)
        if isinstance(self.default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value


def at_least(low: float, *, integer: bool = False, strict: bool = False) -> Callable[[Any], str | None]:
    """A check: a finite number >= ``low`` (> ``low`` when ``strict``)."""
    def check(value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > low if strict else value >= low)
        if ok and (not integer or float(value).is_integer()):
            return None
        kind = "an integer" if integer else "a finite number"
        return f"must be {kind} {'>' if strict else '>='} {low:g}, got {value}"
    return check


class Objective(nn.Module):
    """Base of every objective: the parts of the trainer's contract most objectives share.

    Subclasses set ``name``, ``export_prefix`` (the submodule ``sjalign embed`` uses), their
    ``options`` (hyper-parameters with defaults and help) and ``recipe`` (training defaults
    such as ``lr`` and ``epochs`` that differ from :class:`~sjalign.jepa.config.PretrainConfig`'s),
    and write ``from_config``, ``sample_masks`` and ``forward``; ``forward`` leaves each loss term,
    detached, in ``self.last_terms`` (the trainer logs their epoch means); an EMA objective
    overrides :meth:`after_step`.
    """

    name: str
    export_prefix: str = "encoder"
    summary: ClassVar[str] = ""  # one line for `sjalign objectives`
    options: ClassVar[dict[str, ObjectiveOption]] = {}  # its hyper-parameters (see ObjectiveOption)
    recipe: ClassVar[dict[str, Any]] = {}  # its training defaults (lr, epochs, ...), over PretrainConfig's
    last_terms: dict[str, torch.Tensor]  # the last forward's loss terms, detached ({"pred": .., "sigreg": ..})

    def __init__(self) -> None:
        super().__init__()
        self.last_terms = {}

    @classmethod
    def config_problems(cls, options: dict[str, Any], vit) -> list[str]:
        """Problems of option values that depend on each other or on the architecture (none by default)."""
        return []

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters updated by the optimizer (an EMA target has ``requires_grad`` off)."""
        return [p for p in self.parameters() if p.requires_grad]

    def export_encoder(self) -> VisionTransformer:
        """The encoder to embed with: the submodule named by ``export_prefix``."""
        return getattr(self, self.export_prefix)

    def after_step(self, step: int, total_steps: int) -> float:
        """Nothing to update after a step (no EMA); returns 0.0."""
        return 0.0


class MLPHead(nn.Module):
    """Two-layer MLP head: Linear(in, hidden) → BatchNorm → GELU → Linear(hidden, out) [→ ReLU].

    The projection head of SimCLR and C-JEPA's VICReg branch, and Rectified LpJEPA's
    projector (``rectify=True``: its last ReLU makes the outputs non-negative, which RDMReg's
    rectified target needs). The hidden BatchNorm is in all three reference projectors; it
    centres the batch, so the shared component of an untrained ViT's pooled tokens (cosine
    similarity ≈ 0.99 between images) does not stall NT-Xent and VICReg at the start. Heads are
    discarded after pretraining: ``sjalign embed`` uses the encoder's own tokens.

    Args:
        in_dim: input width (the encoder's D).
        hidden: hidden width.
        out_dim: output width.
        rectify: end with a ReLU.

    Shape:
        (B, in_dim) -> (B, out_dim); B >= 2 in training mode (batch statistics).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, *, rectify: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
                                   nn.Linear(hidden, out_dim)]
        if rectify:
            layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def batch_shared(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A batch-first stride-0 view (batch_size, *x.shape) of one tensor shared by the batch."""
    return x.unsqueeze(0).expand(batch_size, *x.shape)


def block_major(x: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """(B, M·T, D) tokens of M blocks per sample -> (M·B, T, D), block-major (I-JEPA's order)."""
    B, MT, D = x.shape
    return x.reshape(B, num_blocks, MT // num_blocks, D).transpose(0, 1).reshape(-1, MT // num_blocks, D)


__all__ = ["MLPHead", "Objective", "ObjectiveOption", "at_least", "batch_shared", "block_major"]
