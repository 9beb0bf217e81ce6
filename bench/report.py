"""The benchmark report: one JSON document (the source of truth) and the pages rendered from it.

    report = load_report("runs/bench/bench.json")        # schema-checked dict
    write_report("runs/bench", report)                   # bench.json, bench.md, bench.html

bench.md and bench.html are produced by pure functions of the JSON (bench/render_md.py,
bench/render_html.py) after it was written and read back, so every number on a page is a number
of the JSON and a test can check the pages against it. All three files are written atomically.

Schema (version 1), keys a reader may rely on:
  schema, schema_version, created, rt2edge_version, config, machine, observations, baseline,
  projection_label, openvla_validation, reference,
  variants[]: label, source, source_kind, backend, provider, threads, precision, size_bytes, load_s,
              timing (bench.timing.TimingReport.to_dict()), memory, ratios, roofline, projection[],
              fidelity, success
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from rt2edge.atomic import atomic_write_json, atomic_write_text
from rt2edge.errors import ArtifactError

SCHEMA = "rt2edge-bench-report"
SCHEMA_VERSION = 1
REPORT_JSON, REPORT_MD, REPORT_HTML = "bench.json", "bench.md", "bench.html"


def created_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def baseline_label(variants: Sequence[Mapping[str, Any]], backend: str) -> str | None:
    """The first variant on the baseline backend; None when no variant runs it."""
    return next((v["label"] for v in variants if v["backend"] == backend), None)


def ratios(variant: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Variant / baseline: Hz ratios > 1 are faster, the p99 ratio < 1 is a shorter tail."""
    if baseline is None:
        return None
    t, b = variant["timing"], baseline["timing"]
    out = {"hz_median": t["hz_median"] / b["hz_median"], "hz_sustained": t["hz_sustained"] / b["hz_sustained"],
           "p99_latency": t["latency"]["p99_s"] / b["latency"]["p99_s"]}
    if t.get("hz_cpu_median") and b.get("hz_cpu_median"):  # the same ratio in CPU time (shared machines)
        out["hz_cpu_median"] = t["hz_cpu_median"] / b["hz_cpu_median"]
    return out


def openvla_validation() -> dict[str, Any]:
    """The projection's check against published OpenVLA-7B latencies on Jetson AGX Orin."""
    from bench.calibration import comparison_table, load_calibration

    cal = load_calibration()
    eff = cal.efficiency
    return {"model": cal.model, "device": cal.device, "efficiency": eff.value, "fitted_on": eff.fitted_on,
            "held_out": list(eff.held_out), "efficiency_source": eff.source,
            "published": [{"variant": f.variant, "precision": f.precision, "latency_ms": f.latency_ms,
                           "stack": f.stack} for f in cal.published],
            "rows": [row.to_dict() for row in comparison_table(cal)]}


def _finite(obj: Any) -> Any:
    """JSON has no inf/NaN: a non-finite float becomes null (a division by a zero time, say)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def assemble(config: Mapping[str, Any], machine: Mapping[str, Any], observations: Mapping[str, Any],
             variants: list[dict[str, Any]], baseline_backend: str,
             reference: Mapping[str, Any] | None) -> dict[str, Any]:
    from rt2edge import __version__
    from bench.projection import LABEL

    base_label = baseline_label(variants, baseline_backend)
    base = next((v for v in variants if v["label"] == base_label), None)
    for v in variants:
        v["ratios"] = ratios(v, base)
    return _finite({
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": created_now(),
        "rt2edge_version": __version__, "config": dict(config), "machine": dict(machine),
        "observations": dict(observations), "baseline": base_label, "projection_label": LABEL,
        "openvla_validation": openvla_validation(), "reference": None if reference is None else dict(reference),
        "variants": variants})


def check_report(data: Any, where: str = "report") -> dict[str, Any]:
    """A parsed report, or ArtifactError naming what is wrong (schema, version, keys)."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ArtifactError(f"{where}: not an rt2edge bench report (schema must be {SCHEMA!r})")
    version = data.get("schema_version")
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise ArtifactError(f"{where}: schema_version {version!r} is not supported (this rt2edge reads "
                            f"1..{SCHEMA_VERSION}); upgrade rt2edge")
    if not isinstance(data.get("variants"), list):
        raise ArtifactError(f"{where}: 'variants' must be a list")
    for i, v in enumerate(data["variants"]):
        missing = [k for k in ("label", "backend", "timing") if not isinstance(v, dict) or k not in v]
        if missing:
            raise ArtifactError(f"{where}: variants[{i}] lacks {missing}")
    return data


def load_report(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    if file.is_dir():
        file = file / REPORT_JSON
    if not file.is_file():
        raise ArtifactError(f"{file}: no such bench report")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{file}: not a readable JSON report: {exc}") from None
    return check_report(data, str(file))


def write_report(out: str | Path, report: Mapping[str, Any]) -> Path:
    """bench.json first, then the pages rendered from the JSON as written (read back from disk)."""
    from bench.render_html import render_html
    from bench.render_md import render_markdown

    folder = Path(out)
    path = folder / REPORT_JSON
    atomic_write_json(path, check_report(dict(report)), allow_nan=False)
    written = load_report(path)
    atomic_write_text(folder / REPORT_MD, render_markdown(written))
    atomic_write_text(folder / REPORT_HTML, render_html(written))
    return path
