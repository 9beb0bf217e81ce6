"""bench.html: one self-contained page (inline CSS, PNGs as base64) rendered from the report JSON.

Each figure is a `<figure data-figure=ID>` holding the PNG and, in a
`<script type="application/json" class="figure-data">`, the FigureSpec it was drawn from: the
plotted numbers are readable (and testable) next to the picture. No scripts run, nothing is
fetched: the page opens offline and can be attached to a CI run as is.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any, Mapping

from bench.figures import FigureSpec, all_figures
from bench.plots import render_png
from bench.tables import Table, all_tables

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
figure { margin: 1em 0; }
figcaption, .note { color: #555; font-size: 0.85em; }
.estimate { color: #a33; font-weight: bold; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def table_html(table: Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    note = f'<p class="note">{_e(table.note)}</p>' if table.note else ""
    return (f'<section id="table-{_e(table.key)}"><h2>{_e(table.title)}</h2>{note}'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>")


def _script_json(data: Any) -> str:
    # "</" would end the <script> element early; JSON allows the escaped form.
    return json.dumps(data, allow_nan=False).replace("</", "<\\/")


def figure_html(spec: FigureSpec) -> str:
    data = f'<script type="application/json" class="figure-data">{_script_json(spec.to_dict())}</script>'
    note = f'<figcaption>{_e(spec.note)}</figcaption>' if spec.note else ""
    if spec.empty:
        return (f'<figure data-figure="{_e(spec.id)}"><h3>{_e(spec.title)}</h3>'
                f'<p class="note">nothing to plot: {_e(spec.note)}</p>{data}</figure>')
    png = base64.b64encode(render_png(spec)).decode("ascii")
    return (f'<figure data-figure="{_e(spec.id)}"><img alt="{_e(spec.title)}" '
            f'src="data:image/png;base64,{png}">{note}{data}</figure>')


def render_html(report: Mapping[str, Any]) -> str:
    cfg = report["config"]
    figures = "".join(figure_html(f) for f in all_figures(report))
    tables = "".join(table_html(t) for t in all_tables(report))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>rt2edge bench {_e(report['created'])}</title><style>{CSS}</style></head><body>"
        f"<h1>rt2edge bench report</h1><p>{_e(report['created'])} &middot; rt2edge {_e(report['rt2edge_version'])}"
        f" &middot; schema {_e(report['schema'])} v{_e(report['schema_version'])} &middot; sources: "
        f"{_e(', '.join(cfg['sources']))} &middot; baseline for ratios: {_e(report.get('baseline') or 'none')}</p>"
        '<p class="note">Timings are wall-clock on this machine, comparable as ratios within this report. '
        '<span class="estimate">Projected Jetson figures are estimates, not measurements.</span></p>'
        f"<h2>Figures</h2>{figures}{tables}</body></html>\n")
