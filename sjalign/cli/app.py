"""Wires the commands; one module per command, no maths here."""

from __future__ import annotations

import typer

from sjalign import __version__
from sjalign.cli.apply_map import apply_map_command
from sjalign.cli.common import set_quiet
from sjalign.cli.compare import compare_command
from sjalign.cli.convert import convert_command
from sjalign.cli.embed import embed_command
from sjalign.cli.evaluate import evaluate_command
from sjalign.cli.fit_map import fit_map_command
from sjalign.cli.listing import datasets_command, encoders_command, objectives_command
from sjalign.cli.pretrain import pretrain_command
from sjalign.cli.transfer_probe import transfer_probe_command

app = typer.Typer(
    name="sjalign",
    help="Do two encoders learn the same latent space in different coordinates? Train JEPA models on views, "
         "embed, fit linear alignment maps, score them on held-out states, transfer probes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
# objective options (--reg-weight, ...) are declared by each objective and parsed by the command
app.command("pretrain", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(pretrain_command)
app.command("embed")(embed_command)
app.command("convert")(convert_command)
app.command("fit-map")(fit_map_command)
app.command("apply-map")(apply_map_command)
app.command("evaluate")(evaluate_command)
app.command("transfer-probe")(transfer_probe_command)
app.command("compare")(compare_command)
app.command("datasets")(datasets_command)
app.command("encoders")(encoders_command)
app.command("objectives")(objectives_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sjalign {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          quiet: bool = typer.Option(False, "--quiet", "-q",
                                     help="No progress bars or notes on stderr (warnings and errors stay): "
                                          "sjalign -q COMMAND ...")) -> None:
    """sjalign: latent-space alignment for any encoders."""
    set_quiet(quiet)


def main() -> None:
    app()
