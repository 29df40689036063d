"""smallNORB from its official binary-matrix files (LeCun, Huang & Bottou, CVPR 2004).

Get the six files from https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/ and put them
(gzipped or not; uncompressed ``-dat`` files are memory-mapped, gzipped ones are read
into memory) in ``--data-dir``, ``$SJALIGN_DATA`` or ``$SJALIGN_DATA/smallnorb``::

    smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat   (24,300 stereo pairs)
    smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat    (24,300 stereo pairs)

Binary-matrix format (all little-endian): int32 magic (element type: 0x1E3D4C55 uint8,
0x1E3D4C54 int32, 0x1E3D4C56 int16, 0x1E3D4C51 float32, 0x1E3D4C53 float64), int32
ndim, then max(3, ndim) int32 dimensions (unused ones are 1), then the data, row-major.
``-dat``: uint8 (N, 2, 96, 96), the left and right camera images; ``-cat``: int32 (N,)
category 0-4 (animal, human, airplane, truck, car); ``-info``: int32 (N, 4) = instance 0-9,
elevation 0-8 (30 to 70 degrees in steps of 5), azimuth 0, 2, ..., 34 (x10 degrees),
lighting 0-5.

States and views (the paper's viewpoint setting): a state is (set, category, instance,
elevation, lighting, k); a view picks the image: ``azimuth=A`` (or a range ``azimuth=A-B``
of even azimuths, wrapping past 34, or ``azimuth=all``) and ``camera=left|right`` (default
left), e.g. ``azimuth=0``, ``azimuth=18,camera=right``, ``azimuth=0-8``. k is the position of
the image's azimuth in the view's list, so ``azimuth=0`` and ``azimuth=18`` pair the same
object under the same elevation and lighting, 180 degrees apart, and ranges of equal length
pair azimuths at a constant offset. State id (decimal digits, readable)::

    id = set·10⁶ + category·10⁵ + instance·10⁴ + elevation·10³ + lighting·10² + k

with set 0 = training (the official train split), 1 = testing (test split); the two sets
hold different instances (4, 6, 7, 8, 9 and 0, 1, 2, 3, 5).
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sjalign.data.lazy import ImageSource, fit_square
from sjalign.data.selection import Subset, select_states
from sjalign.errors import DataError

URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
MAGIC = {0x1E3D4C55: np.uint8, 0x1E3D4C54: np.int32, 0x1E3D4C56: np.int16, 0x1E3D4C51: np.float32,
         0x1E3D4C53: np.float64}
MAGIC_OF = {np.dtype(v): k for k, v in MAGIC.items()}
PACKED_MAGIC = 0x1E3D4C52
SETS = {"training": "smallnorb-5x46789x9x18x6x2x96x96-training", "testing": "smallnorb-5x01235x9x18x6x2x96x96-testing"}
CATEGORIES = ["animal", "human", "airplane", "truck", "car"]
AZIMUTHS = tuple(range(0, 36, 2))
CAMERAS = ("left", "right")
INFO_RANGES = {"instance": 10, "elevation": 9, "azimuth": 36, "lighting": 6}
HOW_TO_GET = (f"download the six smallnorb-*.mat.gz files from {URL} and point --data-dir (or $SJALIGN_DATA) "
              "at their folder (gunzip the -dat files to read them lazily)")
MAX_NDIM = 16


@dataclass(frozen=True)
class NorbHeader:
    """A binary-matrix header: element type, shape, data offset in bytes, and the file."""

    path: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int


def _parse_header(path: Path, head: bytes, total: int) -> NorbHeader:
    if len(head) < 8:
        raise DataError(f"{path}: not a NORB binary matrix (file too short for a header: {total} bytes)")
    magic, ndim = struct.unpack("<ii", head[:8])
    magic &= 0xFFFFFFFF
    if magic == PACKED_MAGIC:
        raise DataError(f"{path}: packed NORB matrices (magic 0x{magic:08X}) are not supported")
    if magic not in MAGIC:
        raise DataError(f"{path}: not a NORB binary matrix (bad magic number 0x{magic:08X})")
    if not 0 <= ndim <= MAX_NDIM:
        raise DataError(f"{path}: NORB header has an invalid number of dimensions ({ndim})")
    offset = 8 + 4 * max(3, ndim)
    if len(head) < offset:
        raise DataError(f"{path}: NORB header is truncated ({total} bytes, header needs {offset})")
    dims = struct.unpack(f"<{max(3, ndim)}i", head[8:offset])
    shape = tuple(int(d) for d in dims[:ndim])
    if any(d < 0 for d in dims):
        raise DataError(f"{path}: NORB header has a negative dimension {dims}")
    dtype = np.dtype(MAGIC[magic]).newbyteorder("<")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if total - offset != expected:
        raise DataError(f"{path}: NORB header says shape {shape} of {dtype.name} ({expected} bytes) but the file "
                        f"holds {total - offset} bytes after the header")
    return NorbHeader(path, dtype, shape, offset)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def read_norb_header(path: str | os.PathLike) -> NorbHeader:
    """Read and check the header of an uncompressed NORB binary-matrix file.

    Raises:
        DataError: unreadable file, bad magic number, bad ndim, or sizes that disagree with the
            file length.
    """
    path = Path(path)
    try:
        total = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8 + 4 * MAX_NDIM)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return _parse_header(path, head, total)


def read_norb(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """Read a NORB binary-matrix file (``.gz`` allowed) into an array of the header's shape.

    Args:
        mmap: memory-map an uncompressed file instead of reading it (read-only).

    Returns:
        Array of the header's dtype (little-endian) and shape (ndim dimensions).

    Raises:
        DataError: see :func:`read_norb_header`.
    """
    path = Path(path)
    if path.suffix == ".gz":
        raw = _read_bytes(path)
        h = _parse_header(path, raw[:8 + 4 * MAX_NDIM], len(raw))
        return np.frombuffer(raw, dtype=h.dtype, offset=h.offset).reshape(h.shape)
    h = read_norb_header(path)
    if mmap:
        if int(np.prod(h.shape)) == 0:
            return np.zeros(h.shape, h.dtype)
        return np.memmap(path, dtype=h.dtype, mode="r", offset=h.offset, shape=h.shape)
    return np.fromfile(path, dtype=h.dtype, offset=h.offset).reshape(h.shape)


def write_norb(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write an array as a NORB binary-matrix file (the official layout; for tests and benchmarks).

    Raises:
        DataError: an element type the format has no magic number for.
    """
    a = np.ascontiguousarray(array)
    dt = a.dtype.newbyteorder("=")
    if dt not in MAGIC_OF:
        raise DataError(f"{path}: NORB matrices hold uint8, int16, int32, float32 or float64, not {a.dtype}")
    dims = list(a.shape) + [1] * max(0, 3 - a.ndim)
    header = struct.pack(f"<Ii{len(dims)}i", MAGIC_OF[dt], a.ndim, *dims)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(header)
        f.write(a.astype(dt.newbyteorder("<"), copy=False).tobytes())
    return path


