"""Lazy image datasets: one row per state, read on access, rendered through a view.

An :class:`ImageSource` knows, for one dataset selection and one view's choice of image
(a smallNORB azimuth and camera, a manifest camera, or the one image of a folder entry),
the state id, label and split of every row, and reads row ``i`` as a (C, S, S) float32
tensor in [0, 1] only when asked (Pillow for image files, ``np.memmap`` for smallNORB,
an in-memory array for Fashion-MNIST). :class:`ViewDataset` puts the view's transforms
(crops, augmentation pipelines, shuffles) on top and is a map-style
:class:`torch.utils.data.Dataset`; :meth:`ViewDataset.loader` iterates it in order through a
DataLoader with worker processes, applying the view once per batch.

Image size: every row is brought to S x S, resizing the shorter side to S (bilinear,
antialiased) and cropping the centre; sources with one native size (Fashion-MNIST 28,
smallNORB 96) keep it unless a size is asked for; image files default to
:data:`DEFAULT_IMAGE_SIZE`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from sjalign.data.views import parse_view, resolve_view
from sjalign.errors import DataError, SjalignError

DEFAULT_IMAGE_SIZE = 96
IN_MEMORY_BYTES = 2 * 2**30  # pretrain renders a selection up to this size once; larger ones are read lazily
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def fit_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bilinear, antialiased) and crop the centre square.

    Shape: (C, h, w) or (B, C, h, w) float -> (..., C, size, size); a no-op at the right size.
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    import torch.nn.functional as F

    batch = x if x.ndim == 4 else x[None]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    batch = F.interpolate(batch, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    batch = batch[..., top:top + size, left:left + size].clamp(0.0, 1.0)
    return batch if x.ndim == 4 else batch[0]


@dataclass
class ImageSource:
    """Rows of one dataset selection for one view; subclasses read the pixels.

    Attributes:
        name: the dataset as the user named it (for messages and metadata).
        state_ids: (n,) int64, unique.
        labels: (n,) int64 or None.
        is_test: (n,) bool or None (None: the dataset has no split).
        channels: C of every row.
        native_size: S when every row is S x S already, else None.
        class_names: label -> name, or None.
        rows: (n,) int64 row handles of the subclass (file index, array index...).
    """

    name: str
    state_ids: np.ndarray
    labels: np.ndarray | None
    is_test: np.ndarray | None
    channels: int
    native_size: int | None
    class_names: list[str] | None = None
    rows: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = np.arange(len(self.state_ids), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.state_ids)

    def read(self, i: int, size: int) -> torch.Tensor:
        """Row ``i`` as a (C, size, size) float32 tensor in [0, 1].

        Raises:
            DataError: the image cannot be read (the message names the file).
        """
        raise NotImplementedError

    def read_batch(self, idx: list[int], size: int) -> torch.Tensor:
        """Rows ``idx`` as a (B, C, size, size) float32 tensor (subclasses may vectorise)."""
        return torch.stack([self.read(i, size) for i in idx])

    def subset(self, idx: np.ndarray) -> "ImageSource":
        """The same source restricted to rows ``idx`` (in that order)."""
        out = copy.copy(self)
        out.state_ids = self.state_ids[idx]
        out.labels = None if self.labels is None else self.labels[idx]
        out.is_test = None if self.is_test is None else self.is_test[idx]
        out.rows = self.rows[idx]
        return out


class ArraySource(ImageSource):
    """Rows of an in-memory uint8 array (n, H, W) or (n, C, H, W) (Fashion-MNIST)."""

    def __init__(self, images: np.ndarray, **kw) -> None:
        self.images = images
        c = 1 if images.ndim == 3 else images.shape[1]
        super().__init__(channels=c, native_size=images.shape[-1] if images.shape[-1] == images.shape[-2] else None,
                         **kw)

    def read_batch(self, idx: list[int], size: int) -> torch.Tensor:
        x = np.asarray(self.images[self.rows[np.asarray(idx, dtype=np.int64)]])
        t = torch.from_numpy(x.astype(np.float32) / 255.0)
        if t.ndim == 3:
            t = t[:, None]
        return fit_square(t, size)

    def read(self, i: int, size: int) -> torch.Tensor:
        return self.read_batch([i], size)[0]


class FileSource(ImageSource):
    """Rows that are image files, decoded with Pillow as RGB on access (manifests, image folders)."""

    def __init__(self, paths: list[Path], **kw) -> None:
        self.paths = paths
        super().__init__(channels=3, native_size=None, **kw)

    def read(self, i: int, size: int) -> torch.Tensor:
        from PIL import Image, ImageOps

        path = self.paths[int(self.rows[i])]
        try:
            with Image.open(path) as img:
                img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale >= size (much faster)
                img = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: cannot read image ({exc})") from None
        return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class _Failed:
    """What a DataLoader worker returns instead of raising (so the message stays one line)."""

    message: str


class _Rows(torch.utils.data.Dataset):
    """Raw rows for the DataLoader: ``__getitems__`` reads a batch; the view is applied in collate."""

    def __init__(self, ds: "ViewDataset") -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]):
        try:
            return self.ds.source.read_batch(list(idx), self.ds.image_size), list(idx)
        except SjalignError as exc:
            return _Failed(str(exc))


class _Collate:
    """Apply the view to a raw batch (runs in the worker process)."""

    def __init__(self, ds: "ViewDataset") -> None:
        self.ds = ds

    def __call__(self, item):
        if isinstance(item, _Failed):
            return item
        x, idx = item
        try:
            return self.ds.render(x, np.asarray(idx, dtype=np.int64))
        except SjalignError as exc:
            return _Failed(str(exc))


class ViewDataset(torch.utils.data.Dataset):
    """A dataset selection seen through a view: item ``i`` is the (C, S, S) float32 observation of state ``i``.

    Args:
        source: the rows (state ids, labels, split, pixels read on access).
        view: the view's transforms (``identity``, ``aug-a``, ``crop:top+pixel-shuffle`` ...;
            a dataset's own image selector such as ``azimuth=8`` is already in ``source``).
        image_size: S; None = the source's native size, else :data:`DEFAULT_IMAGE_SIZE`.
        seed: the model seed for shuffles without an explicit seed (see :func:`resolve_view`).
        view_name: the full view spec as given (metadata); defaults to ``view``.

    Raises:
        DataError: a bad view, or an image size below 1.
    """

    def __init__(self, source: ImageSource, view: str = "identity", *, image_size: int | None = None,
                 seed: int = 0, view_name: str | None = None) -> None:
        if image_size is not None and image_size < 1:
            raise DataError(f"--image-size must be at least 1, got {image_size}")
        self.source = source
        self.transforms = view
        self.seed = seed
        self.view_fn = parse_view(view, seed=seed)
        self.view = resolve_view(view_name or view, seed=seed)
        self.image_size = image_size or source.native_size or DEFAULT_IMAGE_SIZE

    # -- what a latents file records -------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.source.name

    @property
    def state_ids(self) -> np.ndarray:
        return self.source.state_ids

    @property
    def labels(self) -> np.ndarray | None:
        return self.source.labels

    @property
    def is_test(self) -> np.ndarray | None:
        return self.source.is_test

    @property
    def class_names(self) -> list[str] | None:
        return self.source.class_names

    @property
    def channels(self) -> int:
        return self.source.channels

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, S, S) of every item."""
        return (self.source.channels, self.image_size, self.image_size)

    @property
    def nbytes(self) -> int:
        """Bytes of every item rendered as float32 (what :meth:`materialize` would hold)."""
        c, h, w = self.shape
        return len(self) * c * h * w * 4

    # -- map-style access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.source)

    def render(self, raw: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        """Apply the view to raw rows (B, C, S, S) of indices ``idx`` -> (B, C, S, S)."""
        return self.view_fn(raw, self.source.state_ids[idx]).contiguous()

    def __getitems__(self, idx: list[int]) -> list[torch.Tensor]:
        """Items ``idx`` rendered as one batch (what a DataLoader with default collate calls)."""
        idx = [int(i) for i in idx]
        return list(self.render(self.source.read_batch(idx, self.image_size), np.asarray(idx, dtype=np.int64)))

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.__getitems__([i % len(self)])[0]

    def subset(self, idx: np.ndarray) -> "ViewDataset":
        """The same view of rows ``idx`` only."""
        out = copy.copy(self)
        out.source = self.source.subset(np.asarray(idx, dtype=np.int64))
        return out

    def loader(self, batch_size: int = 256, num_workers: int = 0) -> Iterator[torch.Tensor]:
        """Batches (B, C, S, S) in row order, read by ``num_workers`` processes (0 = in this one).

        Raises:
            DataError: an unreadable image (one line naming the file), from any worker.
        """
        if batch_size < 1:
            raise DataError(f"--batch-size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise DataError(f"--num-workers must be >= 0, got {num_workers}")
        dl = torch.utils.data.DataLoader(_Rows(self), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, collate_fn=_Collate(self),
                                         generator=torch.Generator().manual_seed(0))  # leaves torch's RNG alone
        for batch in dl:
            if isinstance(batch, _Failed):
                raise DataError(batch.message)
            yield batch

    def materialize(self, *, batch_size: int = 1024, num_workers: int = 0) -> torch.Tensor:
        """Every item at once: (n, C, S, S) float32 (for small datasets and in-memory training)."""
        if len(self) == 0:
            raise DataError(f"{self.name}: the dataset selection is empty")
        return torch.cat(list(self.loader(batch_size, num_workers)))

    def info(self) -> dict:
        """Dataset, view, image shape and counts (for metadata and messages)."""
        n_test = None if self.is_test is None else int(self.is_test.sum())
        return {"dataset": self.name, "view": self.view, "shape": list(self.shape), "n": len(self), "n_test": n_test}
