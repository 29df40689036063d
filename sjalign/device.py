"""Device choice and mixed precision, shared by training, encoders and metrics. CPU always works."""

from __future__ import annotations

import contextlib

import torch

from sjalign.errors import SjalignError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; other names are checked.

    Raises:
        SjalignError: an unknown device name, or CUDA asked for where there is none.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SjalignError(f"unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SjalignError(f"device '{device}' asked for, but CUDA is not available here")
    return dev


def autocast(device: torch.device, dtype: str):
    """bf16 autocast on CUDA when ``dtype == "bf16"``; otherwise a no-op context (fp32)."""
    if dtype == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
