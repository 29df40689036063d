"""Views: functions from environment states to observations (SPEC §7).

A view spec is one or more parts joined by ``+`` and applied left to right, e.g.
``crop:top``, ``azimuth:30``, ``aug-b``, ``crop:bottom+pixel-shuffle:1``.

Every view takes float images (n, C, H, W) in [0, 1] with their state ids (n,) and
returns float images (n, C, H, W). Random views draw their parameters from a
generator seeded by (view, state id), so a state's observation is reproducible and
does not depend on batch composition. The structure ablations ``patch-shuffle`` and
``pixel-shuffle`` apply one fixed permutation to every state, chosen by the model's seed
(see :func:`resolve_view`).

Datasets whose views are separate images put their own choice first and these
transforms after it (``azimuth=0+pixel-shuffle`` for smallNORB, ``CAM_FRONT+aug-a`` for a
manifest); see :func:`sjalign.data.split_view`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from sjalign.errors import DataError

ViewFn = Callable[[torch.Tensor, np.ndarray], torch.Tensor]

DEFAULT_CROP_FRACTION = 4 / 7  # 16 of 28 rows: top and bottom overlap in 4 rows (14 %).
PERSPECTIVE_DISTANCE = 2.0  # camera distance in image widths for azimuth warps.


@dataclass(frozen=True)
class ViewInfo:
    """One registered view family: its syntax and what it does."""

    name: str
    syntax: str
    help: str


VIEWS = (
    ViewInfo("identity", "identity", "the image as it is"),
    ViewInfo("crop", "crop:top|bottom|left|right[:FRAC]",
             f"keep a band of FRAC of the rows/columns (default {DEFAULT_CROP_FRACTION:.3f}), zero the rest"),
    ViewInfo("azimuth", "azimuth:DEG",
             "perspective warp: the image plane turned DEG degrees about its vertical axis"),
    ViewInfo("aug-a", "aug-a", "random resized crop, flip, colour jitter (0.4, 0.4, 0.4, 0.1; p=0.8), "
             "random grayscale (p=0.2); kornia, seeded per state"),
    ViewInfo("aug-b", "aug-b", "aug-a plus Gaussian blur (p=0.5) and solarisation (p=0.2)"),
    ViewInfo("patch-shuffle", "patch-shuffle[:SEED[:PATCH]]",
             "ablation: a fixed random permutation of PATCHxPATCH patches (default 4); SEED defaults to the "
             "model's seed (pretrain --seed; embed: the jepa run's seed)"),
    ViewInfo("pixel-shuffle", "pixel-shuffle[:SEED]",
             "ablation: a fixed random permutation of pixels; SEED defaults to the model's seed"),
)


def crop_view(side: str, fraction: float = DEFAULT_CROP_FRACTION) -> ViewFn:
    """Keep a band of ``fraction`` of the image on one ``side``, zero the rest (size unchanged)."""
    if side not in ("top", "bottom", "left", "right"):
        raise DataError(f"view crop:{side}: side must be top, bottom, left or right")
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"view crop:{side}:{fraction}: fraction must be in (0, 1]")

    def apply(images: torch.Tensor, state_ids: np.ndarray) -> torch.Tensor:
        h, w = images.shape[-2:]
        out = torch.zeros_like(images)
        keep_h, keep_w = max(1, round(h * fraction)), max(1, round(w * fraction))
        if side == "top":
            out[..., :keep_h, :] = images[..., :keep_h, :]
        elif side == "bottom":
            out[..., h - keep_h:, :] = images[..., h - keep_h:, :]
        elif side == "left":
            out[..., :keep_w] = images[..., :keep_w]
        else:
            out[..., w - keep_w:] = images[..., w - keep_w:]
        return out

    return apply


def azimuth_homography(degrees: float, height: int, width: int) -> torch.Tensor:
    """Homography (3, 3) of a pinhole view of the image plane turned about its vertical axis.

    With centred source coordinates (x, y), camera distance D (in pixels) equal to the
    focal length and angle θ, the plane point (x cosθ, y, D + x sinθ) projects to
    u = D x cosθ / (D + x sinθ), v = D y / (D + x sinθ); θ = 0 is the identity.
    """
    theta = math.radians(degrees)
    dist = PERSPECTIVE_DISTANCE * width
    cx, cy = (width - 1) / 2, (height - 1) / 2
    to_centre = torch.tensor([[1.0, 0, -cx], [0, 1.0, -cy], [0, 0, 1.0]], dtype=torch.float64)
    warp = torch.tensor(
        [[math.cos(theta), 0, 0], [0, 1.0, 0], [math.sin(theta) / dist, 0, 1.0]], dtype=torch.float64
    )
    back = torch.tensor([[1.0, 0, cx], [0, 1.0, cy], [0, 0, 1.0]], dtype=torch.float64)
    return back @ warp @ to_centre


def azimuth_view(degrees: float) -> ViewFn:
    """Perspective warp for a viewpoint turned ``degrees`` about the vertical axis (|deg| < 90)."""
    if not -90.0 < degrees < 90.0:
        raise DataError(f"view azimuth:{degrees}: angle must be strictly between -90 and 90 degrees")

    def apply(images: torch.Tensor, state_ids: np.ndarray) -> torch.Tensor:
        from kornia.geometry.transform import warp_perspective

        h, w = images.shape[-2:]
        m = azimuth_homography(degrees, h, w).to(images.dtype)
        return warp_perspective(images, m.expand(len(images), 3, 3), (h, w), align_corners=True)

    return apply


# Appendix A.3 of the paper (ImageNet-1k views), as the common SimCLR/BYOL recipes implement it.
AUG_SCALE = (0.08, 1.0)          # random-resized-crop area fraction (torchvision / kornia default)
AUG_RATIO = (3 / 4, 4 / 3)       # random-resized-crop aspect ratio
AUG_JITTER = (0.4, 0.4, 0.4, 0.1)  # colour jitter: brightness, contrast, saturation, hue
AUG_JITTER_P = 0.8               # colour jitter is applied with p = 0.8 (RandomApply in the recipes)
AUG_GRAYSCALE_P = 0.2
AUG_BLUR_P = 0.5                 # aug-b only
AUG_BLUR_SIGMA = (0.1, 2.0)      # pixels; kernel side = odd number nearest 10 % of the image side
AUG_SOLARIZE_P = 0.2             # aug-b only; threshold 0.5


def augmentation_modules(name: str, channels: int, height: int, width: int) -> list:
    """The kornia modules of pipeline ``aug-a`` or ``aug-b`` for (C, H, W) images.

    ``aug-a``: RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3, output H x W), RandomHorizontalFlip(0.5),
    ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8, RandomGrayscale(0.2). ``aug-b``: the same plus
    RandomGaussianBlur (p = 0.5, sigma 0.1-2 px) and RandomSolarize (p = 0.2, threshold 0.5).
    For 1-channel images saturation, hue and grayscale do not apply and are left out.

    References:
        Social-JEPA, appendix A.3; Chen et al. 2020 (SimCLR), Grill et al. 2020 (BYOL).
    """
    import kornia.augmentation as K

    b, c, s, h = AUG_JITTER
    if channels == 1:
        s, h = 0.0, 0.0
    mods = [K.RandomResizedCrop((height, width), scale=AUG_SCALE, ratio=AUG_RATIO),
            K.RandomHorizontalFlip(p=0.5), K.ColorJitter(b, c, s, h, p=AUG_JITTER_P)]
    if channels != 1:
        mods.append(K.RandomGrayscale(p=AUG_GRAYSCALE_P))
    if name == "aug-b":
        k = 2 * round(0.05 * min(height, width)) + 1
        mods += [K.RandomGaussianBlur((k, k), AUG_BLUR_SIGMA, p=AUG_BLUR_P),
                 K.RandomSolarize(thresholds=0.0, additions=0.0, p=AUG_SOLARIZE_P)]
    return mods


def _state_seed(key: str, state_id: int) -> int:
    return zlib.crc32(np.array([int(state_id)], dtype=np.int64).tobytes(), zlib.crc32(key.encode()))


def _merge_params(plist: list[dict], idx: list[int], shape) -> dict:
    merged = {k: torch.cat([plist[i][k] for i in idx]) for k in plist[0] if k not in ("forward_input_shape", "order")}
    merged["forward_input_shape"] = torch.tensor((len(idx), *shape[1:]), dtype=torch.long)
    if "order" in plist[0]:
        merged["order"] = plist[idx[0]]["order"]
    return merged


def augment_view(name: str) -> ViewFn:
    """One of two augmentation pipelines (``aug-a``, ``aug-b``) from kornia modules, seeded per state.

    Each module's parameters for a state are drawn by the module's own sampler from torch's
    RNG seeded with a hash of (name, state id) (inside ``torch.random.fork_rng``, so the
    caller's RNG stream is untouched); the batch is then transformed in one call with those
    parameters. A state's observation is therefore reproducible and independent of the
    batch it arrives in. Colour-jitter orders differ per state, so that module runs once per
    group of states sharing an order.

    Shape: (n, C, H, W) float in [0, 1] -> (n, C, H, W) float in [0, 1].
    """

    def apply(images: torch.Tensor, state_ids: np.ndarray) -> torch.Tensor:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # many small ops: intra-op threads cost 3-6x here (docs/results.md)
        try:
            return _augment(images, state_ids)
        finally:
            torch.set_num_threads(threads)

    def _augment(images: torch.Tensor, state_ids: np.ndarray) -> torch.Tensor:
        n, c, h, w = images.shape
        if n == 0:
            return images
        mods = augmentation_modules(name, c, h, w)
        params: list[list[dict]] = [[] for _ in mods]
        with torch.random.fork_rng(devices=[]):
            for s in state_ids:
                torch.default_generator.manual_seed(_state_seed(name, s))  # CPU only: cheap
                for mod, acc in zip(mods, params):
                    acc.append(mod.forward_parameters((1, c, h, w)))
        out = images
        for mod, plist in zip(mods, params):
            if "order" not in plist[0]:
                out = mod(out, params=_merge_params(plist, list(range(n)), out.shape))
                continue
            groups: dict[tuple, list[int]] = {}
            for i, p in enumerate(plist):
                groups.setdefault(tuple(p["order"].tolist()), []).append(i)
            result = out.clone()
            for idx in groups.values():
                result[idx] = mod(out[idx], params=_merge_params(plist, idx, out.shape))
            out = result
        return out.clamp(0.0, 1.0)

    return apply


def shuffle_view(kind: str, seed: int = 0, patch: int = 4) -> ViewFn:
    """Structure ablation: a fixed permutation of patches or pixels, the same for every state."""
    if patch < 1:
        raise DataError(f"view {kind}: patch size must be at least 1")

    def apply(images: torch.Tensor, state_ids: np.ndarray) -> torch.Tensor:
        n, c, h, w = images.shape
        p = 1 if kind == "pixel-shuffle" else patch
        if h % p or w % p:
            raise DataError(f"view {kind}: image size {h}x{w} is not divisible by patch {p}")
        gh, gw = h // p, w // p
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(gh * gw))
        patches = images.reshape(n, c, gh, p, gw, p).permute(0, 1, 2, 4, 3, 5).reshape(n, c, gh * gw, p, p)
        patches = patches[:, :, perm]
        return patches.reshape(n, c, gh, gw, p, p).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)

    return apply


def _number(spec: str, text: str, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise DataError(f"view '{spec}': '{text}' is not a number") from None


def parse_view(spec: str, *, seed: int = 0) -> ViewFn:
    """Turn a view spec into a function; parts joined by ``+`` compose left to right.

    Args:
        spec: e.g. ``crop:top``, ``aug-b+patch-shuffle``, ``pixel-shuffle:3``.
        seed: the model's seed; ``patch-shuffle`` / ``pixel-shuffle`` without an explicit
            ``:SEED`` use the permutation of this seed (a fixed permutation per model, as in
            the paper's structure ablation). See :func:`resolve_view`.

    Raises:
        DataError: an unknown view or a bad parameter; the message lists the known views.
    """
    fns: list[ViewFn] = []
    for part in spec.split("+"):
        name, *args = part.strip().split(":")
        if name in ("identity", "full") and not args:
            continue
        if name == "crop" and 1 <= len(args) <= 2:
            frac = _number(spec, args[1]) if len(args) == 2 else DEFAULT_CROP_FRACTION
            fns.append(crop_view(args[0], frac))
        elif name == "azimuth" and len(args) == 1:
            fns.append(azimuth_view(_number(spec, args[0])))
        elif name in ("aug-a", "aug-b") and not args:
            fns.append(augment_view(name))
        elif name in ("patch-shuffle", "pixel-shuffle") and len(args) <= 2:
            perm_seed = _number(spec, args[0], int) if args and args[0] != "" else seed
            patch = _number(spec, args[1], int) if len(args) == 2 else 4
            fns.append(shuffle_view(name, perm_seed, patch))
        else:
            known = ", ".join(v.syntax for v in VIEWS)
            raise DataError(f"unknown view '{part}' in '{spec}' (known: {known})")

    def composed(images: torch.Tensor, state_ids: np.ndarray) -> torch.Tensor:
        for fn in fns:
            images = fn(images, state_ids)
        return images

    return composed


def resolve_view(spec: str, *, seed: int = 0) -> str:
    """The spec with the model seed written into every shuffle that has no explicit seed.

    ``resolve_view("crop:top+pixel-shuffle", seed=3) == "crop:top+pixel-shuffle:3"``; the
    resolved spec is what pretrain and embed record, so the permutation can be rebuilt.
    """
    parts = []
    for part in spec.split("+"):
        name, *args = part.strip().split(":")
        if name in ("patch-shuffle", "pixel-shuffle") and (not args or args[0] == ""):
            part = ":".join([name, str(seed), *args[1:]])
        parts.append(part.strip())
    return "+".join(parts)
