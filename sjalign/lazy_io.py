"""Large latents files without loading them: lazy reads by row range, shards, streamed writes.

``fit-map`` and ``apply-map`` read latents through :func:`open_latents_set` (one file or the
shards of one latent set) in chunks of rows, so memory stays O(chunk) whatever n is; eager
reading and writing of whole files lives in :mod:`sjalign.io`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from sjalign.errors import FileFormatError, ShapeError, SjalignError
from sjalign.io import (
    LATENTS_FORMAT, Latents, all_unique, atomic_file, check_output, load_latents, nonfinite_error,
)

# ---------------------------------------------------------------- lazy reading of large latents files

DEFAULT_CHUNK_ROWS = 8192
_NUMPY_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
_FLOAT_CODES = (*_NUMPY_DTYPES, "BF16")
_INT_CODES = ("I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL")
_HEADER_LIMIT = 100_000_000  # safetensors refuses larger headers too
GATHER_SPAN_BYTES = 64 << 20  # bytes of the file one mapping of a row gather covers


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where its data buffer starts.

    Layout (safetensors format): 8-byte little-endian header length N, N bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then
    the data; tensor offsets are relative to byte 8 + N.

    Raises:
        FileFormatError: missing file or a header that cannot be read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            size = int.from_bytes(raw, "little") if len(raw) == 8 else -1
            if not 0 < size <= min(_HEADER_LIMIT, path.stat().st_size - 8):
                raise ValueError("bad header length")
            header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except FileNotFoundError:
        raise FileFormatError(f"{path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path}: not a valid safetensors file ({exc})") from None
    return header, 8 + size


FINGERPRINT_ROWS = 16
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def fingerprint(path: str | os.PathLike) -> str:
    """A cheap identity of a latents file: SHA-256 of its header, its ``state_ids`` and a few ``latents`` rows.

    The header (canonical JSON: key order differs between writers) holds every tensor's shape,
    dtype and offsets and the metadata (encoder, view, command line, inputs' hashes); the ids
    say which states; :data:`FINGERPRINT_ROWS` rows spread evenly over ``latents`` tell apart
    files whose headers and ids agree but whose vectors differ. Reads a few kB to MB, never
    the whole file.

    Raises:
        FileFormatError: missing file or unreadable header.
    """
    import hashlib

    header, data_start = read_header(path)
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())

    def span(key: str) -> tuple[int, int] | None:
        info = header.get(key)
        if isinstance(info, dict) and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2:
            return int(info["data_offsets"][0]), int(info["data_offsets"][1])
        return None

    with open(path, "rb") as f:
        ids = span("state_ids")
        if ids is not None:
            f.seek(data_start + ids[0])
            digest.update(f.read(max(ids[1] - ids[0], 0)))
        rows, info = span("latents"), header.get("latents", {})
        shape = info.get("shape") if isinstance(info, dict) else None
        if rows is not None and isinstance(shape, list) and len(shape) == 2 and shape[0] > 0:
            row_bytes = int(shape[1]) * _ITEMSIZE.get(info.get("dtype"), 4)
            for r in np.unique(np.linspace(0, shape[0] - 1, min(shape[0], FINGERPRINT_ROWS)).astype(np.int64)):
                f.seek(data_start + rows[0] + int(r) * row_bytes)
                digest.update(f.read(row_bytes))
    return digest.hexdigest()


@dataclass
class LazyLatents:
    """A latents file opened without reading its ``latents`` tensor (SPEC §2).

    The small tensors (``state_ids``, ``labels``, ``split``) are read when the file is opened;
    rows of ``latents`` (n, d) only when asked for:

    * a contiguous range of rows through ``np.memmap`` of just those rows' bytes, copied into
      the caller's buffer and unmapped again, so a reader never holds more of the file in memory
      than the rows it asked for (bfloat16, which numpy lacks, through
      ``safetensors.safe_open(path, "pt").get_slice``: that path costs ≈ 50 ms per call in page
      faults of a fresh mapping of the whole file, 12× the copy itself for 4,096 rows of 768);
    * scattered rows (ascending) through ``np.memmap`` of the byte range that covers them,
      which touches only the pages of those rows (the documented fallback for row gathers).

    Finiteness of ``latents`` is not checked at open (that would read the whole file); see
    :meth:`check_finite`.

    Attributes:
        path: the file.
        metadata: str -> str.
        state_ids: (n,) int64, unique.
        labels: (n,) int64 or None.
        split: (n,) uint8 (0 = train, 1 = test) or None.
        shape: (n, d) of ``latents``.
        dtype: safetensors dtype code of ``latents`` (``F32`` as ``embed`` writes; F64, F16, BF16 read too).
        data_offset: byte offset of ``latents`` row 0 in the file.
        layer_names: names of the per-layer tensors ``layer.NAME`` (not read).
    """

    path: Path
    metadata: dict[str, str]
    state_ids: np.ndarray
    labels: np.ndarray | None
    split: np.ndarray | None
    shape: tuple[int, int]
    dtype: str
    data_offset: int
    layer_names: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return int(self.shape[0])

    @property
    def dim(self) -> int:
        return int(self.shape[1])

    @property
    def name(self) -> str:
        return str(self.path)

    def read_rows(self, start: int, stop: int, *, out: np.ndarray | None = None,
                  shift: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:stop`` of ``latents`` minus ``shift``, as (m, d) float32 or into ``out``.

        Args:
            out: (stop − start, d) float32 or float64 buffer to fill (allocated when None).
            shift: (d,) subtracted from every row on the way in (None: no shift).
        """
        if out is None:
            out = np.empty((stop - start, self.dim), np.float32)
        if stop <= start:
            return out
        if self.dtype in _NUMPY_DTYPES:  # a mapping of just these rows' bytes, dropped after the copy
            dt = _NUMPY_DTYPES[self.dtype]
            src = np.memmap(self.path, dtype=dt, mode="r", offset=self.data_offset + start * self.dim * dt.itemsize,
                            shape=(stop - start, self.dim))
        else:  # bfloat16 has no numpy dtype: a view through safetensors, converted
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as f:
                src = f.get_slice("latents")[start:stop].float().numpy()
        _copy_shifted(src, out, shift)
        del src
        return out

    def take_rows(self, rows: np.ndarray, *, out: np.ndarray | None = None,
                  shift: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (ascending) of ``latents`` minus ``shift``, as (m, d) float32 or into ``out``."""
        rows = np.asarray(rows, dtype=np.int64)
        if out is None:
            out = np.empty((len(rows), self.dim), np.float32)
        if len(rows) == 0:
            return out
        if self.dtype not in _NUMPY_DTYPES:  # bfloat16 has no numpy dtype: a view of the covering rows
            from safetensors import safe_open

            lo, hi = int(rows[0]), int(rows[-1]) + 1
            with safe_open(str(self.path), framework="pt") as f:
                span = f.get_slice("latents")[lo:hi]
            _copy_shifted(span[rows - lo].float().numpy(), out, shift)
            return out
        # one mapping per GATHER_SPAN_BYTES of the file, unmapped once its rows are copied: the kernel maps
        # whole page-cache folios around each touched row, so one mapping of a sparse gather's whole span
        # would count most of the file in the process's resident memory
        dt = _NUMPY_DTYPES[self.dtype]
        span_rows = max(1, GATHER_SPAN_BYTES // (self.dim * dt.itemsize))
        i = 0
        while i < len(rows):
            first = int(rows[i])
            j = int(np.searchsorted(rows, first + span_rows, side="left"))
            span = np.memmap(self.path, dtype=dt, mode="r", offset=self.data_offset + first * self.dim * dt.itemsize,
                             shape=(int(rows[j - 1]) - first + 1, self.dim))
            _copy_shifted(np.take(span, rows[i:j] - first, axis=0), out[i:j], shift)
            del span
            i = j
        return out

    def iter_rows(self, chunk: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(start, (m, d) float32 rows) for consecutive chunks of at most ``chunk`` rows."""
        for start in range(0, self.n, chunk):
            yield start, self.read_rows(start, min(start + chunk, self.n))

    def count_nonfinite_rows(self, chunk: int = DEFAULT_CHUNK_ROWS) -> int:
        """Rows of ``latents`` holding NaN or Inf (one streamed pass over the file)."""
        return sum(nonfinite_rows(block) for _, block in self.iter_rows(chunk))

    def check_finite(self, chunk: int = DEFAULT_CHUNK_ROWS) -> None:
        """Raise SjalignError naming the file if any latents row holds NaN or Inf (reads the file once)."""
        bad = self.count_nonfinite_rows(chunk)
        if bad:
            raise nonfinite_error(self.name, "latents", bad, self.n)

    def load(self) -> Latents:
        """The whole file in memory, validated (:func:`load_latents`)."""
        return load_latents(self.path)


def hash_and_scan(lat: LazyLatents, *, block_bytes: int = 4 << 20) -> tuple[str, int]:
    """SHA-256 of ``lat``'s file and its number of ``latents`` rows holding NaN or Inf, from one
    sequential read (the digest equals :func:`sjalign.io.sha256_file`'s, and is remembered for it).

    Returns:
        (hex digest, non-finite rows).
    """
    import hashlib

    from sjalign.io import file_identity, remember_sha256

    key = file_identity(lat.path)
    itemsize = 2 if lat.dtype == "BF16" else _NUMPY_DTYPES[lat.dtype].itemsize
    row_bytes = lat.dim * itemsize
    rows_per_block = max(1, block_bytes // max(row_bytes, 1))
    digest, bad = hashlib.sha256(), 0
    with open(lat.path, "rb") as f:
        digest.update(f.read(lat.data_offset))  # header and any tensor stored before the latents
        for start in range(0, lat.n, rows_per_block):
            m = min(rows_per_block, lat.n - start)
            raw = f.read(m * row_bytes)
            if len(raw) != m * row_bytes:
                raise SjalignError(f"{lat.path}: file ends inside 'latents'")
            digest.update(raw)
            if lat.dtype == "BF16":  # exponent bits all set: Inf or NaN
                nonfinite = (np.frombuffer(raw, "<u2").reshape(m, lat.dim) & 0x7F80) == 0x7F80
                bad += int(nonfinite.any(axis=1).sum())
            else:
                bad += nonfinite_rows(np.frombuffer(raw, _NUMPY_DTYPES[lat.dtype]).reshape(m, lat.dim))
        for rest in iter(lambda: f.read(block_bytes), b""):
            digest.update(rest)
    hexdigest = digest.hexdigest()
    remember_sha256(lat.path, hexdigest, key)
    return hexdigest, bad


class BackgroundScan:
    """:func:`hash_and_scan` of every shard of some latent sets, in a daemon thread.

    Used by ``fit-map`` so that the SHA-256 its map records and the check for NaN/Inf rows cost one
    read of each file between them, alongside the fit's own pass (hashlib and numpy release the GIL
    on large blocks). A daemon thread never holds up the interpreter's exit when the command fails first.
    """

    def __init__(self, sets: Sequence["LatentsSet"]) -> None:
        import threading

        self._shards = [shard for lset in sets for shard in lset.shards]
        self._out: dict[str, tuple[str, int]] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="sjalign-scan")
        self._thread.start()

    def _run(self) -> None:
        try:
            for shard in self._shards:
                if str(shard.path) not in self._out:
                    self._out[str(shard.path)] = hash_and_scan(shard)
        except BaseException as exc:  # noqa: BLE001  (re-raised by result())
            self._error = exc

    def result(self) -> dict[str, str]:
        """``{str(path): sha256}`` once every file is read.

        Raises:
            SjalignError: a shard whose ``latents`` hold NaN or Inf (the first one, named, with the count).
            OSError: a file that could not be read.
        """
        self._thread.join()
        if self._error is not None:
            raise self._error
        for shard in self._shards:
            bad = self._out[str(shard.path)][1]
            if bad:
                raise nonfinite_error(shard.name, "latents", bad, shard.n)
        return {path: digest for path, (digest, _) in self._out.items()}


def nonfinite_rows(block: np.ndarray) -> int:
    """Rows of ``block`` (m, d) holding NaN or Inf: 0 after one fast pass (:func:`quick_finite`) when there are none."""
    return 0 if quick_finite(block) else int((~np.isfinite(block)).any(axis=1).sum())


def quick_finite(block: np.ndarray) -> bool:
    """True when ``block.sum()`` is finite: no NaN or Inf in ``block`` (one fast pass). False may also
    mean an overflow of the sum of huge finite values; callers re-check with ``np.isfinite`` then."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(block.sum()))


def _copy_shifted(src: np.ndarray, out: np.ndarray, shift: np.ndarray | None) -> None:
    if out.shape != src.shape:
        raise ShapeError(f"row buffer has shape {out.shape}, expected {src.shape}")
    if shift is None:
        np.copyto(out, src, casting="same_kind")
    else:
        np.subtract(src, np.asarray(shift, dtype=out.dtype), out=out, casting="same_kind")


def check_small_tensor(path, key: str, code: str, arr: np.ndarray | None) -> np.ndarray:
    """The contract of a latents file's ``state_ids``, ``labels`` and ``split`` (SPEC §2), checked before any cast.

    ``state_ids`` and ``labels``: integers (any width, signed or unsigned) that fit int64;
    ``split``: integers or booleans holding only 0 (train) and 1 (test). A float, or a value a
    cast would change (an int64 split of 256 would wrap to 0), is refused, never truncated.

    Args:
        code: the tensor's safetensors dtype code (``I64``, ``U8``, ``F32``, ...).
        arr: the tensor as read (None when its dtype was not an integer one, so not read).

    Returns:
        (n,) int64 for ids and labels, (n,) uint8 for the split.

    Raises:
        FileFormatError: naming the file, the tensor and the problem.
    """
    if code not in _INT_CODES or arr is None:
        raise FileFormatError(f"{path}: '{key}' must hold integers, found dtype {code}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise FileFormatError(f"{path}: '{key}' holds values above the int64 range")
    if key == "split":
        if not np.isin(arr, (0, 1)).all():
            raise FileFormatError(f"{path}: 'split' must hold only 0 (train) and 1 (test)")
        return arr.astype(np.uint8)
    return arr.astype(np.int64, copy=False)


def open_latents(path: str | os.PathLike) -> LazyLatents:
    """Open a latents file lazily: header, metadata and small tensors now, ``latents`` rows later.

    This is the one contract every command's latents files meet (``load_latents`` reads
    through it too): float16, bfloat16, float32 or float64 ``latents`` and ``layer.*`` tensors;
    integer ``state_ids`` (unique) and ``labels``; a 0/1 ``split`` (:func:`check_small_tensor`);
    consistent shapes. Finiteness of ``latents`` is checked when the rows are read
    (:meth:`LazyLatents.check_finite`; ``load_latents`` does it).

    Raises:
        FileFormatError: missing file, not safetensors, wrong ``sjalign.format``, missing tensors,
            a tensor of the wrong dtype or values.
        ShapeError / SjalignError: inconsistent shapes, duplicate ids.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    header, data_start = read_header(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            keys = set(f.keys())
            small = {k: f.get_tensor(k) for k in ("state_ids", "labels", "split")
                     if k in keys and header.get(k, {}).get("dtype") in _INT_CODES}
    except Exception as exc:  # safetensors raises several types for a corrupt header
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FileFormatError(f"{path}: not a valid safetensors file ({reason})") from None
    tag = metadata.get("sjalign.format")
    if tag != LATENTS_FORMAT:
        got = f"'{tag}'" if tag else "no sjalign.format tag"
        raise FileFormatError(f"{path}: expected an sjalign {LATENTS_FORMAT} file, found {got}")
    for key in ("latents", "state_ids"):
        if key not in keys:
            raise FileFormatError(f"{path}: missing tensor '{key}'")
    info = header["latents"]
    shape, dtype = tuple(info["shape"]), info["dtype"]
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise ShapeError(f"{path}: 'latents' must be a non-empty (n, d) array, got shape {shape}")
    n = shape[0]
    layer_names = tuple(sorted(k[len("layer."):] for k in keys if k.startswith("layer.")))
    for key in ("latents", *(f"layer.{name}" for name in layer_names)):
        if header[key]["dtype"] not in _FLOAT_CODES:
            raise FileFormatError(f"{path}: '{key}' must be float16, bfloat16, float32 or float64, "
                                  f"found {header[key]['dtype']}")
        lshape = tuple(header[key]["shape"])
        if len(lshape) != 2 or lshape[0] != n or lshape[1] == 0:
            raise ShapeError(f"{path}: '{key}' has shape {lshape}, expected ({n}, d)")
    small = {key: check_small_tensor(path, key, header[key]["dtype"], small.get(key))
             for key in ("state_ids", "labels", "split") if key in keys}
    for key, arr in small.items():
        if arr.shape != (n,):
            raise ShapeError(f"{path}: '{key}' has shape {arr.shape}, expected ({n},) to match 'latents'")
    ids = small["state_ids"]
    if not all_unique(ids):
        raise SjalignError(f"{path}: state ids are not unique")
    split, labels = small.get("split"), small.get("labels")
    return LazyLatents(path, metadata, ids, labels, split, (int(shape[0]), int(shape[1])), dtype,
                       data_start + int(info["data_offsets"][0]), layer_names)


@dataclass
class LatentsSet:
    """One latent set stored as one or more files (shards), rows concatenated in the order given.

    Shards are what several machines or GPUs write when each embeds part of the states: they
    share the dimension and dtype and hold disjoint state ids. Global row r is row
    ``r − offsets[i]`` of shard i, for ``offsets[i] <= r < offsets[i + 1]``.

    Attributes:
        shards: the opened files.
        offsets: (s + 1,) int64 cumulative row counts.
        state_ids: (n,) int64, unique across shards.
        labels: (n,) int64 when every shard carries labels, else None.
        split: (n,) uint8 when every shard carries a split, else None.
    """

    shards: list[LazyLatents]
    offsets: np.ndarray = field(init=False)
    state_ids: np.ndarray = field(init=False)
    labels: np.ndarray | None = field(init=False)
    split: np.ndarray | None = field(init=False)

    def __post_init__(self) -> None:
        def joined(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            if any(x is None for x in arrays):
                return None
            return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)  # one shard: no copy

        self.offsets = np.concatenate([[0], np.cumsum([s.n for s in self.shards])]).astype(np.int64)
        self.state_ids = joined([s.state_ids for s in self.shards])
        self.labels = joined([s.labels for s in self.shards])
        self.split = joined([s.split for s in self.shards])

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.shards]

    @property
    def name(self) -> str:
        return ",".join(s.name for s in self.shards)

    @property
    def metadata(self) -> dict[str, str]:
        """The first shard's metadata (encoder, dataset, view, ...)."""
        return self.shards[0].metadata

    def shard_of(self, rows: np.ndarray) -> np.ndarray:
        """(m,) shard index of each global row."""
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def read_into(self, rows: np.ndarray, out: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
        """Fill ``out`` (m, d) with global rows ``rows`` (ascending) minus ``shift``.

        A run of consecutive rows inside one shard is one contiguous slice read; other rows
        are gathered (:meth:`LazyLatents.take_rows`).
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return out
        if np.any(rows[1:] <= rows[:-1]):
            raise ValueError("rows must be strictly ascending")
        bounds = np.searchsorted(rows, self.offsets)
        for i, shard in enumerate(self.shards):
            a, b = bounds[i], bounds[i + 1]
            if a == b:
                continue
            local = rows[a:b] - self.offsets[i]
            if local[-1] - local[0] + 1 == len(local):
                shard.read_rows(int(local[0]), int(local[-1]) + 1, out=out[a:b], shift=shift)
            else:
                shard.take_rows(local, out=out[a:b], shift=shift)
        return out

    def check_finite(self, chunk: int = DEFAULT_CHUNK_ROWS) -> None:
        """Raise SjalignError naming the shard whose ``latents`` hold NaN or Inf (reads every shard once)."""
        for shard in self.shards:
            shard.check_finite(chunk)


def open_latents_set(paths: Sequence[str | os.PathLike]) -> LatentsSet:
    """Open one or more latents files (or shard indexes, :mod:`sjalign.shards`) as the shards of
    one latent set (lazily).

    Raises:
        FileFormatError / ShapeError / SjalignError: a shard that is not a latents file (named),
            shards of different dimension or dtype, or shards whose state ids overlap (both named).
    """
    from sjalign.shards import expand_index_paths

    if not paths:
        raise SjalignError("no latents files given")
    shards = [open_latents(p) for p in expand_index_paths(list(paths))]  # an index stands for its shards
    first = shards[0]
    for s in shards[1:]:
        if s.dim != first.dim:
            raise ShapeError(f"{first.name} ({first.dim}-d) and {s.name} ({s.dim}-d): shards of one latent set "
                             "must have the same dimension")
        if s.dtype != first.dtype:
            raise SjalignError(f"{first.name} ({first.dtype}) and {s.name} ({s.dtype}): shards of one latent set "
                               "must have the same latents dtype")
    lset = LatentsSet(shards)
    if len(shards) > 1 and not all_unique(lset.state_ids):
        for i, s in enumerate(shards):
            for t in shards[i + 1:]:
                both = np.intersect1d(s.state_ids, t.state_ids, assume_unique=True)
                if len(both):
                    raise SjalignError(f"{s.name} and {t.name}: {len(both)} state id(s) appear in both shards "
                                       f"(e.g. {int(both[0])}); shards of one side must hold disjoint states")
    return lset


# ---------------------------------------------------------------- streamed writing of large latents files

def write_latents_stream(path: str | os.PathLike, blocks: Iterable[np.ndarray], *, n: int, dim: int,
                         state_ids: np.ndarray, labels: np.ndarray | None = None, split: np.ndarray | None = None,
                         metadata: Mapping[str, str] | None = None, force: bool = False) -> Path:
    """Write a latents file from row blocks without holding all rows (SPEC §2 layout, one pass).

    The safetensors header is written first (its sizes are known from ``n`` and ``dim``), then
    the ``latents`` blocks (m, dim) as float32 in order, then ``state_ids``, ``labels``,
    ``split``; the file goes to a temp name beside ``path`` and is renamed into place only
    when complete, so a failure (bad block, exception in the producer) leaves no file.

    Raises:
        ShapeError: blocks of the wrong width or a total other than ``n`` rows; small tensors not (n,).
        SjalignError: duplicate state ids, a bad split, or an existing output without ``force``.
    """
    path = check_output(path, force)
    small = {"state_ids": np.asarray(state_ids, dtype="<i8")}
    if labels is not None:
        small["labels"] = np.asarray(labels, dtype="<i8")
    if split is not None:
        small["split"] = np.asarray(split, dtype=np.uint8)
    for key, arr in small.items():
        if arr.shape != (n,):
            raise ShapeError(f"{path}: '{key}' has shape {arr.shape}, expected ({n},)")
    if not all_unique(small["state_ids"]):
        raise SjalignError(f"{path}: state ids are not unique")
    if "split" in small and not np.isin(small["split"], (0, 1)).all():
        raise SjalignError(f"{path}: 'split' must hold only 0 (train) and 1 (test)")
    codes = {"state_ids": "I64", "labels": "I64", "split": "U8"}
    header: dict = {"latents": {"dtype": "F32", "shape": [n, dim], "data_offsets": [0, n * dim * 4]}}
    offset = n * dim * 4
    for key, arr in small.items():
        header[key] = {"dtype": codes[key], "shape": [n], "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    header["__metadata__"] = {k: str(v) for k, v in {**dict(metadata or {}), "sjalign.format": LATENTS_FORMAT}.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_file(path, replace=force) as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        rows = 0
        for block in blocks:
            block = np.asarray(block)
            if block.ndim != 2 or block.shape[1] != dim or rows + len(block) > n:
                raise ShapeError(f"{path}: a block of shape {block.shape} does not fit ({n}, {dim}) latents "
                                 f"after {rows} rows")
            f.write(np.ascontiguousarray(block, dtype="<f4").data)
            rows += len(block)
        if rows != n:
            raise ShapeError(f"{path}: {rows} latents rows written, expected {n}")
        for arr in small.values():
            f.write(np.ascontiguousarray(arr).data)
    return path
