"""Views: functions from environment states to observations (SPEC §7).

A view spec is one or more parts joined by ``+`` and applied left to right, e.g.
``crop:top``, ``azimuth:30``, ``aug-b``, ``crop:bottom+pixel-shuffle:1``.

Every view takes float images (n, C, H, W) in [0, 1] with their state ids (n,) and
returns float images (n, C, H, W). Random views draw their parameters from a
generator seeded by (view, state id), so a state's observation is reproducible and
does not depend on batch composition.
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
    ViewInfo("aug-a", "aug-a", "random resized crop, flip, brightness/contrast jitter (seeded per state)"),
    ViewInfo("aug-b", "aug-b", "aug-a plus Gaussian blur (p=0.5) and solarisation (p=0.2)"),
    ViewInfo("patch-shuffle", "patch-shuffle[:SEED[:PATCH]]",
             "ablation: a fixed random permutation of PATCHxPATCH patches (default 4)"),
    ViewInfo("pixel-shuffle", "pixel-shuffle[:SEED]", "ablation: a fixed random permutation of pixels"),
)


def _state_rngs(key: str, state_ids: np.ndarray) -> list[np.random.Generator]:
    base = zlib.crc32(key.encode())
    return [np.random.default_rng([base, int(s)]) for s in state_ids]


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


def augment_view(name: str) -> ViewFn:
    """One of two augmentation pipelines (``aug-a``, ``aug-b``), seeded per state.

    Parameters are drawn per state from a generator keyed by (name, state id); the
    image operations are kornia's.
    """
    strong = name == "aug-b"

    def apply(images: torch.Tensor, state_ids: np.ndarray) -> torch.Tensor:
        import kornia

        n, _, h, w = images.shape
        rngs = _state_rngs(name, state_ids)
        boxes, flip, bright, contrast, blur, sigma, solar = [], [], [], [], [], [], []
        for rng in rngs:
            scale = rng.uniform(0.6, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            bw = min(w, math.sqrt(scale * ratio) * w)
            bh = min(h, math.sqrt(scale / ratio) * h)
            x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            boxes.append([[x0, y0], [x0 + bw - 1, y0], [x0 + bw - 1, y0 + bh - 1], [x0, y0 + bh - 1]])
            flip.append(rng.random() < 0.5)
            bright.append(rng.uniform(-0.2, 0.2))
            contrast.append(rng.uniform(0.6, 1.4))
            blur.append(strong and rng.random() < 0.5)
            sigma.append(rng.uniform(0.1, 1.0))
            solar.append(strong and rng.random() < 0.2)
        dt = images.dtype
        out = kornia.geometry.transform.crop_and_resize(images, torch.tensor(boxes, dtype=dt), (h, w))
        flip_t = torch.tensor(flip)
        out = torch.where(flip_t[:, None, None, None], kornia.geometry.transform.hflip(out), out)
        out = kornia.enhance.adjust_contrast(out, torch.tensor(contrast, dtype=dt))
        out = kornia.enhance.adjust_brightness(out, torch.tensor(bright, dtype=dt))
        if strong:
            sig = torch.tensor(sigma, dtype=dt)[:, None].expand(n, 2).contiguous()
            blurred = kornia.filters.gaussian_blur2d(out, (3, 3), sig)
            out = torch.where(torch.tensor(blur)[:, None, None, None], blurred, out)
            out = torch.where(torch.tensor(solar)[:, None, None, None], kornia.enhance.solarize(out, 0.5), out)
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


def parse_view(spec: str) -> ViewFn:
    """Turn a view spec into a function; parts joined by ``+`` compose left to right.

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
            seed = _number(spec, args[0], int) if args else 0
            patch = _number(spec, args[1], int) if len(args) == 2 else 4
            fns.append(shuffle_view(name, seed, patch))
        else:
            known = ", ".join(v.syntax for v in VIEWS)
            raise DataError(f"unknown view '{part}' in '{spec}' (known: {known})")

    def composed(images: torch.Tensor, state_ids: np.ndarray) -> torch.Tensor:
        for fn in fns:
            images = fn(images, state_ids)
        return images

    return composed
