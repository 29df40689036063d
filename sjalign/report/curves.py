"""The picture of a pretraining run: loss terms, probe and kNN accuracy, RankMe, against epoch and FLOPs.

``curves_data`` turns the records of a run's ``log.jsonl`` into series (tested); ``fig_curves``
draws them (matplotlib ``Figure``, no pyplot state) and ``write_curves`` writes the PNG
atomically beside the checkpoint (``curves.png``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sjalign.jepa.checkpoint import CURVES_FILE
from sjalign.report.figures import _figure, png_bytes

EVAL_SERIES = (("probe_acc", "linear probe"), ("knn_acc", "kNN (k=20)"))


def curves_data(log: list[dict[str, Any]]) -> dict[str, Any]:
    """Series to draw from a run's epoch records (see :func:`sjalign.jepa.pretrain`).

    Args:
        log: records in epoch order; the epoch-0 record (evaluation only) may come first.

    Returns:
        ``{"terms": {name: (epochs, flops, values)}, "eval": {name: (epochs, flops, values)}}``
        with ``eval`` keys ``probe_acc``, ``knn_acc``, ``rankme``, ``participation_ratio``
        (only epochs where the figure is a number) and ``terms`` the loss terms (or the
        total loss, as ``loss``, when the run logged no terms).
    """
    terms: dict[str, tuple[list, list, list]] = {}
    evals: dict[str, tuple[list, list, list]] = {}

    def add(series: dict, name: str, record: dict, value: Any) -> None:
        if isinstance(value, (int, float)):
            e, f, v = series.setdefault(name, ([], [], []))
            e.append(record["epoch"]), f.append(record.get("flops", 0)), v.append(float(value))

    for record in log:
        for name, value in (record.get("terms") or ({"loss": record["loss"]} if "loss" in record else {})).items():
            add(terms, name, record, value)
        for name, value in (record.get("eval") or {}).items():
            if name in ("probe_acc", "knn_acc", "rankme", "participation_ratio"):
                add(evals, name, record, value)
    return {"terms": terms, "eval": evals}


def fig_curves(data: dict[str, Any], *, title: str = ""):
    """Three panels (loss terms, accuracies, ranks) against epoch (top row) and training FLOPs (bottom row)."""
    fig = _figure(13.0, 6.5)
    axes = fig.subplots(2, 3)
    for row, (x_index, x_label) in enumerate(((0, "epoch"), (1, "training FLOPs"))):
        ax_loss, ax_acc, ax_rank = axes[row]
        for name, series in data["terms"].items():
            ax_loss.plot(series[x_index], series[2], marker=".", label=name)
        ax_loss.set_yscale("log") if all(v > 0 for s in data["terms"].values() for v in s[2]) else None
        for name, label in EVAL_SERIES:
            if name in data["eval"]:
                s = data["eval"][name]
                ax_acc.plot(s[x_index], s[2], marker="o", label=label)
        for name, label in (("rankme", "RankMe"), ("participation_ratio", "participation ratio")):
            if name in data["eval"]:
                s = data["eval"][name]
                ax_rank.plot(s[x_index], s[2], marker="o", label=label)
        for ax, y_label in ((ax_loss, "loss term (epoch mean)"), (ax_acc, "held-out accuracy"),
                            (ax_rank, "effective rank")):
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_label)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def write_curves(run_dir: str | os.PathLike, log: list[dict[str, Any]], *, title: str = "") -> Path:
    """Draw ``log`` and write ``RUN_DIR/curves.png`` atomically; returns its path."""
    from sjalign.io import atomic_write_bytes

    path = Path(run_dir) / CURVES_FILE
    atomic_write_bytes(path, png_bytes(fig_curves(curves_data(log), title=title)))
    return path


__all__ = ["CURVES_FILE", "curves_data", "fig_curves", "write_curves"]
