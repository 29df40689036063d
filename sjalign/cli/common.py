"""What every command shares: options, the stderr console, JSON on stdout, errors at the edge."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
from rich.console import Console

from sjalign.errors import OptionError, SjalignError

console = Console(stderr=True, soft_wrap=True, highlight=False, emoji=False)  # progress and notes (-q hushes)


class _PipedConsole(Console):
    """stdout: a reader that closed the pipe (``| head``) ends the command quietly with exit 0
    (rich's default is exit 1)."""

    def on_broken_pipe(self) -> None:
        _silence_stdout()
        raise SystemExit(0)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not complain of the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


stdout_console = _PipedConsole(soft_wrap=True, highlight=False, emoji=False)  # listings: what a user pipes on
_alerts = Console(stderr=True, soft_wrap=True, highlight=False, emoji=False)  # errors and warnings, even with -q


def set_quiet(quiet: bool) -> None:
    """``-q``: no progress bars or notes on stderr; warnings, errors and stdout are unchanged."""
    console.quiet = quiet


def is_stdout(path: Path | str | None) -> bool:
    """``-o -``: the output goes to stdout."""
    return path is not None and str(path) == "-"


def write_text_output(path: Path | str, text: str, *, replace: bool) -> None:
    """``text`` to the file ``path`` atomically, or to stdout for ``-o -``."""
    if is_stdout(path):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        from sjalign.outputs import atomic_write_bytes

        atomic_write_bytes(path, text.encode(), replace=replace)


def protect_examples(doc: str | None) -> str | None:
    """Mark each paragraph after ``Examples:`` as not to be re-wrapped (click's ``\\b``), so a
    command line in the help is never broken inside a word such as ``--max-states``."""
    if not doc or "Examples:" not in doc:
        return doc
    head, _, tail = doc.partition("Examples:")
    base = len(head) - len(head.rstrip(" "))  # the indent of the "Examples:" line
    paragraphs = tail.split("\n\n")
    marked = []
    for para in paragraphs:
        body = para.lstrip("\n")
        indent_of = len(body) - len(body.lstrip(" "))
        if body.strip() and indent_of > base and not body.lstrip().startswith("\b"):  # an example, not prose
            indent = body[: len(body) - len(body.lstrip())]
            para = para[: len(para) - len(body)] + f"{indent}\b\n" + body
        marked.append(para)
    return head + "Examples:" + "\n\n".join(marked)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (and nothing else there).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Refuse a map used on other latents than it was fitted on (default: a warning).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (splits, shuffles, training).")]
class OutputPath(type(Path())):
    """A Path that remembers whether the user typed it with a trailing separator (``-o newdir/``)."""

    names_folder = False


def output_path(text: str) -> Path:
    """Typer parser of output paths: keeps the trailing-separator fact that ``Path(text)`` drops."""
    path = OutputPath(text)
    path.names_folder = text.endswith(("/", os.sep))
    return path


OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Output file.", parser=output_path)]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder of the dataset files (default: $SJALIGN_DATA, then system locations)."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")]
ClassesOpt = Annotated[str | None, typer.Option(
    "--classes", help="Keep only these classes: labels or class names, comma-separated (e.g. 0,3,7 or cat,dog).")]
ImageSizeOpt = Annotated[int | None, typer.Option(
    "--image-size", help="Resize every image to N x N (shorter side to N, centre crop). [default: the dataset's "
                         "native size (Fashion-MNIST 28, smallNORB 96); 96 for image folders and manifests; "
                         "embed with jepa:RUN: the run's size]. timm encoders then run at N x N too (without it: the model's "
                         "own size, e.g. 224)")]
NumWorkersOpt = Annotated[int, typer.Option(
    "--num-workers", help="DataLoader worker processes reading images (0 = read in the main process).")]


def debug() -> bool:
    return os.environ.get("SJALIGN_DEBUG", "") not in ("", "0")


def error_line(message: str) -> None:
    """One red line on stderr."""
    _alerts.print(f"[bold red]error:[/] {escape(message)}")


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _alerts.print(f"[yellow]warning:[/] {escape(str(message))}")


# How the command line names the library's option fields (sjalign.errors.OptionError placeholders)
FLAGS = {"amap": "--map", "ks": "--k", "knn_metric": "--knn-metric", "lam": "--lambda", "max_test": "--max-test",
         "method": "--method", "metrics": "--metrics", "pair_budget": "--pair-budget", "pair_noise": "--pair-noise",
         "precision": "--precision", "resplit": "--resplit", "seeds": "--seeds", "shift": "--shift",
         "test_fraction": "--test-fraction"}


def progress_bar(label: str, total: int, enabled: bool):
    """A rich progress bar on stderr (only on a terminal, transient) and the callback ``advance(done)`` that moves it.

    Returns:
        (context manager to run the work in, callback or None when there is no bar).
    """
    import contextlib

    if not enabled or not console.is_terminal:
        return contextlib.nullcontext(), None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                   transient=True)
    task = bar.add_task(label, total=total)
    return bar, lambda done: bar.update(task, completed=done)


def error_text(exc: SjalignError) -> str:
    """An error's one line as the command line says it (an OptionError's fields named by their flags)."""
    return exc.render(FLAGS) if isinstance(exc, OptionError) else str(exc)


