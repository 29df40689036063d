"""The encoder contract and the one door to every encoder: ``create_encoder(spec)``.

Encoders, built-in and third-party alike, register in the entry-point group
``sjalign.encoders``: the entry point's name is the spec prefix, its object a class with
``from_spec(arg, options) -> Encoder``. Only the requested entry point is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

import torch

from sjalign.errors import SjalignError

GROUP = "sjalign.encoders"
# Used only when the package metadata is missing (running from a source tree without install).
_BUILTIN_FALLBACK = {"pixels": "sjalign.encoders.pixels:PixelsEncoder", "jepa": "sjalign.encoders.jepa:JepaEncoder"}


@dataclass(frozen=True)
class EncoderOptions:
    """Options every encoder receives.

    Attributes:
        pooling: ``mean`` | ``cls`` | ``tokens`` (how patch tokens become one vector).
        layer: hidden state of block N (None = final output).
        device: ``auto`` | ``cpu`` | ``cuda``...
        dtype: ``fp32`` | ``bf16`` (autocast on CUDA).
    """

    pooling: str = "mean"
    layer: int | None = None
    device: str = "auto"
    dtype: str = "fp32"


@runtime_checkable
class Encoder(Protocol):
    """What ``sjalign embed`` needs of an encoder.

    ``embed_batch`` maps observations (B, C, H, W) float32 in [0, 1] to latents (B, d)
    float32, deterministically and independently of batch composition.
    """

    spec: str
    num_features: int

    def embed_batch(self, images: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict: ...


def _entry_points() -> dict[str, object]:
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    for name, target in _BUILTIN_FALLBACK.items():
        found.setdefault(name, target)
    return found


def available_encoders() -> list[str]:
    """Spec prefixes of every installed encoder (nothing is imported)."""
    return sorted(_entry_points())


def _load(target) -> type:
    if isinstance(target, str):
        import importlib

        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return target.load()


def create_encoder(spec: str, options: EncoderOptions = EncoderOptions()) -> Encoder:
    """Build the encoder a spec names: ``PREFIX`` or ``PREFIX:ARG`` (e.g. ``pixels``, ``jepa:runs/a``).

    Raises:
        SjalignError: unknown prefix (the message lists the installed ones) or a bad argument.
    """
    prefix, _, arg = spec.partition(":")
    eps = _entry_points()
    if prefix not in eps:
        raise SjalignError(f"unknown encoder '{spec}' (installed: {', '.join(sorted(eps))})")
    cls = _load(eps[prefix])
    encoder = cls.from_spec(arg, options)
    encoder.spec = spec
    return encoder
