"""Pieces shared by several objectives: their base class, an MLP head and batch-first per-step
tensors.

Every field of an objective's masks NamedTuple is batch-first (dimension 0 = the batch), so a
trainer may draw one global batch's masks and slice every field per rank; a quantity that is
the same for the whole batch (projection directions) is a stride-0 view expanded over the
batch (:func:`batch_shared`), free on the CPU, and read back with ``field[0]``.
"""

from __future__ import annotations

import torch
from torch import nn

from sjalign.jepa.vit import VisionTransformer


class Objective(nn.Module):
    """Base of every objective: the parts of the trainer's contract most objectives share.

    Subclasses set ``name`` and ``export_prefix`` (the submodule ``sjalign embed`` uses) and
    write ``from_config``, ``sample_masks`` and ``forward``; ``forward`` leaves each loss term,
    detached, in ``self.last_terms`` (the trainer logs their epoch means); an EMA objective
    overrides :meth:`after_step`.
    """

    name: str
    export_prefix: str = "encoder"
    last_terms: dict[str, torch.Tensor]  # the last forward's loss terms, detached ({"pred": .., "sigreg": ..})

    def __init__(self) -> None:
        super().__init__()
        self.last_terms = {}

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


__all__ = ["MLPHead", "Objective", "batch_shared", "block_major"]
