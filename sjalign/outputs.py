"""Publishing outputs safely: nothing sjalign did not write is ever lost, nothing half-written is ever seen.

Every file or folder a command writes goes through here:

* :func:`check_output` (before any work) refuses an output that is one of the command's
  inputs (after symbolic and hard links, with or without ``--force``), that is not a regular
  file (a folder, a device, a FIFO, a dangling link), that exists without ``--force``, whose
  folder is missing or read-only, or whose name is too long.
* :func:`atomic_file` writes through a temp file beside the output whose name carries the
  writer's pid and machine (``.sjalign-tmp-PID@HOST-XXXX-NAME``), fsyncs it and publishes it
  in one step.
  Without ``--force`` the publication fails if the output appeared meanwhile (a hard link,
  or ``renameat2(RENAME_NOREPLACE)`` where links are not supported), so of several
  concurrent writers exactly one succeeds; with ``--force`` it is an ``os.replace``.
* A later writer in the same folder removes the temp files and folders of this machine's
  writers whose process is gone (:func:`sweep_stale`): ``kill -9`` leaves nothing behind for long.
* Folders (``evaluate --report``) carry a marker file listing what sjalign wrote; ``--force``
  replaces a folder only when everything in it is listed there (:func:`check_output_folder`).

I/O errors name the user's path, never a temp name.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from sjalign.errors import SjalignError

TMP_PREFIX = ".sjalign-tmp-"
MARKER_FILE = ".sjalign-output.json"
NAME_MAX = 255
_TMP_RE = re.compile(re.escape(TMP_PREFIX) + r"(\d+)@([A-Za-z0-9_.]*)-")


def host_tag() -> str:
    """This machine's name as it appears in temp names (a pid means nothing on another machine)."""
    import socket

    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:32]


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (signal 0; a process of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_name(path: str | os.PathLike, suffix: str = ".tmp") -> str:
    """A fresh temp name for ``path``'s folder: ``.sjalign-tmp-PID@HOST-RANDOM-NAME.tmp``, at most 255 bytes.

    The output's name is cut (not the pid, host or random part) when the whole would be too long.
    """
    head = f"{TMP_PREFIX}{os.getpid()}@{host_tag()}-{secrets.token_hex(4)}-"
    room = NAME_MAX - len(head.encode()) - len(suffix.encode())
    name = Path(path).name.encode()[:room].decode(errors="ignore")
    return head + name + suffix


def sweep_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the temp files and folders in ``folder`` whose writer's process is gone.

    Only names made by :func:`temp_name` on this machine are touched (``.sjalign-tmp-PID@HOST-...``,
    so a folder shared by several machines keeps the others' temp files), and only when PID is
    not a live process; errors (a file already gone, no permission) are ignored.

    Returns:
        The paths removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host = host_tag()
    for entry in entries:
        match = _TMP_RE.match(entry.name)
        if match is None or match.group(2) != host:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _replaceable(path: Path) -> bool:
    """Whether ``path`` is one of sjalign's own result files (latents, map, probe: its header's tag), which may
    be replaced inside an input folder (say latents written earlier beside a run's checkpoint)."""
    from sjalign.io import LATENTS_FORMAT, MAP_FORMAT, PROBE_FORMAT  # deferred: io imports this module
    from sjalign.lazy_io import read_header

    try:
        header, _ = read_header(path)
    except (SjalignError, OSError):
        return False
    meta = header.get("__metadata__")
    return isinstance(meta, dict) and meta.get("sjalign.format") in (LATENTS_FORMAT, MAP_FORMAT, PROBE_FORMAT)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (OSError, ValueError):
        return False


def check_output(path: str | os.PathLike, force: bool, *, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output that would destroy something, before the command does any work.

    Args:
        path: the output file.
        force: the user's ``--force``: an existing regular file that is no input may be replaced.
        inputs: every file and folder the command reads (latents, maps, manifests, checkpoints);
            an existing file inside an input folder counts as an input unless it is an sjalign
            latents, map or probe file (e.g. latents written earlier into a run folder).

    Returns:
        ``path`` as a Path.

    Raises:
        SjalignError: (one line naming ``path``) a name ending in a separator or too long, an
            output that is an input (with or without ``force``; symbolic and hard links
            included), an existing path that is not a regular file, an existing file without
            ``force``, or a missing or read-only folder.
    """
    text = os.fspath(path)
    if text == "-":
        raise SjalignError("-o -: this output is a binary file (safetensors), which does not go to stdout; give "
                           "a file name (--json prints the summary on stdout)")
    names_folder = getattr(path, "names_folder", False)  # the CLI's parser keeps the trailing separator
    path = Path(path)
    if names_folder or text.endswith(os.sep) or path.name in ("", ".", ".."):
        raise SjalignError(f"{text}{os.sep if names_folder else ''}: names a folder; the output is a file "
                           "(give a file name)")
    if len(path.name.encode()) > NAME_MAX:
        raise SjalignError(f"{text}: file name too long ({len(path.name.encode())} bytes; at most {NAME_MAX})")
    for source in inputs:
        source = Path(source)
        if _same_file(path, source) or path.resolve() == source.resolve():
            raise SjalignError(f"{text}: is also an input of this command ({source}); write the output elsewhere")
        if source.is_dir() and os.path.lexists(path) and _inside(path, source) and not _replaceable(path):
            raise SjalignError(f"{text}: exists inside {source}, which this command reads; write the output elsewhere")
    if os.path.lexists(path):
        if not path.exists():
            raise SjalignError(f"{text}: is a broken symbolic link; remove it or write elsewhere")
        if not stat.S_ISREG(path.stat().st_mode):
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise SjalignError(f"{text}: exists and is {kind}; sjalign only replaces files it wrote")
        if not force:
            raise SjalignError(f"{text}: output already exists (use --force to overwrite)")
    parent = path.parent
    if not parent.is_dir():
        raise SjalignError(f"{text}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SjalignError(f"{text}: cannot write in folder {parent} (permission denied)")
    return path


_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


def _rename_noreplace(src: str, dst: str) -> None:
    """Linux renameat2(RENAME_NOREPLACE): move ``src`` to ``dst`` unless ``dst`` exists (FileExistsError)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    at_fdcwd, rename_noreplace = -100, 1
    if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dst)


def publish(tmp: str | os.PathLike, path: str | os.PathLike, *, replace: bool) -> None:
    """Move the finished temp file ``tmp`` to ``path`` in one step.

    Args:
        replace: overwrite an existing ``path`` (``--force``): ``os.replace``. Otherwise the move
            fails if ``path`` exists, atomically (a hard link then unlinking the temp name, or
            ``renameat2(RENAME_NOREPLACE)`` on a file system without hard links).

    Raises:
        SjalignError: ``path`` appeared while the command ran (another writer); ``tmp`` is removed.
    """
    tmp, path = os.fspath(tmp), os.fspath(path)
    if replace:
        os.replace(tmp, path)
        return
    try:
        try:
            os.link(tmp, path)
            os.unlink(tmp)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED + (errno.EPERM, errno.EMLINK):
                raise
            try:
                _rename_noreplace(tmp, path)
            except OSError as exc2:
                if exc2.errno not in _UNSUPPORTED:
                    raise
                if os.path.lexists(path):  # neither links nor renameat2 here: check, then rename
                    raise FileExistsError(errno.EEXIST, "exists", path) from None
                os.rename(tmp, path)
    except FileExistsError:
        Path(tmp).unlink(missing_ok=True)
        raise SjalignError(f"{path}: appeared while this command ran (another writer?); left as it is, "
                           "nothing written (use --force to overwrite)") from None


def io_error(path: str | os.PathLike, exc: OSError) -> SjalignError:
    """An OSError met while writing ``path`` (possibly through a temp name), as a one-line error naming ``path``."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EFBIG:
        reason = "file too large (a file-size limit was reached)"
    return SjalignError(f"{os.fspath(path)}: cannot write ({reason})")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, replace: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, published only when the block ends without error.

    The temp file lies beside ``path`` (:func:`temp_name`); stale temp files of dead writers
    in that folder are removed first. On success the file is flushed, fsynced and published
    (:func:`publish`; ``replace=False`` refuses an output that appeared meanwhile). On any
    exception (KeyboardInterrupt and SIGTERM included) the temp file is removed and ``path``
    is untouched.

    Raises:
        SjalignError: an I/O error while writing (disk full, file-size limit), naming ``path``;
            ``path`` appeared meanwhile (``replace=False``).
    """
    path = Path(path)
    sweep_stale(path.parent)
    tmp = path.parent / temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask, as open() does
    except OSError as exc:
        raise io_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path, replace=replace)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise io_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path, replace=replace) as f:
        f.write(data)


