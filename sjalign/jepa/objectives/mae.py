"""MAE on the same ViT: reconstruct the per-patch normalised pixels of masked patches.

Train step (He et al. 2022, arXiv:2111.06377)::

    visible, masked = random split of the N patches (ratio r masked, per image)
    z   = f(x[visible])                          # the encoder sees visible patches only
    x̂   = dec(z, visible positions, masked positions)   # mask tokens + positions, P -> p²·C
    L   = mean over masked patches and pixels of (x̂ − norm(x)[masked])²

norm(·) normalises each target patch by its own mean and variance (MAE's ``norm_pix_loss``).
The decoder is the I-JEPA predictor's architecture (width ``pred_dim``, ``pred_depth``
blocks) with a pixel output layer — MAE's light decoder. The masks are drawn in
:meth:`MAE.sample_masks` from the trainer's seeded CPU generator.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sjalign.jepa.objectives.common import Objective, ObjectiveOption
from sjalign.jepa.objectives.losses import normalize_patches, patchify, reconstruction_loss
from sjalign.jepa.vit import Predictor, VisionTransformer, ViTConfig, gather_tokens


class RandomMasks(NamedTuple):
    """MAE masks of one batch (batch-first, CPU).

    Attributes:
        visible: (B, Kv) int64 sorted indices of the patches the encoder sees.
        masked: (B, Km) int64 sorted indices of the patches to reconstruct (Kv + Km = N).
    """

    visible: torch.Tensor
    masked: torch.Tensor


def random_masks(batch_size: int, num_patches: int, mask_ratio: float, *, generator: torch.Generator) -> RandomMasks:
    """Per-image uniformly random masking of round(N·mask_ratio) patches (MAE's ``random_masking``).

    Raises:
        ValueError: a ratio that leaves no visible or no masked patch.
    """
    num_masked = round(num_patches * mask_ratio)
    if not 0 < num_masked < num_patches:
        raise ValueError(f"random_masks: mask ratio {mask_ratio} of {num_patches} patches leaves no visible "
                         "or no masked patch")
    order = torch.rand(batch_size, num_patches, generator=generator).argsort(dim=1)  # (B, N)
    return RandomMasks(visible=order[:, num_masked:].sort(dim=1).values,
                       masked=order[:, :num_masked].sort(dim=1).values)


class MAE(Objective):
    """ViT encoder on visible patches plus a light transformer pixel decoder.

    Submodules (checkpoint prefixes): ``encoder.*`` (exported), ``decoder.*``.

    Args:
        vit: encoder architecture.
        dec_dim: decoder width.
        dec_depth: decoder blocks.
        mask_ratio: fraction of patches masked (MAE: 0.75).
    """

    name = "mae"
    export_prefix = "encoder"
    summary = "reconstruct the per-patch normalised pixels of masked patches from the visible ones"
    recipe = {"lr": 1e-3, "epochs": 10}  # ~6 min for 8,572 images on two CPU cores (README: Does it learn?)
    options = {
        "mask_ratio": ObjectiveOption(0.75, "fraction of patches masked",
                                      lambda r: None if 0 < r < 1 else f"must be between 0 and 1, got {r}"),
    }

    @classmethod
    def config_problems(cls, options: dict, vit: ViTConfig) -> list[str]:
        """The mask ratio must mask at least one patch and keep at least one."""
        n, r = vit.num_patches, options["mask_ratio"]
        if 0 < r < 1 and not 0 < round(n * r) < n:
            return [f"mask_ratio {r} must mask at least one and keep at least one of the {n} patches"]
        return []

    def __init__(self, vit: ViTConfig, *, dec_dim: int = 64, dec_depth: int = 2, mask_ratio: float) -> None:
        super().__init__()
        self.patch_size, self.mask_ratio = vit.patch_size, mask_ratio
        self.encoder = VisionTransformer(vit)
        self.decoder = Predictor(vit.embed_dim, dec_dim, dec_depth, vit.num_heads, vit.grid_size, vit.mlp_ratio,
                                 out_dim=vit.patch_size ** 2 * vit.in_chans)
        random_masks(1, vit.num_patches, mask_ratio, generator=torch.Generator())  # fail early on a bad ratio

    @classmethod
    def from_config(cls, config) -> "MAE":
        """Build from a :class:`sjalign.jepa.config.PretrainConfig` (decoder = pred_dim x pred_depth)."""
        return cls(config.vit, dec_dim=config.pred_dim, dec_depth=config.pred_depth, mask_ratio=config.mask_ratio)

    def sample_masks(self, batch_size: int, generator: torch.Generator) -> RandomMasks:
        """Random visible / masked split per image, drawn on the CPU."""
        return random_masks(batch_size, self.encoder.num_patches, self.mask_ratio, generator=generator)

    def forward(self, images: torch.Tensor, masks: RandomMasks) -> torch.Tensor:
        """MAE loss of one batch.

        Args:
            images: (B, C, H, W) images.
            masks: :class:`RandomMasks` on the images' device.

        Returns:
            () scalar loss (per-element MSE on normalised pixels of masked patches).
        """
        z = self.encoder(images, keep=masks.visible)  # (B, Kv, D)
        pred = self.decoder(z, masks.visible, masks.masked)  # (B, Km, p²C)
        target = gather_tokens(normalize_patches(patchify(images, self.patch_size)), masks.masked)  # (B, Km, p²C)
        loss = reconstruction_loss(pred, target)
        self.last_terms = {"rec": loss.detach()}
        return loss
