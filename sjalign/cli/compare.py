"""sjalign compare FILE FILE ...: every pair of latents files, map-free and map-based measures, as matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sjalign.cli.common import (
    ForceOpt, JsonOpt, SeedOpt, cli_command, console, emit_json, is_stdout, output_path, progress_bar,
    write_text_output,
)


@cli_command
def compare_command(
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Two or more latents files (any encoders, any widths), paired by state id.")],
    metrics: Annotated[str, typer.Option("--metrics", help="Comma-separated: cka, cka_debiased, mutual_knn, cknna, svcca, pwcca, rsa (map-free); r2, retrieval@1, retrieval@5, retrieval@10, csls@1 (a ridge map fitted on the train pairs, both directions). [default: all]")] = "all",
    k: Annotated[int, typer.Option("--k", help="Neighbours for mutual kNN and CKNNA.")] = 10,
    knn_metric: Annotated[str, typer.Option("--knn-metric", help="cosine or euclidean, for mutual kNN.")] = "cosine",
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Held-out fraction of states, in (0, 1), when the files carry no split.")] = 0.2,
    lam: Annotated[float, typer.Option("--lambda", help="Ridge λ of the maps, per sample, in standardised units (scikit-learn's alpha = λ·n_train).")] = 1e-3,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the result as JSON ('-' = stdout).", parser=output_path)] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="Write the matrices as CSV (metric,a,b,value; '-' = stdout).", parser=output_path)] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write a folder: a heatmap PNG per measure, index.html (self-contained), compare.json and compare.csv.", parser=output_path)] = None,
    layers: Annotated[bool, typer.Option("--layers", help="Require the layer × layer CKA matrices: every file must carry layer.N tensors (embed --layer all). Without it they are added for every pair of files that both carry them.")] = False,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Score every pair of latents files on their shared states: a matrix per measure.

    Map-free measures (linear and debiased CKA, mutual kNN, CKNNA, SVCCA, PWCCA, RSA) use the held-out
    states of each pair and are symmetric; map-based ones fit a ridge map on the train states in each
    direction and score it on the held-out ones (entry [i][j]: the map from file i to file j).

    Example:

      sjalign compare pixels.safetensors lite0.safetensors jepa_top.safetensors --metrics cka_debiased,mutual_knn,r2
    """
    import itertools
    import json

    from sjalign.cli.common import check_choice, check_fraction
    from sjalign.compare import MAP_FREE, METRICS, check_metrics, compare_latents, to_csv
    from sjalign.errors import SjalignError
    from sjalign.io import load_latents
    from sjalign.metrics.similarity import KNN_METRICS
    from sjalign.outputs import check_output

    names = check_metrics(list(METRICS) if metrics == "all" else [m.strip() for m in metrics.split(",") if m.strip()])
    check_choice("--knn-metric", knn_metric, KNN_METRICS)
    check_fraction("--test-fraction", test_fraction)
    if k < 1:
        raise SjalignError(f"--k must be >= 1, got {k}")
    if not lam > 0 or lam == float("inf"):
        raise SjalignError(f"--lambda must be a finite number > 0, got {lam}")
    if len(files) < 2:
        raise SjalignError("compare needs at least two latents files")
    to_stdout = [flag for flag, on in (("-o -", is_stdout(output)), ("--csv -", is_stdout(csv)),
                                       ("--json", json_out)) if on]
    if len(to_stdout) > 1:
        raise SjalignError(f"{' and '.join(to_stdout)} would both write to stdout; keep one")
    if output is not None and csv is not None and not to_stdout and output.resolve() == csv.resolve():
        raise SjalignError(f"-o and --csv name the same file {output}")
    for path in (output, csv):
        if path is not None and not is_stdout(path):
            check_output(path, force, inputs=files)
            if report is not None and path.resolve().parent == report.resolve():
                raise SjalignError(f"{path}: lies inside --report {report}, which is replaced whole; write it elsewhere")
    if report is not None:
        from sjalign.outputs import check_output_folder
        from sjalign.report.compare_page import COMPARE_KIND

        check_output_folder(report, force, COMPARE_KIND, inputs=files)
    latents = [load_latents(path) for path in files]
    if layers:
        for path, lat in zip(files, latents):
            if not lat.layers:
                raise SjalignError(f"{path}: no layer.N tensors, so --layers has no layer matrix to give (embed it "
                                   "with --layer all)")
    labels = [str(p) for p in files]

    n_pairs = len(files) * (len(files) - 1) // 2
    bar, advance = progress_bar("pairs", n_pairs, not json_out)
    started = itertools.count()

    def progress(a: str, b: str) -> None:  # called before each pair: the bar counts the pairs finished
        finished = next(started)
        if advance is not None:
            advance(finished)

    with bar:
        result = compare_latents(latents, labels, metrics=names, k=k, knn_metric=knn_metric,
                                 test_fraction=test_fraction, seed=seed, lam=lam, progress=progress)
    result["encoders"] = [lat.metadata.get("encoder", "?") for lat in latents]
    result["dims"] = [int(lat.dim) for lat in latents]
    if output is not None:
        write_text_output(output, json.dumps(result, indent=1) + "\n", replace=force)
    if csv is not None:
        write_text_output(csv, to_csv(result), replace=force)
    if report is not None:
        from sjalign.outputs import publish_folder
        from sjalign.report.compare_page import COMPARE_KIND, compare_report_files

        publish_folder(compare_report_files(result), report, COMPARE_KIND, force=force)
    if json_out:
        emit_json(result)
        return
    from rich.table import Table

    short = [f"[{i}]" for i in range(len(labels))]
    for i, (label, enc, dim) in enumerate(zip(labels, result["encoders"], result["dims"])):
        console.print(f"{short[i]} {label} ({enc}, {dim} dims)")
    for pair in result["pairs"]:
        if "layers" in pair:
            matches = ", ".join(f"{k} → {v}" for k, v in pair["layers"]["best_match_a"].items())
            console.print(f"layers of {pair['a']} and their best match in {pair['b']} (debiased CKA): {matches}")
    for name in names:
        directed = "" if name in MAP_FREE else " (row: map from, column: map to)"
        table = Table(title=f"{name}{directed}")
        table.add_column("")
        for s in short:
            table.add_column(s, justify="right")
        for i, s in enumerate(short):
            table.add_row(s, *("—" if v is None else f"{v:.3f}" for v in result["matrix"][name][i]))
        console.print(table)
