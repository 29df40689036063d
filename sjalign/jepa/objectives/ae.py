"""Pixel autoencoder on the same ViT: reconstruct the whole image from its pooled embedding.

Train step (the reconstructive baseline of the paper's Table 1, Hinton & Salakhutdinov 2006)::

    z   = mean_p f(x)                        # (B, D): the code = the vector ``sjalign embed`` exports
    x̂   = dec(z; all N positions)            # transformer decoder: one code token + N mask tokens
    L   = mean (x̂ − x)²                      # raw pixels, every patch

The encoder sees every patch; the bottleneck is the mean-pooled embedding (D numbers for
H·W·C pixels), so the code has to summarise the image — without it a per-token decoder
would learn the identity. The decoder is the I-JEPA predictor's architecture (width
``pred_dim``, ``pred_depth`` blocks) with a pixel output layer; the code token carries no
position. Nothing is random per step: :meth:`AutoEncoder.sample_masks` returns an empty tuple.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sjalign.jepa.objectives.common import Objective
from sjalign.jepa.objectives.losses import patchify, reconstruction_loss
from sjalign.jepa.vit import Predictor, VisionTransformer, ViTConfig


class NoMasks(NamedTuple):
    """The autoencoder draws nothing per step."""


class AutoEncoder(Objective):
    """ViT encoder with a pooled bottleneck and a transformer pixel decoder.

    Submodules (checkpoint prefixes): ``encoder.*`` (exported), ``decoder.*``.

    Args:
        vit: encoder architecture.
        dec_dim: decoder width.
        dec_depth: decoder blocks.
    """

    name = "ae"
    export_prefix = "encoder"
    summary = "reconstruct all pixels from the mean-pooled embedding (the bottleneck)"
    recipe = {"lr": 1e-3, "epochs": 6}  # ~6 min for 8,572 images on two CPU cores (README: Does it learn?)

    def __init__(self, vit: ViTConfig, *, dec_dim: int = 64, dec_depth: int = 2) -> None:
        super().__init__()
        self.patch_size = vit.patch_size
        self.encoder = VisionTransformer(vit)
        self.decoder = Predictor(vit.embed_dim, dec_dim, dec_depth, vit.num_heads, vit.grid_size, vit.mlp_ratio,
                                 out_dim=vit.patch_size ** 2 * vit.in_chans)

    @classmethod
    def from_config(cls, config) -> "AutoEncoder":
        """Build from a :class:`sjalign.jepa.config.PretrainConfig` (decoder = pred_dim x pred_depth)."""
        return cls(config.vit, dec_dim=config.pred_dim, dec_depth=config.pred_depth)

    def sample_masks(self, batch_size: int, generator: torch.Generator) -> NoMasks:
        """Nothing to draw (the generator is left untouched)."""
        return NoMasks()

    def forward(self, images: torch.Tensor, masks: NoMasks = NoMasks()) -> torch.Tensor:
        """Autoencoder loss of one batch.

        Args:
            images: (B, C, H, W) images in [0, 1].
            masks: unused (:class:`NoMasks`).

        Returns:
            () scalar loss (per-element MSE on raw pixels).
        """
        B = images.shape[0]
        code = self.encoder(images).mean(1, keepdim=True)  # (B, 1, D)
        n = self.encoder.num_patches
        everywhere = torch.arange(n, device=images.device).expand(B, n)  # (B, N)
        pred = self.decoder(code, None, everywhere)  # (B, N, p²C)
        loss = reconstruction_loss(pred, patchify(images, self.patch_size))
        self.last_terms = {"rec": loss.detach()}
        return loss
