"""Latent sets written in shards, and embedding that survives an interruption.

Several processes (``torchrun``, or a scheduler's tasks given ``--shard I/N``) each embed a
disjoint, deterministic slice of the selected states and write their own shard file; the last to
finish writes a small index that names every shard with its SHA-256. The index is one latent set:
every command that reads latents accepts ``NAME.safetensors.index.json`` where it accepts a
latents file (:func:`expand_index_paths`, :func:`load_index`).

Files, for ``-o z.safetensors --shard I/N`` (I counts from 0, like torchrun's RANK)::

    z.shard-0000I-of-0000N.safetensors          shard I: rows [I·n/N, (I+1)·n/N) of the selection
    z.safetensors.index.json                    the index, written last, atomically
    z.shard-0000I-of-0000N.safetensors.parts/   while embedding: finished parts (deleted at the end)
    z.shard-0000I-of-0000N.safetensors.lock     while embedding: which process holds the shard

An embed checkpoints every ``part_rows`` rows into the parts folder (each part written
atomically); ``--resume`` keeps the parts that match the job and embeds only the rest, with the
same batches as an uninterrupted run, so the result is identical.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sjalign.errors import SjalignError
from sjalign.io import sha256_file
from sjalign.outputs import TMP_PREFIX, atomic_write_bytes

INDEX_FORMAT = "latents-index/1"
INDEX_SUFFIX = ".index.json"
PARTS_JOB = "job.json"
PART_RE = re.compile(r"^part-(\d{6})\.safetensors$")


# ---------------------------------------------------------------- naming and slicing

def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 ≤ I < N.

    Raises:
        SjalignError: not two integers, N < 1, or I outside 0..N−1.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec or "")
    if not m:
        raise SjalignError(f"--shard '{spec}': give I/N, shard I (from 0) of N, e.g. 0/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise SjalignError(f"--shard '{spec}': I must be between 0 and N − 1 = {n - 1} (shards count from 0)")
    return i, n


def torchrun_shard() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when launched by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world


def shard_rows(n_states: int, i: int, n_shards: int) -> tuple[int, int]:
    """Rows [lo, hi) of shard i of n_shards over n_states rows: contiguous, disjoint, covering all."""
    return i * n_states // n_shards, (i + 1) * n_states // n_shards


def _stem(output: Path) -> str:
    name = output.name
    return name[: -len(".safetensors")] if name.endswith(".safetensors") else name


def shard_path(output: str | os.PathLike, i: int, n_shards: int) -> Path:
    """``z.safetensors`` -> ``z.shard-0000I-of-0000N.safetensors`` beside it."""
    output = Path(output)
    return output.with_name(f"{_stem(output)}.shard-{i:05d}-of-{n_shards:05d}.safetensors")


def index_path(output: str | os.PathLike) -> Path:
    """``z.safetensors`` -> ``z.safetensors.index.json``."""
    output = Path(output)
    return output.with_name(output.name + INDEX_SUFFIX)


def is_index(path: str | os.PathLike) -> bool:
    return str(path).endswith(INDEX_SUFFIX)


def other_shard_counts(output: str | os.PathLike, n_shards: int) -> list[tuple[Path, int]]:
    """Shard files or parts folders beside ``output`` written for a different shard count."""
    output = Path(output)
    pattern = re.compile(re.escape(_stem(output)) + r"\.shard-(\d{5})-of-(\d{5})\.safetensors(\.parts)?$")
    found = []
    for p in output.parent.glob(f"{_stem(output)}.shard-*"):
        m = pattern.match(p.name)
        if m and int(m.group(2)) != n_shards:
            found.append((p, int(m.group(2))))
    return sorted(found)


# ---------------------------------------------------------------- the index

def write_index_if_complete(output: str | os.PathLike, n_shards: int) -> Path | None:
    """Write ``output``'s index once all n_shards shard files exist (by any process: the last to
    finish writes it; a second writer writes the same content, atomically). Returns its path, or
    None while shards are missing.

    Raises:
        SjalignError: the shards disagree (another job's file among them, overlapping states).
    """
    from sjalign.lazy_io import open_latents_set

    paths = [shard_path(output, i, n_shards) for i in range(n_shards)]
    if not all(p.is_file() for p in paths):
        return None
    lset = open_latents_set(paths)  # same width and dtype, disjoint state ids (else one error line)
    jobs = {json.dumps(_job_of(s.metadata), sort_keys=True) for s in lset.shards}
    if len(jobs) > 1:
        raise SjalignError(f"{paths[0].name} ... {paths[-1].name}: the shards come from different embed commands "
                           "(encoder, dataset, view or selection differ); rerun the odd one")
    index = {"sjalign.format": INDEX_FORMAT, "n": lset.n, "dim": lset.dim,
             "shards": [{"file": p.name, "rows": int(s.n), "sha256": sha256_file(p)} for p, s in zip(paths, lset.shards)]}
    target = index_path(output)
    atomic_write_bytes(target, (json.dumps(index, indent=1) + "\n").encode())
    return target


def _job_of(metadata: dict[str, str]) -> dict[str, Any]:
    """The part of a shard's metadata that must agree across shards of one set."""
    keys = ("encoder", "dataset", "view", "layer", "pooling", "subset", "sjalign.shard_count")
    return {k: metadata.get(k) for k in keys}


def read_index(path: str | os.PathLike, *, verify: bool = True) -> list[Path]:
    """The shard files an index names, in order (paths relative to the index's folder).

    Raises:
        SjalignError: unreadable or not an index, a shard missing, or (``verify``) a shard whose
            SHA-256 differs from the index's (altered after the index was written). One line,
            naming the index and the shard.
    """
    path = Path(path)
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise SjalignError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise SjalignError(f"{path}: not a readable latents index ({exc})") from None
    if not isinstance(index, dict) or index.get("sjalign.format") != INDEX_FORMAT or not isinstance(
            index.get("shards"), list) or not index["shards"]:
        raise SjalignError(f"{path}: not a latents index (expected sjalign.format = {INDEX_FORMAT} and a list of "
                           "shards)")
    out = []
    for entry in index["shards"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or "/" in entry["file"]:
            raise SjalignError(f"{path}: a shard entry is not {{file, rows, sha256}} with a plain file name")
        shard = path.parent / entry["file"]
        if not shard.is_file():
            raise SjalignError(f"{path}: shard {entry['file']} is missing")
        if verify and sha256_file(shard) != entry.get("sha256"):
            raise SjalignError(f"{path}: shard {entry['file']} was altered after the index was written "
                               "(its SHA-256 differs); embed it again")
        out.append(shard)
    return out


def expand_index_paths(paths: list[str | os.PathLike], *, verify: bool = True) -> list[Path]:
    """Each index replaced by its shards (checked as ``verify`` says, :func:`read_index`); other
    paths as given."""
    out: list[Path] = []
    for p in paths:
        out.extend(read_index(p, verify=verify) if is_index(p) else [Path(p)])
    return out


def load_index(path: str | os.PathLike):
    """The whole latent set an index names, in memory (a :class:`~sjalign.io.Latents`).

    Rows are the shards' in order; the metadata is the first shard's without its shard fields.

    Raises:
        SjalignError: as :func:`read_index`, or shards that disagree in width, layers or
            state ids (overlap).
    """
    from sjalign.io import concat_latents, load_latents

    parts = [load_latents(p) for p in read_index(path)]
    meta = {k: v for k, v in parts[0].metadata.items() if not k.startswith("sjalign.shard")}
    try:
        return concat_latents(parts, metadata=meta, path=path)
    except SjalignError as exc:  # ShapeError too: name the index first
        raise type(exc)(f"{path}: {exc}") from None


# ---------------------------------------------------------------- one process's claim on a shard

@dataclass
class ShardLock:
    """``FILE.lock`` held while a process embeds into FILE: two processes given the same shard
    are refused; a lock left by a killed process on this host is taken over."""

    path: Path

    def acquire(self) -> "ShardLock":
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                    self.path.unlink(missing_ok=True)  # left by a killed process: take it over
                    continue
                who = (f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process")
                raise SjalignError(f"{self.path}: this shard is being embedded by {who}; give each process its "
                                   "own --shard (or delete the lock if no process is embedding it)") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise SjalignError(f"{self.path}: could not take the shard's lock")

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        holder = self._holder()
        if holder is not None and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- embedding in resumable parts

def embed_in_parts(embed_range: Callable[[int, int], Any], lo: int, hi: int, *, part_rows: int,
                   parts_dir: Path, job: dict[str, Any], resume: bool,
                   save_part: Callable[[Path, Any], None], load_part: Callable[[Path, int], Any],
                   on_rows: Callable[[int], None] | None = None) -> tuple[list[Any], int]:
    """Embed rows [lo, hi) part by part, each part saved before the next starts.

    Args:
        embed_range: (a, b) -> the latents of rows [a, b) (any object ``save_part`` writes).
        part_rows: rows per part (a multiple of the batch size keeps the batches of a resumed run
            those of an uninterrupted one).
        parts_dir: the folder of finished parts (created; owned by sjalign: ``job.json`` marks it).
        job: what must match for ``resume`` to keep a part (the embed config, rows, part size).
        resume: keep the parts of an interrupted run of the same job; without it the parts of
            an interrupted run are discarded (with a warning) and the rows embedded again.
        save_part, load_part: write one part atomically / read one back (given its first row).
        on_rows: called with the rows done so far (progress), after each part.

    Returns:
        (the parts in row order, as ``load_part`` / ``embed_range`` give them; how many were kept
        from the interrupted run).

    Raises:
        SjalignError: a parts folder sjalign did not write; with ``resume``, one of a different job.
    """
    job_file = parts_dir / PARTS_JOB
    starts = list(range(lo, hi, part_rows))
    parts: list[Any] = []
    if parts_dir.exists():
        try:
            saved = json.loads(job_file.read_text())
        except (OSError, ValueError):
            raise SjalignError(f"{parts_dir}: not a parts folder written by sjalign embed (no readable "
                               f"{PARTS_JOB}); remove it yourself if it is not needed") from None
        if not resume:  # a plain rerun starts over, as it would without parts
            n_saved = sum(1 for p in parts_dir.iterdir() if PART_RE.match(p.name))
            remove_parts(parts_dir)
            if parts_dir.exists():  # something sjalign did not write is in there: leave it to its owner
                raise SjalignError(f"{parts_dir}: not a parts folder written by sjalign embed (no readable "
                                   f"{PARTS_JOB}); remove it yourself if it is not needed")
            if n_saved:
                warnings.warn(f"{parts_dir}: discarded {n_saved} saved part(s) of an interrupted embed and started "
                              "over (--resume keeps them)", stacklevel=2)
        elif saved != job:
            diff = sorted(k for k in set(saved) | set(job) if saved.get(k) != job.get(k))
            raise SjalignError(f"{parts_dir}: --resume of a different embed ({', '.join(diff)} differ); rerun the "
                               "original command with --resume, or --force to start over")
        else:
            while (parts_dir / f"part-{len(parts):06d}.safetensors").is_file():
                if len(parts) == len(starts):
                    raise SjalignError(f"{parts_dir}: holds more parts than this embed has rows for; rerun with "
                                       "--force")
                parts.append(load_part(parts_dir / f"part-{len(parts):06d}.safetensors", starts[len(parts)]))
    if not parts_dir.exists():
        parts_dir.mkdir(parents=True)
        atomic_write_bytes(job_file, (json.dumps(job, indent=1) + "\n").encode())
    kept = len(parts)
    if on_rows is not None:
        on_rows(min(len(parts) * part_rows, hi - lo))
    try:
        for k in range(len(parts), len(starts)):
            a = starts[k]
            b = min(a + part_rows, hi)
            part = embed_range(a, b)
            save_part(parts_dir / f"part-{k:06d}.safetensors", part)
            parts.append(part)
            _fault_injection(k + 1 - kept)
            if on_rows is not None:
                on_rows(b - lo)
    except BaseException:
        if not parts:  # failed before anything worth resuming (a bad input): leave nothing behind
            remove_parts(parts_dir)
        raise
    return parts, kept


def _fault_injection(saved: int) -> None:
    """Test hook: ``SJALIGN_FAULT_KILL_AFTER_PARTS=N`` (or ``N@RANK``, one torchrun rank) makes the
    process SIGKILL itself after saving its N-th part, as ``kill -9`` would (no cleanup)."""
    spec = os.environ.get("SJALIGN_FAULT_KILL_AFTER_PARTS")
    if not spec:
        return
    count, _, rank = spec.partition("@")
    if (not rank or rank == os.environ.get("RANK", "0")) and saved >= int(count):
        os.kill(os.getpid(), signal.SIGKILL)


def remove_parts(parts_dir: Path) -> None:
    """Delete a parts folder that sjalign wrote (its job file, parts and their temporaries only)."""
    if not (parts_dir / PARTS_JOB).is_file():
        return
    for p in parts_dir.iterdir():
        if p.name == PARTS_JOB or PART_RE.match(p.name) or p.name.startswith(TMP_PREFIX):
            p.unlink(missing_ok=True)
    try:
        parts_dir.rmdir()
    except OSError:
        pass  # something else was put there: leave it
