"""sjalign datasets / sjalign encoders: what is available."""

from __future__ import annotations

from sjalign.cli.common import JsonOpt, cli_command, console, emit_json


@cli_command
def datasets_command(json_out: JsonOpt = False) -> None:
    """List built-in datasets and the views every dataset supports."""
    from sjalign.data import DATASETS
    from sjalign.data.views import VIEWS

    result = {"datasets": DATASETS, "views": {v.syntax: v.help for v in VIEWS}}
    if json_out:
        emit_json(result)
        return
    for name, text in DATASETS.items():
        console.print(f"[bold]{name}[/]: {text}")
    console.print("views (join with '+' to compose):")
    for v in VIEWS:
        console.print(f"  [bold]{v.syntax}[/]: {v.help}")


@cli_command
def encoders_command(json_out: JsonOpt = False) -> None:
    """List installed encoder spec prefixes (entry-point group sjalign.encoders)."""
    from sjalign.encoders import available_encoders

    names = available_encoders()
    if json_out:
        emit_json({"encoders": names})
    else:
        for name in names:
            console.print(name)
