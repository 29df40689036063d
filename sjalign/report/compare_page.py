"""The pictures and page of ``sjalign compare --report DIR``: one heatmap per measure, one HTML page."""

from __future__ import annotations

import html

import numpy as np

from sjalign.report.figures import _figure, png_bytes
from sjalign.report.html import STYLE

COMPARE_KIND = "compare report"


def fig_matrix(matrix, labels: list[str], *, title: str, directed: bool):
    """Heatmap of one measure's (m, m) matrix (None drawn blank), the value written in each cell up to 16 files."""
    m = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=np.float64)
    size = len(labels)
    fig = _figure(max(5.5, 2.5 + 0.7 * size), max(4.5, 1.8 + 0.6 * size))
    ax = fig.subplots()
    finite = m[np.isfinite(m)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(1.0, float(finite.max())) if finite.size else 1.0
    im = ax.imshow(np.ma.masked_invalid(m), vmin=lo, vmax=hi, cmap="viridis")
    short = [f"[{i}]" for i in range(size)]
    ax.set_xticks(range(size), short)
    ax.set_yticks(range(size), short)
    if directed:
        ax.set_xlabel("map to (target)")
        ax.set_ylabel("map from (source)")
    if size <= 16:
        for i in range(size):
            for j in range(size):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] < lo + 0.6 * (hi - lo) else "black")
    fig.colorbar(im, ax=ax, label=title)
    ax.set_title(title)
    return fig


def render_compare_page(result: dict, figures: list[tuple[str, str, bytes]]) -> str:
    """The comparison as one HTML string: the files, each measure's matrix as a table and its heatmap (base64)."""
    import base64

    esc = html.escape
    files = result["files"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>sjalign compare</title>"
             f"<style>{STYLE}</style></head><body><h1>sjalign compare: {len(files)} latents files</h1>",
             "<div class='conventions'><p>Each pair is joined on its shared state ids and split as evaluate splits; "
             "map-free measures use the held-out states and are symmetric; map-based ones fit a ridge map on the "
             "train states (row: from, column: to) and score it on the held-out ones.</p></div>",
             "<table><thead><tr><th>file</th><th>path</th><th>encoder</th><th>dims</th></tr></thead><tbody>"]
    for i, path in enumerate(files):
        enc = result.get("encoders", ["?"] * len(files))[i]
        dim = result.get("dims", ["?"] * len(files))[i]
        parts.append(f"<tr><td>[{i}]</td><td>{esc(path)}</td><td>{esc(str(enc))}</td><td>{dim}</td></tr>")
    parts.append("</tbody></table>")
    for name, caption, png in figures:
        if name not in result["matrix"]:  # a layer × layer picture: its caption says it all
            parts.append(f"<h2>{esc(caption.split(';')[0])}</h2><figure><img alt='{esc(name)}' "
                         f"src='data:image/png;base64,{base64.b64encode(png).decode()}'><figcaption>{esc(caption)}"
                         "</figcaption></figure>")
            continue
        matrix = result["matrix"][name]
        head = "".join(f"<th>[{j}]</th>" for j in range(len(files)))
        body = "".join(f"<tr><td>[{i}]</td>" + "".join(f"<td>{'—' if v is None else f'{v:.3f}'}</td>" for v in row)
                       + "</tr>" for i, row in enumerate(matrix))
        parts.append(f"<h2>{esc(name)}</h2><table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>")
        parts.append(f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def compare_report_files(result: dict) -> dict[str, bytes]:
    """``{name: bytes}`` of the report: ``compare.json``, ``compare.csv``, ``NAME.png`` per measure, ``index.html``."""
    import json

    from sjalign.compare import MAP_FREE, to_csv

    figures = []
    for name in result["metrics"]:
        directed = name not in MAP_FREE
        fig = fig_matrix(result["matrix"][name], result["files"], title=name, directed=directed)
        caption = (f"{name}: a ridge map from the row's file to the column's, fitted on train states and scored on "
                   "held-out ones" if directed else f"{name} between the files' held-out latents (symmetric)")
        figures.append((name, caption, png_bytes(fig)))
    for pair in result["pairs"]:
        if "layers" in pair:
            from sjalign.report.figures import fig_layer_cka

            lay = pair["layers"]
            fig = fig_layer_cka(lay["layers_a"], lay["layers_b"], lay["cka"], name_a=pair["a"], name_b=pair["b"],
                                n=lay["n"])
            figures.append((f"layers {len(figures)}", f"layer × layer linear CKA of {pair['a']} and {pair['b']}; "
                            f"best matches (debiased CKA): {lay['best_match_a']}", png_bytes(fig)))
    files = {f"{name.replace('@', '_at_').replace(' ', '_')}.png": png for name, _, png in figures}
    files["compare.json"] = (json.dumps(result, indent=1) + "\n").encode()
    files["compare.csv"] = to_csv(result).encode()
    files["index.html"] = render_compare_page(result, figures).encode("utf-8")
    return files
