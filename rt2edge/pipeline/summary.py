"""The end-of-run summary: one row per benched variant, read from the bench report JSON only
(torch-free), so the terminal table and the report cannot disagree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

COLUMNS = ("variant", "size MB", "Hz", "p99 ms", "token agr.", "action agr.", "success")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def read_report(report_path: str | Path) -> dict[str, Any]:
    return json.loads(Path(report_path).read_text(encoding="utf-8"))


def summary_rows(report: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per variant of a bench report (`read_report`)."""
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


def reference_label(report: Mapping[str, Any]) -> str | None:
    reference = report.get("reference")
    return None if reference is None else reference.get("label")