# ---------------------------------------------------------------- output folders (evaluate --report)

def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker sjalign leaves in a folder it wrote (``{"kind", "files"}``), or None."""
    try:
        marker = json.loads((Path(folder) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), list):
        return None
    return marker


def write_marker(folder: str | os.PathLike, kind: str, files: Iterable[str]) -> None:
    """Mark ``folder`` as an sjalign output of ``kind`` holding ``files`` (names inside it)."""
    (Path(folder) / MARKER_FILE).write_text(json.dumps({"kind": kind, "files": sorted(files)}) + "\n")


def check_output_folder(path: str | os.PathLike, force: bool, kind: str, *,
                        inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output folder that would destroy something, before any work.

    A folder that exists may be replaced (``force``) only if sjalign wrote it as a ``kind``
    output: its marker says so and lists every entry it holds. The folder may not be the
    current folder or one above it, nor hold (or be) an input of the command.

    Raises:
        SjalignError: one line naming ``path`` and why.
    """
    text = os.fspath(path)
    path = Path(path)
    for source in inputs:
        if _inside(Path(source), path):
            raise SjalignError(f"{text}: holds an input of this command ({source}); write the output elsewhere")
    if _inside(Path.cwd(), path):
        raise SjalignError(f"{text}: is the current folder or holds it; write the output elsewhere")
    if path.name in ("", "..") or len(path.name.encode()) > NAME_MAX:
        raise SjalignError(f"{text}: not a usable folder name")
    if os.path.lexists(path):
        if not path.is_dir() or path.is_symlink():
            raise SjalignError(f"{text}: exists and is not a folder")
        if not force:
            raise SjalignError(f"{text}: folder already exists (use --force to replace it)")
        marker = read_marker(path)
        if marker is None or marker.get("kind") != kind:
            raise SjalignError(f"{text}: not an sjalign {kind} folder (no marker {MARKER_FILE} of that kind); "
                               "--force replaces only those, so nothing was deleted")
        foreign = sorted(set(os.listdir(path)) - set(marker["files"]) - {MARKER_FILE})
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise SjalignError(f"{text}: holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} sjalign did "
                               f"not write ({shown}); --force replaces only sjalign's own folders, so nothing "
                               "was deleted")
    if not path.parent.is_dir():
        raise SjalignError(f"{text}: parent folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise SjalignError(f"{text}: cannot write in folder {path.parent} (permission denied)")
    return path


def publish_folder(files: dict[str, bytes], path: str | os.PathLike, kind: str, *, force: bool) -> Path:
    """Write ``files`` (name -> bytes) into a new folder ``path``, all or nothing.

    The folder is built under a temp name beside ``path`` with a marker listing its files,
    then renamed into place (without ``force``: only if ``path`` still does not exist). With
    ``force`` a previous sjalign folder of the same kind (checked again by
    :func:`check_output_folder`) is set aside under a temp name, replaced, and removed; if
    the swap fails it is put back.

    Raises:
        SjalignError: ``path`` appeared meanwhile, or an I/O error, naming ``path``.
    """
    path = Path(path)
    sweep_stale(path.parent)
    tmp = path.parent / temp_name(path, ".dir")
    old = None
    try:
        tmp.mkdir()
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        write_marker(tmp, kind, files)
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.lexists(path):
            if not force:
                raise FileExistsError(errno.EEXIST, "exists", os.fspath(path))
            check_output_folder(path, force, kind)
            old = path.parent / temp_name(path, ".old")
            os.rename(path, old)
        if old is not None:
            os.rename(tmp, path)
        else:
            try:
                _rename_noreplace(os.fspath(tmp), os.fspath(path))
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                os.rename(tmp, path)  # no renameat2: rename still refuses a non-empty folder
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(path):
            os.rename(old, path)  # the previous folder goes back
        if isinstance(exc, FileExistsError):
            raise SjalignError(f"{path}: appeared while this command ran (another writer?); left as it is") from None
        if isinstance(exc, OSError):
            raise io_error(path, exc) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path
