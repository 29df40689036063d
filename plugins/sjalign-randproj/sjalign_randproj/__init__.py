"""``randproj:D[:SEED]``: a random-projection (Johnson–Lindenstrauss) control encoder for sjalign.

Each image (C, H, W) is flattened and multiplied by a fixed Gaussian matrix R (C·H·W, D)
with entries N(0, 1/D), so distances are preserved up to 1 ± ε with high probability
when D = O(log n / ε²) (Johnson & Lindenstrauss 1984; Dasgupta & Gupta 2003). R is drawn
from ``torch.Generator().manual_seed(SEED)`` on the CPU the first time an image size is
seen, so the same spec gives the same latents on any machine and device.

    pip install -e plugins/sjalign-randproj
    sjalign embed --encoder randproj:64:1 --view crop:top -o rp_top.safetensors
"""

from __future__ import annotations

import math

import torch

from sjalign.encoders.base import EncoderOptions
from sjalign.device import resolve_device
from sjalign.errors import ShapeError, SjalignError

__all__ = ["RandomProjectionEncoder"]
USAGE = "use randproj:D or randproj:D:SEED, with D a positive integer and SEED an integer >= 0"


def _parse_int(text: str, what: str, spec: str, *, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SjalignError(f"encoder 'randproj:{spec}': {what} '{text}' is not an integer ({USAGE})") from None
    if not low <= value < 2**63:
        raise SjalignError(f"encoder 'randproj:{spec}': {what} must be >= {low}, got {value} ({USAGE})")
    return value


class RandomProjectionEncoder:
    """Latents = flatten(images) @ R, R (C·H·W, D) Gaussian / sqrt(D): (B, C, H, W) -> (B, D)."""

    spec = "randproj"
    modality = "image"
    syntax = "randproj:D[:SEED]"

    def __init__(self, dim: int, seed: int = 0, *, device: str = "auto"):
        self.num_features, self.seed = dim, seed
        self.device = resolve_device(device)
        self._matrices: dict[tuple[int, ...], torch.Tensor] = {}  # image shape (C, H, W) -> R

    @classmethod
    def from_spec(cls, arg: str, options: EncoderOptions) -> "RandomProjectionEncoder":
        parts = arg.split(":") if arg else []
        if not 1 <= len(parts) <= 2:
            raise SjalignError(f"encoder 'randproj:{arg}': {USAGE}")
        dim = _parse_int(parts[0], "D", arg, low=1)
        seed = _parse_int(parts[1], "SEED", arg, low=0) if len(parts) == 2 else 0
        if options.layer is not None:
            raise SjalignError("encoder 'randproj' has no layers (drop --layer)")
        if options.pooling != "mean":
            raise SjalignError(f"encoder 'randproj' pools nothing (it projects the whole image): "
                               f"drop --pooling {options.pooling}")
        return cls(dim, seed, device=options.device)

    def _matrix(self, shape: tuple[int, ...]) -> torch.Tensor:
        if shape not in self._matrices:
            gen = torch.Generator().manual_seed(self.seed)
            r = torch.randn(math.prod(shape), self.num_features, generator=gen) / math.sqrt(self.num_features)
            self._matrices[shape] = r.to(self.device)  # (C·H·W, D)
        return self._matrices[shape]

    @torch.no_grad()
    def embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(images) or images.ndim != 4:
            got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ShapeError(f"encoder 'randproj' expects images (B, C, H, W), got {got}")
        x = images.to(self.device, torch.float32).flatten(1)  # (B, C·H·W)
        return (x @ self._matrix(tuple(images.shape[1:]))).cpu()  # (B, D)

    def describe(self) -> dict:
        return {"layer": "projection", "pooling": "none", "config": {"dim": self.num_features, "seed": self.seed}}
