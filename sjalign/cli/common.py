"""What every command shares: options, the stderr console, JSON on stdout, errors at the edge."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
from rich.console import Console

from sjalign.errors import SjalignError

console = Console(stderr=True, soft_wrap=True, highlight=False, emoji=False)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (and nothing else there).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (splits, shuffles, training).")]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Output file.", dir_okay=False)]
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
                         "embed with jepa:RUN: the run's size]")]
NumWorkersOpt = Annotated[int, typer.Option(
    "--num-workers", help="DataLoader worker processes reading images (0 = read in the main process).")]


def debug() -> bool:
    return os.environ.get("SJALIGN_DEBUG", "") not in ("", "0")


def error_line(message: str) -> None:
    """One red line on stderr."""
    console.print(f"[bold red]error:[/] {escape(message)}")


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    console.print(f"[yellow]warning:[/] {escape(str(message))}")


def cli_command(fn: Callable) -> Callable:
    """Wrap a command: SjalignError / OSError -> one line + exit 1 (traceback only with SJALIGN_DEBUG=1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        old = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except SjalignError as exc:
            if debug():
                raise
            error_line(str(exc))
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

    return wrapper


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