def find_smallnorb(data_dir: str | os.PathLike | None = None) -> dict[str, dict[str, Path]]:
    """The smallNORB files present: ``{"training": {"dat": path, "cat": ..., "info": ...}, "testing": ...}``.

    Looks in ``data_dir`` (and its ``smallnorb`` subfolder), then ``$SJALIGN_DATA`` (and its
    ``smallnorb`` subfolder); a set counts when its three files are there (``.mat`` or ``.mat.gz``).

    Raises:
        DataError: no complete set in any of the folders (the message says how to get them), or a
            set with only some of its three files.
    """
    folders: list[Path] = []
    for base in (data_dir, os.environ.get("SJALIGN_DATA") or None):
        if base is not None:
            folders += [Path(base), Path(base) / "smallnorb"]
    for folder in folders:
        found: dict[str, dict[str, Path]] = {}
        for set_name, stem in SETS.items():
            files = {}
            for part in ("dat", "cat", "info"):
                for suffix in (".mat", ".mat.gz"):
                    if (folder / f"{stem}-{part}{suffix}").is_file():
                        files[part] = folder / f"{stem}-{part}{suffix}"
                        break
            if files and len(files) < 3:
                missing = ", ".join(f"{stem}-{p}.mat" for p in ("dat", "cat", "info") if p not in files)
                raise DataError(f"{folder}: smallNORB {set_name} set is incomplete (missing {missing})")
            if files:
                found[set_name] = files
        if found:
            return found
    looked = ", ".join(str(f) for f in folders) or "nowhere: no --data-dir and no $SJALIGN_DATA"
    raise DataError(f"smallNORB files not found (looked in {looked}); {HOW_TO_GET}")


@dataclass(frozen=True)
class NorbView:
    """A parsed smallNORB image selector: the azimuths in order (k = position) and the camera index."""

    azimuths: tuple[int, ...]
    camera: int


