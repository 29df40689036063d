"""Fashion-MNIST from the standard IDX gz files (Xiao et al. 2017, MIT licence).

State id = image index over the concatenation train (0-59999) then test (60000-69999).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sjalign.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
N_TRAIN = 60000
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
HOW_TO_GET = (
    "install them with 'apt-get install dataset-fashion-mnist' (Debian) or point "
    "--data-dir / $SJALIGN_DATA at a folder holding the four IDX .gz files"
)


@dataclass(frozen=True)
class ImageSet:
    """Images of one dataset selection.

    Attributes:
        images: (n, H, W) uint8 grayscale.
        state_ids: (n,) int64 environment state ids.
        labels: (n,) int64 class labels.
        is_test: (n,) bool, True for states of the official test split.
    """

    images: np.ndarray
    state_ids: np.ndarray
    labels: np.ndarray
    is_test: np.ndarray


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the first folder holding the four IDX files.

    Looks in ``data_dir``, then ``$SJALIGN_DATA`` (and its ``fashion-mnist`` subfolder),
    then the Debian package's location.

    Raises:
        DataError: none of them holds the files; the message says how to get them.
    """
    candidates: list[Path] = []
    if data_dir is not None:
        candidates += [Path(data_dir), Path(data_dir) / "fashion-mnist"]
    if os.environ.get("SJALIGN_DATA"):
        env = Path(os.environ["SJALIGN_DATA"])
        candidates += [env, env / "fashion-mnist"]
    candidates.append(DEBIAN_DIR)
    needed = [name for pair in FILES.values() for name in pair]
    for folder in candidates:
        if all((folder / name).is_file() for name in needed):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(f"Fashion-MNIST IDX files not found (looked in {looked}); {HOW_TO_GET}")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array.

    The IDX header is two zero bytes, a type code (0x08 = uint8), the number of
    dimensions, then one big-endian uint32 per dimension (LeCun et al. 1998).

    Raises:
        DataError: bad magic, unsupported type, or a size that disagrees with the header.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise DataError(f"{path}: IDX element type 0x{raw[2]:02x} is not supported (only uint8)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header says {expected} values of shape {shape} "
            f"but the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    split: str = "all",
    max_states: int | None = None,
) -> ImageSet:
    """Load Fashion-MNIST images with their state ids and labels.

    Args:
        data_dir: folder of the IDX files; see :func:`find_data_dir`.
        split: ``train`` (ids 0-59999), ``test`` (60000-69999) or ``all``.
        max_states: keep the first N states of each chosen part in proportion
            (``all``: first ceil(N*6/7) train and the rest from test), so that a
            subset still holds official test states.

    Raises:
        DataError: files missing or corrupt, unknown split, max_states < 1.
    """
    if split not in ("train", "test", "all"):
        raise DataError(f"unknown split '{split}' (use train, test or all)")
    if max_states is not None and max_states < 1:
        raise DataError(f"--max-states must be at least 1, got {max_states}")
    folder = find_data_dir(data_dir)
    parts = ["train", "test"] if split == "all" else [split]
    quotas = {p: None for p in parts}
    if max_states is not None:
        if split == "all":
            n_test = max(1, max_states // 7) if max_states > 1 else 0
            quotas = {"train": max_states - n_test, "test": n_test}
        else:
            quotas = {split: max_states}
    images, ids, labels, is_test = [], [], [], []
    for part in parts:
        img_name, lab_name = FILES[part]
        x = read_idx(folder / img_name)
        y = read_idx(folder / lab_name)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{folder / img_name}: images {x.shape} and labels {y.shape} do not match")
        n = len(x) if quotas[part] is None else min(quotas[part], len(x))
        offset = 0 if part == "train" else N_TRAIN
        images.append(x[:n])
        labels.append(y[:n].astype(np.int64))
        ids.append(np.arange(offset, offset + n, dtype=np.int64))
        is_test.append(np.full(n, part == "test"))
    return ImageSet(
        images=np.concatenate(images),
        state_ids=np.concatenate(ids),
        labels=np.concatenate(labels),
        is_test=np.concatenate(is_test),
    )
