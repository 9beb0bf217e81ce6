"""bench.md: the report JSON as Markdown tables (bench/tables.py), nothing computed that is not in it."""

from __future__ import annotations

from typing import Any, Mapping

from bench.tables import Table, all_tables


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    lines = [f"## {table.title}", ""]
    if table.note:
        lines += [table.note, ""]
    lines.append("| " + " | ".join(_cell(h) for h in table.header) + " |")
    lines.append("|" + "---|" * len(table.header))
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def render_markdown(report: Mapping[str, Any]) -> str:
    cfg = report["config"]
    head = [f"# rt2edge bench report ({report['created']})", "",
            f"rt2edge {report['rt2edge_version']}, schema {report['schema']} v{report['schema_version']}. "
            f"Sources: {', '.join(cfg['sources'])}. Baseline for ratios: {report.get('baseline') or 'none'}.",
            "Timings are wall-clock on this machine and comparable as ratios within this report; "
            "projections are estimates, not measurements.", ""]
    return "\n".join(head) + "\n" + "\n".join(table_markdown(t) for t in all_tables(report))
