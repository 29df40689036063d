"""sjalign datasets / sjalign encoders: what is available."""

from __future__ import annotations

from typing import Annotated

import typer

from sjalign.cli.common import DataDirOpt, JsonOpt, cli_command, emit_json, escape, stdout_console


@cli_command
def datasets_command(
    dataset: Annotated[str | None, typer.Argument(help="Describe one dataset: a name, a manifest or an image folder.")] = None,
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the datasets, their views and the transforms every image dataset supports; or describe one.

    Examples:

      sjalign datasets

      sjalign datasets cameras.csv --json      # the manifest's views, states, classes, split

      sjalign datasets smallnorb --data-dir norb/
    """
    from sjalign.data import DATASET_VIEWS, DATASETS, describe_dataset
    from sjalign.data.views import VIEWS

    if dataset is not None:
        info = {"dataset": dataset, **describe_dataset(dataset, data_dir=data_dir)}
        if json_out:
            emit_json(info)
            return
        for key, value in info.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}: {v}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            stdout_console.print(f"[bold]{key}[/]: {escape(str(value))}")
        return
    result = {"datasets": {name: {"description": text, "views": DATASET_VIEWS[name]} for name, text in DATASETS.items()},
              "views": {v.syntax: v.help for v in VIEWS}}
    if json_out:
        emit_json(result)
        return
    for name, text in DATASETS.items():
        stdout_console.print(f"[bold]{escape(name)}[/]: {escape(text)}")
        stdout_console.print(f"    views: {escape(DATASET_VIEWS[name])}")
    stdout_console.print("transforms (any image dataset; after the dataset's own view, joined with '+'):")
    for v in VIEWS:
        stdout_console.print(f"  [bold]{escape(v.syntax)}[/]: {escape(v.help)}")


@cli_command
def encoders_command(json_out: JsonOpt = False) -> None:
    """List the installed encoders (entry-point group sjalign.encoders): each spec's syntax and what it embeds.

    Examples:

      sjalign encoders

      sjalign encoders --json | jq -r '.encoders | keys[]'
    """
    from sjalign.encoders.base import describe_encoders

    found = describe_encoders()
    if json_out:
        emit_json({"encoders": found})
        return
    for prefix, info in found.items():
        what = (f"cannot be loaded: {info['error']}" if "error" in info
                else f"embeds {' or '.join(info['modalities'])}")
        stdout_console.print(f"[bold]{escape(prefix)}[/]: {escape(info['syntax'])}  ({escape(what)})")


@cli_command
def objectives_command(json_out: JsonOpt = False) -> None:
    """List the pretraining objectives: what each trains, its options (``sjalign pretrain --OPTION``) and recipe.

    Examples:

      sjalign objectives

      sjalign objectives --json | jq '.objectives.lejepa.options'
    """
    from sjalign.jepa.config import TRAINING_DEFAULTS
    from sjalign.jepa.objectives import OBJECTIVES

    def plain(value):
        return list(value) if isinstance(value, tuple) else value

    result = {name: {"summary": cls.summary, "exported_encoder": cls.export_prefix,
                     "recipe": {k: plain(cls.recipe.get(k, v)) for k, v in TRAINING_DEFAULTS.items()},
                     "options": {f: {"default": plain(o.default), "help": o.help} for f, o in cls.options.items()}}
              for name, cls in OBJECTIVES.items()}
    if json_out:
        emit_json({"objectives": result})
        return
    for name, info in result.items():
        stdout_console.print(f"[bold]{escape(name)}[/]: {escape(info['summary'])} (exports {info['exported_encoder']})")
        recipe = ", ".join(f"{k} {v}" for k, v in info["recipe"].items())
        stdout_console.print(f"    recipe: {escape(recipe)}")
        for field, option in info["options"].items():
            default = ",".join(map(str, option["default"])) if isinstance(option["default"], list) else option["default"]
            stdout_console.print(f"    --{field.replace('_', '-')} [{escape(str(default))}]: {escape(option['help'])}")
