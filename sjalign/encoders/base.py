"""The encoder contract and the one door to every encoder: ``create_encoder(spec)``.

Encoders, built-in and third-party alike, register in the entry-point group
``sjalign.encoders``: the entry point's name is the spec prefix, its object a class with
``from_spec(arg, options) -> Encoder``. Only the requested entry point is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import torch

from sjalign.errors import SjalignError

GROUP = "sjalign.encoders"
# Used only when the package metadata is missing (running from a source tree without install).
_BUILTIN_FALLBACK = {"pixels": "sjalign.encoders.pixels:PixelsEncoder", "jepa": "sjalign.encoders.jepa:JepaEncoder",
                     "timm": "sjalign.encoders.timm_encoder:TimmEncoder",
                     "hf": "sjalign.encoders.hf:HFEncoder"}


@dataclass(frozen=True)
class EncoderOptions:
    """Options every encoder receives.

    Attributes:
        pooling: ``mean`` | ``cls`` | ``tokens`` (how patch tokens become one vector;
            ``tokens`` flattens them all).
        layer: hidden state of block N (None = final output; ``"all"`` = every block, for
            encoders with ``embed_batch_layers``).
        device: ``auto`` | ``cpu`` | ``cuda``...
        dtype: ``fp32`` | ``bf16`` (autocast on CUDA).
        image_size: side in pixels at which an encoder with a configurable input runs (timm: CNNs
            at any size, ViTs through ``set_input_size``, which resamples the position embeddings);
            None = the model's own input size (e.g. 224).
    """

    pooling: str = "mean"
    layer: int | str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    image_size: int | None = None


@runtime_checkable
class Encoder(Protocol):
    """What ``sjalign embed`` needs of an encoder.

    ``embed_batch`` maps a batch of observations to latents (B, d) float32,
    deterministically and independently of batch composition. Observations are images
    (B, C, H, W) float32 in [0, 1] (C = 1 for grayscale datasets; RGB models repeat it, see
    :func:`prepare_images`) when ``modality == "image"``, or a list of B strings when
    ``modality == "text"``. Encoders that support ``--layer all`` also implement
    ``embed_batch_layers(batch) -> list of (B, d_k)`` tensors, one per layer, in depth order.
    """

    spec: str
    num_features: int
    modality: str

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


def describe_encoders() -> dict[str, dict[str, Any]]:
    """Every installed encoder: ``{prefix: {"syntax", "modalities", "module"}}`` (imports each class;
    one that fails to import is listed with ``"error"`` instead of failing the listing)."""
    out: dict[str, dict[str, Any]] = {}
    for prefix, target in sorted(_entry_points().items()):
        try:
            cls = _load(target)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
            out[prefix] = {"syntax": f"{prefix}:ARG", "modalities": None, "error": f"{type(exc).__name__}: {exc}"}
            continue
        modalities = getattr(cls, "modalities", None) or (getattr(cls, "modality", "image"),)
        out[prefix] = {"syntax": getattr(cls, "syntax", f"{prefix}:ARG"), "modalities": list(modalities),
                       "module": f"{cls.__module__}.{cls.__qualname__}"}
    return out


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


POOLINGS = ("mean", "cls", "tokens")


def check_pooling(pooling: str, *, num_prefix: int, where: str = "encoder") -> None:
    """Refuse an unknown pooling, or ``cls`` for a model with no CLS token (``num_prefix`` < 1).

    Raises:
        SjalignError: one line naming the encoder and the problem.
    """
    if pooling not in POOLINGS:
        raise SjalignError(f"{where}: unknown pooling '{pooling}' (use {', '.join(POOLINGS)})")
    if pooling == "cls" and num_prefix < 1:
        raise SjalignError(f"{where}: this model has no CLS token, so --pooling cls is not available "
                           "(use --pooling mean)")


def pool_tokens(tokens: torch.Tensor, pooling: str, *, num_prefix: int = 0, mask: torch.Tensor | None = None,
                where: str = "encoder") -> torch.Tensor:
    """Turn token sequences into one vector per item.

    Args:
        tokens: (B, N, D) hidden states; the first ``num_prefix`` are CLS/register tokens.
        pooling: ``cls`` (token 0; needs num_prefix ≥ 1), ``mean`` (over the N − num_prefix
            patch tokens, or over unmasked tokens when ``mask`` is given), ``tokens``
            (every token flattened: (B, N·D)).
        mask: optional (B, N) 1/0 attention mask for text (masked mean).
        where: the spec, for error messages.

    Returns:
        (B, D), or (B, N·D) for ``tokens``.

    Raises:
        SjalignError: unknown pooling, or ``cls`` for a model without a CLS token.
    """
    check_pooling(pooling, num_prefix=num_prefix, where=where)
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "tokens":
        return tokens.flatten(1)
    if mask is not None:
        m = mask.to(tokens.dtype).unsqueeze(-1)  # (B, N, 1)
        return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)
    return tokens[:, num_prefix:].mean(1)


def prepare_images(images: torch.Tensor, *, size: tuple[int, int], mean, std, channels: int = 3,
                   interpolation: str = "bilinear") -> torch.Tensor:
    """Resize, match channels and normalise observations for a pretrained model.

    Args:
        images: (B, C, H, W) float in [0, 1]; C = 1 is repeated to ``channels`` (RGB models).
        size: (H', W') the model's input size (from timm's data config or the HF image processor).
        mean, std: per-channel normalisation of the model.

    Returns:
        (B, channels, H', W') float32.

    Raises:
        SjalignError: channels that cannot be matched (e.g. 3-channel images for a 1-channel model).
    """
    import torch.nn.functional as F

    if images.ndim != 4:
        raise SjalignError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    c = images.shape[1]
    if c != channels:
        if c == 1:
            images = images.expand(-1, channels, -1, -1)
        else:
            raise SjalignError(f"images have {c} channels but the model expects {channels}")
    if tuple(images.shape[-2:]) != tuple(size):
        mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
        kw = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
        images = F.interpolate(images, size=tuple(size), mode=mode, **kw)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return ((images - mean_t) / std_t).contiguous()
