"""One self-contained HTML page for an evaluate report: conventions, metric tables, embedded PNGs."""

from __future__ import annotations

import base64
import html
import json

from sjalign.report.tables import convention_lines, fmt, metric_table

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.95em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.conventions { background: #f7f9fc; border-left: 4px solid #1f77b4; padding: 0.6em 1em; }
.warning { color: #8a5a00; }
figure { margin: 2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.95em; color: #444; max-width: 900px; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.8em; }
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sweep_table(rows: list[dict], label: str) -> str:
    keys = ("r2", "cka", "dsc", "nos@10", "retrieval@1", "kappa")
    keys = tuple(k for k in keys if k in rows[0]["metrics"]) or tuple(rows[0]["metrics"])[:6]
    arrows = {"r2": "↑", "cka": "↑", "dsc": "↑", "retrieval@1": "↑", "kappa": "↓"}
    header = [label] + [f"{k} {arrows.get(k, '↓' if k.startswith('nos@') else '')}".strip() for k in keys]
    return _table(header, [[fmt(r[label])] + [fmt(r["metrics"].get(k)) for k in keys] for r in rows])


def render_page(result: dict, figures: list[tuple[str, str, str, bytes]]) -> str:
    """The report as one HTML string with every PNG embedded as base64 (no external file or URL).

    Args:
        result: the evaluate JSON result.
        figures: (file name, title, caption, PNG bytes) per picture, in reading order.
    """
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>sjalign evaluate: A → B</title><style>{STYLE}</style></head><body>",
             "<h1>sjalign evaluate: A → B (A mapped onto B's space)</h1>",
             "<div class='conventions'>" + "".join(f"<p>{esc(line)}</p>" for line in convention_lines(result))
             + "</div>"]
    if "shift" in result:
        sh = result["shift"]
        parts.append(f"<p>Distribution shift: the map is fitted on classes {esc(str(sh['train_classes']))} and "
                     f"scored on test states of classes {esc(str(sh['test_classes']))}; the in-distribution map "
                     f"is fitted on as many train states of the test classes.</p>")
    parts.append("<h2>Held-out metrics</h2>")
    parts.append(_table(*metric_table(result)))
    for note in result.get("warnings", []):
        parts.append(f"<p class='warning'>warning: {esc(note)}</p>")
    if figures:
        parts.append("<h2>Pictures</h2>")
    for name, title, caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure id='{esc(name)}'><h3>{esc(title)}</h3>"
                     f"<img alt='{esc(title)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{esc(caption)} <em>({esc(name)})</em></figcaption></figure>")
    for key, label, title in (("pair_budget", "n_train", "Pair-budget sweep"),
                              ("pair_noise", "noise", "Pair-noise sweep (fraction of train pairs mismatched)")):
        if result.get(key):
            parts.append(f"<h2>{title}</h2><p>Same test split for every row.</p>" + _sweep_table(result[key], label))
    parts.append("<h2>Full result (JSON)</h2><details><summary>show</summary><pre>"
                 + esc(json.dumps(result, indent=2, default=str)) + "</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)
