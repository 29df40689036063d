"""Import torchvision (and so timm and transformers' vision models) on CPU-only torch builds.

With CPU torch 2.13.0 pip resolves torchvision to 0.28.0, a CUDA build whose C++ ops fail to
register, so ``import torchvision`` raises ``RuntimeError: operator torchvision::nms does not
exist``. That breaks ``import timm`` and transformers' vision models. Only when that exact
error occurs, the missing operator schemas are defined (no kernels: torchvision's own C++ ops
stay unavailable, and nothing in sjalign needs them) and the import is retried. A working
torchvision is left alone.
"""

from __future__ import annotations

import sys

NMS_ERROR = "operator torchvision::nms does not exist"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the schema fragment alive for the whole process
patched = False


def import_torchvision():
    """Import and return torchvision, registering the missing op schemas if (and only if) needed.

    Raises:
        ImportError: torchvision is not installed.
        RuntimeError: any other torchvision import failure (re-raised unchanged).
    """
    global _library, patched
    try:
        import torchvision
        return torchvision
    except RuntimeError as exc:
        if NMS_ERROR not in str(exc):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # drop the half-imported package before retrying
    if _library is None:
        _library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS:
            _library.define(schema)
    patched = True
    import torchvision

    return torchvision


def import_timm():
    """``import timm`` after :func:`import_torchvision`."""
    import_torchvision()
    import timm

    return timm


def import_transformers():
    """``import transformers`` after :func:`import_torchvision`, with its progress bars silenced."""
    try:
        import_torchvision()
    except ImportError:
        pass  # transformers works without torchvision for text models
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return transformers