def parse_selector(text: str | None) -> NorbView:
    """``azimuth=A|A-B|all[,camera=left|right]`` -> :class:`NorbView`.

    Raises:
        DataError: no azimuth, an unknown key, an odd or out-of-range azimuth, an unknown camera.
    """
    syntax = "azimuth=A[,camera=left|right] with A in 0, 2, ..., 34 (x10 degrees), a range A-B, or all"
    if not text:
        raise DataError(f"smallnorb: choose a view: {syntax}")
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in ("azimuth", "camera") or key in fields:
            raise DataError(f"smallnorb: bad view '{text}' (use {syntax})")
        fields[key] = value
    if "azimuth" not in fields:
        raise DataError(f"smallnorb: view '{text}' has no azimuth (use {syntax})")

    def azimuth(v: str) -> int:
        try:
            a = int(v)
        except ValueError:
            raise DataError(f"smallnorb: azimuth '{v}' is not a number (use {syntax})") from None
        if a not in AZIMUTHS:
            raise DataError(f"smallnorb: azimuth {a} does not exist (0, 2, ..., 34 in units of 10 degrees)")
        return a

    value = fields["azimuth"]
    if value == "all":
        azimuths = AZIMUTHS
    elif "-" in value:
        lo, _, hi = value.partition("-")
        a, b = azimuth(lo), azimuth(hi)
        azimuths = tuple((a + 2 * j) % 36 for j in range(((b - a) % 36) // 2 + 1))
    else:
        azimuths = (azimuth(value),)
    camera = fields.get("camera", "left")
    if camera not in CAMERAS:
        raise DataError(f"smallnorb: camera '{camera}' (use left or right)")
    return NorbView(azimuths, CAMERAS.index(camera))


def encode_state(set_index, category, instance, elevation, lighting, k) -> np.ndarray:
    """State ids (see the module docstring); arguments broadcast as int64 arrays."""
    parts = [np.asarray(v, dtype=np.int64) for v in (set_index, category, instance, elevation, lighting, k)]
    s, c, i, e, li, kk = parts
    return s * 10**6 + c * 10**5 + i * 10**4 + e * 10**3 + li * 10**2 + kk


@dataclass(frozen=True)
class _Set:
    dat: NorbHeader | np.ndarray  # header of an uncompressed file (memory-mapped on access) or the array
    cat: np.ndarray
    info: np.ndarray


def _load_set(set_name: str, files: dict[str, Path]) -> _Set:
    dat_path = files["dat"]
    if dat_path.suffix == ".gz":
        dat: NorbHeader | np.ndarray = read_norb(dat_path)
        shape, dtype = dat.shape, dat.dtype
    else:
        dat = read_norb_header(dat_path)
        shape, dtype = dat.shape, dat.dtype
    if len(shape) != 4 or shape[1] != 2 or dtype != np.uint8:
        raise DataError(f"{dat_path}: expected a uint8 matrix (N, 2, H, W) of stereo pairs, got {dtype.name} {shape}")
    cat = read_norb(files["cat"])
    info = read_norb(files["info"])
    n = shape[0]
    if cat.dtype.kind not in "iu" or cat.reshape(-1).shape != (n,):
        raise DataError(f"{files['cat']}: expected {n} integer categories, got {cat.dtype.name} {cat.shape}")
    if info.dtype.kind not in "iu" or info.shape != (n, 4):
        raise DataError(f"{files['info']}: expected an integer matrix ({n}, 4), got {info.dtype.name} {info.shape}")
    cat = cat.reshape(-1).astype(np.int64)
    info = info.astype(np.int64)
    if n and (cat.min() < 0 or cat.max() >= len(CATEGORIES)):
        raise DataError(f"{files['cat']}: categories must be 0-{len(CATEGORIES) - 1}, found {cat.min()}-{cat.max()}")
    for j, (name, hi) in enumerate(INFO_RANGES.items()):
        col = info[:, j]
        if n and (col.min() < 0 or col.max() >= hi or (name == "azimuth" and (col % 2).any())):
            raise DataError(f"{files['info']}: column {j} ({name}) out of range (found {col.min()}-{col.max()})")
    return _Set(dat, cat, info)


class SmallNorbSource(ImageSource):
    """smallNORB rows: one camera image of one stereo pair, memory-mapped (or in memory when gzipped)."""

    def __init__(self, arrays: list[NorbHeader | np.ndarray], entries: np.ndarray, camera: int, **kw) -> None:
        self._arrays = arrays  # per set: header (memory-mapped lazily, per process) or array
        self._mapped: dict[int, np.ndarray] = {}
        self.entries = entries  # (n_rows, 2): set index, entry index
        self.camera = camera
        first = next(a for a in arrays if a is not None)
        h, w = first.shape[2], first.shape[3]
        super().__init__(channels=1, native_size=h if h == w else None, **kw)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_mapped"] = {}  # a worker maps the file itself
        return state

    def _array(self, s: int) -> np.ndarray:
        if s not in self._mapped:
            a = self._arrays[s]
            self._mapped[s] = (np.memmap(a.path, dtype=a.dtype, mode="r", offset=a.offset, shape=a.shape)
                               if isinstance(a, NorbHeader) else a)
        return self._mapped[s]

    def read_batch(self, idx: list[int], size: int) -> torch.Tensor:
        rows = self.entries[self.rows[np.asarray(idx, dtype=np.int64)]]
        out = np.empty((len(rows), 1, *self._array(int(rows[0, 0])).shape[2:]), np.uint8) if len(rows) else None
        if out is None:
            return torch.zeros(0, 1, size, size)
        for j, (s, e) in enumerate(rows):
            out[j, 0] = self._array(int(s))[int(e), self.camera]
        return fit_square(torch.from_numpy(out.astype(np.float32) / 255.0), size)

    def read(self, i: int, size: int) -> torch.Tensor:
        return self.read_batch([i], size)[0]


def open_smallnorb(selector: str | None, subset: Subset = Subset(), *,
                   data_dir: str | os.PathLike | None = None) -> SmallNorbSource:
    """The rows of a smallNORB view for a subset of states.

    Candidates are every state (set, category, instance, elevation, lighting, k) with k below
    the view's number of azimuths, over every combination present in the files, so two views
    with as many azimuths select the same states. The subset's ``--max-states`` takes states in
    hashed id order (the files are not shuffled by class). Selected states whose image for the
    view is missing from the files are dropped with a warning.

    Raises:
        DataError: files missing or corrupt, a bad view, duplicate entries, or an empty selection.
    """
    view = parse_selector(selector)
    found = find_smallnorb(data_dir)
    arrays: list[NorbHeader | np.ndarray | None] = [None, None]
    keys, entries_of = [], {}
    for s, set_name in enumerate(("training", "testing")):
        if set_name not in found:
            continue
        st = _load_set(set_name, found[set_name])
        arrays[s] = st.dat
        inst, elev, azim, light = st.info.T
        base = encode_state(s, st.cat, inst, elev, light, 0)
        full = base * 100 + azim  # unique per (state base, azimuth)
        uniq, counts = np.unique(full, return_counts=True)
        if (counts > 1).any():
            raise DataError(f"{found[set_name]['info']}: {int((counts > 1).sum())} duplicate (category, instance, "
                            "elevation, lighting, azimuth) entries")
        entries_of.update({int(f): (s, e) for e, f in enumerate(full)})
        keys.append(np.unique(base))
    bases = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    n_az = len(view.azimuths)
    state_ids = (bases[:, None] + np.arange(n_az, dtype=np.int64)[None]).reshape(-1)
    labels = (state_ids // 10**5) % 10
    is_test = state_ids // 10**6 == 1
    sel = select_states(state_ids, is_test, labels, subset, class_names=CATEGORIES, where="smallnorb")
    state_ids, labels, is_test = state_ids[sel], labels[sel], is_test[sel]
    wanted = (state_ids - state_ids % 100) * 100 + np.asarray(view.azimuths, dtype=np.int64)[state_ids % 100]
    rows = [entries_of.get(int(w)) for w in wanted]
    present = np.array([r is not None for r in rows], dtype=bool)
    if not present.all():
        warnings.warn(f"smallnorb: {int((~present).sum())} selected state(s) have no image for view '{selector}' "
                      "in the files; dropped", stacklevel=2)
    if not present.any():
        raise DataError(f"smallnorb: no images for view '{selector}' in the selection")
    entries = np.array([r for r in rows if r is not None], dtype=np.int64).reshape(-1, 2)
    return SmallNorbSource(arrays, entries, view.camera, name="smallnorb", state_ids=state_ids[present],
                           labels=labels[present], is_test=is_test[present], class_names=list(CATEGORIES))


def describe_smallnorb(data_dir: str | os.PathLike | None = None) -> dict:
    """Sets, entries and image size of the smallNORB files found (from the ``-dat`` headers)."""
    found = find_smallnorb(data_dir)
    out = {}
    for set_name, files in found.items():
        path = files["dat"]
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                head = f.read(8 + 4 * MAX_NDIM)
            ndim = struct.unpack("<i", head[4:8])[0] if len(head) >= 8 else 0
            shape = struct.unpack(f"<{max(3, ndim)}i", head[8:8 + 4 * max(3, ndim)])[:ndim] if ndim == 4 else ()
        else:
            shape = read_norb_header(path).shape
        if len(shape) != 4:
            raise DataError(f"{path}: expected a matrix (N, 2, H, W) of stereo pairs, got shape {tuple(shape)}")
        out[set_name] = {"entries": int(shape[0]), "image": [int(shape[2]), int(shape[3])], "folder": str(path.parent)}
    return out
