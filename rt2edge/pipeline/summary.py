"""The end-of-run summary: one row per benched variant, read from the bench report JSON only
(torch-free), so the terminal table and the report cannot disagree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = ("variant", "size MB", "Hz", "p99 ms", "token agr.", "action agr.", "success")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def summary_rows(report_path: str | Path) -> list[dict[str, str]]:
    report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    rows = []
    for v in report["variants"]:
        timing, fid, success = v["timing"], v.get("fidelity") or {}, v.get("success") or {}
        rows.append({
            "variant": v["label"],
            "size MB": f"{v.get('size_bytes', 0) / 1e6:.2f}",
            "Hz": f"{timing['hz_median']:.1f}",
            "p99 ms": f"{timing['latency']['p99_s'] * 1e3:.2f}",
            "token agr.": _pct(fid.get("token_agreement")),
            "action agr.": _pct(fid.get("action_agreement")),
            "success": _pct(success.get("success_rate")) + (f" of {success['episodes']}"
                                                              if success.get("episodes") else ""),
        })
    return rows


def format_rows(rows: list[dict[str, str]]) -> str:
    """Plain-text table (for logs and tests; the CLI draws the same rows with rich)."""
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in COLUMNS}
    line = lambda cells: "  ".join(cell.ljust(widths[c]) for c, cell in zip(COLUMNS, cells))  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * widths[c] for c in COLUMNS])]
                     + [line([r[c] for c in COLUMNS]) for r in rows])


def reference_label(report_path: str | Path) -> str | None:
    reference: Any = json.loads(Path(report_path).read_text(encoding="utf-8")).get("reference")
    return None if reference is None else reference.get("label")
