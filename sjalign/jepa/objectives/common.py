"""Pieces shared by several objectives: their base class, an MLP head, batch-first per-step
tensors, and the no-EMA latent prediction of LeJEPA and Rectified LpJEPA.

Every field of an objective's masks NamedTuple is batch-first (dimension 0 = the batch), so a
trainer may draw one global batch's masks and slice every field per rank; a quantity that is
the same for the whole batch (projection directions) is a stride-0 view expanded over the
batch (:func:`batch_shared`), free on the CPU, and read back with ``field[0]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sjalign.jepa.vit import Predictor, VisionTransformer, gather_tokens


class Objective(nn.Module):
    """Base of every objective: the parts of the trainer's contract most objectives share.

    Subclasses set ``name`` and ``export_prefix`` (the submodule ``sjalign embed`` uses) and
    write ``from_config``, ``sample_masks`` and ``forward``; an EMA objective overrides
    :meth:`after_step`.
    """

    name: str
    export_prefix: str = "encoder"

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


def self_prediction(encoder: VisionTransformer, predictor: Predictor, images: torch.Tensor,
                    context: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent prediction without EMA or stop-gradient (LeJEPA, Rectified LpJEPA on a ViT).

    The same encoder embeds the full image (targets) and the context block; the predictor
    maps the context to the target blocks' tokens; gradients flow through both branches:

        s = f(x)[targets],   ŝ = g(f(x[context]), positions),   L = (1/(P·D)) Σ ‖ŝ − s‖²

    (a per-element MSE as LeJEPA's ``(centers − proj).square().mean()``, so λ keeps its
    meaning). Collapse is prevented by the objective's regulariser on the pooled embeddings.

    Args:
        encoder: the ViT.
        predictor: narrow predictor.
        images: (B, C, H, W).
        context: (B, Kc) context patch indices.
        targets: (B, M, Kt) target-block patch indices.

    Returns:
        (loss, pooled): () prediction loss and (B, D) the mean-pooled full-image tokens
        (what ``sjalign embed --pooling mean`` exports).
    """
    B, M, T = targets.shape
    tokens = encoder(images)  # (B, N, D), with gradients
    s = block_major(gather_tokens(tokens, targets.reshape(B, M * T)), M)  # (M*B, T, D)
    z = encoder(images, keep=context)  # (B, Kc, D)
    flat = targets.transpose(0, 1).reshape(M * B, T)  # (M*B, T), block-major
    pred = predictor(z.repeat(M, 1, 1), context.repeat(M, 1), flat)  # (M*B, T, D)
    return F.mse_loss(pred.float(), s.float()), tokens.mean(1)


__all__ = ["MLPHead", "batch_shared", "block_major", "self_prediction"]
