"""Vision Transformer backbone and the narrow I-JEPA predictor.

A plain pre-norm ViT (Dosovitskiy et al. 2021, arXiv:2010.11929) with a convolutional
patch embedding, fixed 2-D sine-cosine positional embeddings (MAE / I-JEPA practice)
and ``F.scaled_dot_product_attention``. Every encoder exposes ``forward_features`` and
``num_features`` (timm's contract) so it can sit behind the encoder registry.

Example::

    >>> vit = VisionTransformer(PRESETS["vit_tiny"])
    >>> vit.forward_features(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 49, 128])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a ViT encoder.

    Attributes:
        img_size: input side in pixels (square images).
        patch_size: patch side in pixels; ``img_size`` must be a multiple of it.
        in_chans: input channels (1 for grayscale).
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads; must divide ``embed_dim``.
        mlp_ratio: MLP hidden width as a multiple of D.
        input_mean, input_std: per-channel statistics the encoder standardises its [0, 1] input
            pixels with, (x − mean) / std, before the patch embedding (the references' ``Normalize``
            with their dataset's statistics; ``pretrain`` measures them on the training images when
            its ``input_norm`` is on); None: the pixels go in as they are.
    """

    img_size: int = 28
    patch_size: int = 4
    in_chans: int = 1
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if (self.input_mean is None) != (self.input_std is None):
            raise ValueError("input_mean and input_std go together")
        if self.input_mean is not None:  # JSON gives lists
            object.__setattr__(self, "input_mean", tuple(float(v) for v in self.input_mean))
            object.__setattr__(self, "input_std", tuple(float(v) for v in self.input_std))
            if len(self.input_mean) != self.in_chans or len(self.input_std) != self.in_chans:
                raise ValueError(f"input_mean and input_std need one value per channel ({self.in_chans})")
            if not all(0 < v < math.inf for v in self.input_std) or not all(map(math.isfinite, self.input_mean)):
                raise ValueError(f"input_std must be positive and finite, input_mean finite, got {self.input_std}, "
                                 f"{self.input_mean}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def grid_size(self) -> int:
        """Patches per side (gh = gw)."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Tokens per image N = grid_size²."""
        return self.grid_size ** 2


PRESETS: dict[str, ViTConfig] = {
    # Fashion-MNIST on a few CPU cores: 7x7 grid of 4x4 patches, ~0.8 M parameters.
    "vit_tiny": ViTConfig(img_size=28, patch_size=4, in_chans=1, embed_dim=128, depth=4, num_heads=4),
    # ViT-S/16 at 224 px (the paper's default backbone), ~22 M parameters.
    "vit_small": ViTConfig(img_size=224, patch_size=16, in_chans=3, embed_dim=384, depth=12, num_heads=6),
}


def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positional embeddings.

    Half of the channels encode the row, half the column; each half is
    ``[sin(p ω_k), cos(p ω_k)]`` with ω_k = 10000^(-k / (dim/4)), k < dim/4.

    Args:
        dim: embedding width, a multiple of 4.
        grid_size: patches per side.

    Returns:
        (grid_size², dim) float32, raster order (row-major).

    References:
        He et al. 2022 (MAE), arXiv:2111.06377, ``get_2d_sincos_pos_embed``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positional embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # (dim/4,)
    pos = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")  # (g, g) each

    def encode(p: torch.Tensor) -> torch.Tensor:
        angles = p.reshape(-1, 1) * omega[None]  # (g², dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (g², dim/2)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()  # (g², dim)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Select tokens by index per sample (I-JEPA's ``apply_masks``).

    Args:
        x: (B, N, D) tokens.
        idx: (B, K) int64 indices into N.

    Returns:
        (B, K, D) tokens ``x[b, idx[b, k]]``.
    """
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads)  # (B, N, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, Dh) each
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # (B, N, D)
        return x + self.mlp(self.norm2(x))  # (B, N, D)


def _init_weights(module: nn.Module, blocks: nn.ModuleList) -> None:
    """I-JEPA initialisation: trunc-normal(0.02) linears, unit LayerNorms, and the residual
    output projections of block l scaled by 1/sqrt(2 l)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for layer_id, blk in enumerate(blocks, start=1):
        blk.attn.proj.weight.data.div_(math.sqrt(2.0 * layer_id))
        blk.mlp[2].weight.data.div_(math.sqrt(2.0 * layer_id))


class VisionTransformer(nn.Module):
    """ViT encoder returning patch tokens (no class token).

    Args:
        config: architecture.

    Attributes:
        num_features: token width D.
        num_patches: tokens per image N.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.num_features = self.embed_dim = config.embed_dim
        self.num_patches = config.num_patches
        self.patch_embed = nn.Conv2d(config.in_chans, config.embed_dim, config.patch_size, stride=config.patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(config.embed_dim, config.grid_size)[None],
                             persistent=False)  # (1, N, D)
        self.blocks = nn.ModuleList(
            Block(config.embed_dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        _init_weights(self, self.blocks)
        if config.input_mean is not None:  # buffers of the config, not of the weights file
            self.register_buffer("input_mean", torch.tensor(config.input_mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("input_std", torch.tensor(config.input_std).view(1, -1, 1, 1), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Input standardisation (when the config has statistics), patch embedding plus positions:
        (B, C, H, W) -> (B, N, D)."""
        if self.config.input_mean is not None:
            x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        return x + self.pos_embed.to(x.dtype)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode the kept patches of each image (the I-JEPA context path).

        Args:
            x: (B, C, H, W) images.
            keep: optional (B, K) int64 patch indices (raster order over the grid) to keep
                before the blocks run; all patches when None.

        Returns:
            (B, K, D) final-normed tokens (K = N when ``keep`` is None).
        """
        h = self.embed(x)  # (B, N, D)
        if keep is not None:
            h = gather_tokens(h, keep)  # (B, K, D)
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)

    def forward_features(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """All patch tokens, from the last block or an intermediate one.

        Args:
            x: (B, C, H, W) images.
            layer: None for the final output (all blocks, then the final LayerNorm); an
                int k in [1, depth] for the raw hidden state after block k (no final norm);
                negative k counts from the end (-1 = after the last block, un-normed).

        Returns:
            (B, N, D) tokens.

        Raises:
            ValueError: ``layer`` out of range.
        """
        depth = len(self.blocks)
        if layer is None:
            return self.forward(x)
        k = layer + depth + 1 if layer < 0 else layer
        if not 1 <= k <= depth:
            raise ValueError(f"layer {layer} is out of range for a ViT of depth {depth} (use 1..{depth} or -1..-{depth})")
        h = self.embed(x)  # (B, N, D)
        for blk in self.blocks[:k]:
            h = blk(h)
        return h


class Predictor(nn.Module):
    """Narrow ViT that predicts target-patch tokens from context tokens (I-JEPA).

    Context tokens are projected D -> P and given their positions; one learned mask
    token plus the target positions stands in for each target patch; after
    ``depth`` blocks the target slots are projected back P -> D (or P -> ``out_dim``:
    the MAE / autoencoder pixel decoders reuse it with out_dim = patch_size² · C).

    Args:
        embed_dim: encoder width D.
        pred_dim: predictor width P (a multiple of 4 and of ``num_heads``).
        depth: predictor blocks.
        num_heads: attention heads.
        grid_size: patches per side of the encoder grid.
        mlp_ratio: MLP hidden width as a multiple of P.
        out_dim: width of the predicted tokens; None means D.

    References:
        Assran et al. 2023 (I-JEPA), arXiv:2301.08243, ``VisionTransformerPredictor``.
    """

    def __init__(self, embed_dim: int, pred_dim: int, depth: int, num_heads: int, grid_size: int,
                 mlp_ratio: float = 4.0, out_dim: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(embed_dim, pred_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(pred_dim, grid_size)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(pred_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(pred_dim, eps=1e-6)
        self.proj = nn.Linear(pred_dim, out_dim or embed_dim)
        _init_weights(self, self.blocks)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor | None, target_idx: torch.Tensor) -> torch.Tensor:
        """Predict target tokens.

        Args:
            context: (B, K, D) context-encoder tokens.
            context_idx: (B, K) int64 grid positions of the context tokens, or None for
                tokens without a position (e.g. one pooled code per image).
            target_idx: (B, T) int64 grid positions to predict.

        Returns:
            (B, T, out_dim) predicted target tokens (out_dim = D by default).
        """
        B, K, _ = context.shape
        pos = self.pos_embed.to(context.dtype).expand(B, -1, -1)  # (B, N, P)
        ctx = self.embed(context)  # (B, K, P)
        if context_idx is not None:
            ctx = ctx + gather_tokens(pos, context_idx)
        tgt = self.mask_token.to(context.dtype) + gather_tokens(pos, target_idx)  # (B, T, P)
        h = torch.cat([ctx, tgt], dim=1)  # (B, K + T, P)
        for blk in self.blocks:
            h = blk(h)
        return self.proj(self.norm(h[:, K:]))  # (B, T, out_dim)