def cli_command(fn: Callable) -> Callable:
    """Wrap a command: SjalignError / OSError -> one line + exit 1 (traceback only with SJALIGN_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        old = warnings.showwarning
        warnings.showwarning = _show_warning
        old_handlers = _catch_signals()
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except BrokenPipeError:  # `sjalign ... | head`: the reader has what it wanted; not an error
            _silence_stdout()
            raise typer.Exit(0) from None
        except Terminated:
            error_line("terminated (SIGTERM); nothing half-written was left behind")
            raise typer.Exit(143) from None
        except SjalignError as exc:
            if debug():
                raise
            error_line(error_text(exc))
            raise typer.Exit(1) from None
        except OSError as exc:
            if debug():
                raise
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            error_line(f"{where}{exc.strerror or exc}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            error_line("interrupted")
            raise typer.Exit(130) from None
        finally:
            warnings.showwarning = old
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)

    wrapper.__doc__ = protect_examples(fn.__doc__)
    return wrapper


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that every ``except BaseException`` cleanup runs (as on Ctrl-C)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _catch_signals() -> dict:
    """While a command runs: SIGTERM raises :class:`Terminated`, and SIGXFSZ (a file-size limit) is
    ignored so that the write fails with EFBIG and is reported like a full disk instead of killing
    the process. Returns the previous handlers (empty outside the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_terminated)}
    if hasattr(signal, "SIGXFSZ"):
        old[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return {k: v for k, v in old.items() if v is not None}


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/Inf to None."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_json(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, sort_keys=False)


def emit_json(obj: Any) -> None:
    """The command's one JSON object on stdout."""
    sys.stdout.write(to_json(obj) + "\n")
    sys.stdout.flush()


def parse_ks(text: str) -> tuple[int, ...]:
    """'1,5,10' -> (1, 5, 10); raises SjalignError on anything else."""
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise SjalignError(f"--k '{text}': expected comma-separated integers such as 1,5,10") from None
    if not ks or ks[0] < 1:
        raise SjalignError(f"--k '{text}': each k must be a positive integer")
    return ks


def parse_lambda(text: str) -> float | str:
    """'auto' or a number >= 0."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise SjalignError(f"--lambda '{text}': expected a number >= 0 or 'auto'") from None
    if not value >= 0 or not math.isfinite(value):
        raise SjalignError(f"--lambda {text}: must be a finite number >= 0")
    return value


def parse_latents_list(text: str | Path, what: str = "latents") -> list[Path]:
    """'a.safetensors,b.safetensors' -> [Path, Path]: a comma-separated list of existing files.

    In ``fit-map`` the files of one side are shards of one latent set; in ``evaluate`` they are
    models of different seeds (file i of A pairs with file i of B).

    Raises:
        SjalignError: an empty entry, a file listed twice, or a file that does not exist.
    """
    if Path(text).is_file():  # one file, even one whose name holds a comma
        return [Path(text)]
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise SjalignError(f"{what} '{text}': expected one file or comma-separated files, with no empty entry")
    paths = [Path(p) for p in parts]
    seen: set[Path] = set()
    for path in paths:
        if not path.is_file():
            raise SjalignError(f"{path}: no such file")
        key = path.resolve()
        if key in seen:
            raise SjalignError(f"{path}: listed twice in {what} '{text}'")
        seen.add(key)
    return paths


# ---------------------------------------------------------------- options checked before any work

MAX_IMAGE_SIZE = 4096  # pixels per side; 4096² × 3 float32 is 200 MB per image already


def check_choice(flag: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; else SjalignError "--flag 'x': use a, b or c"."""
    if value not in choices:
        raise SjalignError(f"{flag} '{value}': use {', '.join(choices[:-1])} or {choices[-1]}"
                           if len(choices) > 1 else f"{flag} '{value}': use {choices[0]}")
    return value


def check_fraction(flag: str, value: float) -> float:
    """A fraction strictly between 0 and 1 (NaN refused); else SjalignError naming the flag."""
    if not (0.0 < value < 1.0):
        raise SjalignError(f"{flag} {value}: must be a number strictly between 0 and 1")
    return value


def check_device(value: str) -> str:
    """A device name sjalign can use here (auto, cpu, cuda, cuda:N); else SjalignError (see ``resolve_device``)."""
    from sjalign.device import resolve_device

    resolve_device(value)
    return value


def check_image_size(value: int | None) -> int | None:
    """None, or an image side in pixels from 1 to :data:`MAX_IMAGE_SIZE`."""
    if value is not None and not 1 <= value <= MAX_IMAGE_SIZE:
        raise SjalignError(f"--image-size {value}: must be between 1 and {MAX_IMAGE_SIZE} pixels")
    return value


def check_data_dir(value: Path | None) -> Path | None:
    """None, or a --data-dir that is an existing folder (a given folder is never silently replaced by another)."""
    if value is not None and not value.is_dir():
        raise SjalignError(f"--data-dir {value}: no such folder")
    return value


def flag_conflicts(given: dict[str, bool], why: str, against: str) -> None:
    """Refuse flags that contradict ``against``: SjalignError naming both, e.g. "--map and --lambda ...".

    Args:
        given: flag -> whether the user gave it.
        why: what the flags would be ignored for, e.g. "the map was fitted already".
        against: the flag they contradict.
    """
    bad = [flag for flag, was_given in given.items() if was_given]
    if bad:
        raise SjalignError(f"{against} and {' and '.join(bad)} contradict each other: {why}")
