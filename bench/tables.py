"""The report's tables as data (title, header, rows of strings), built from the report JSON only.

bench/render_md.py and bench/render_html.py format the same tables, so the Markdown and the HTML
page cannot disagree with each other or with the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

STACK_STAGES = ("preprocess", "embed", "vision", "prefill", "decode", "overhead", "postprocess")


@dataclass
class Table:
    key: str
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


def summary_table(report: Mapping[str, Any]) -> Table:
    rates = [f"{r:g}" for r in report["config"]["target_rates"]]
    t = Table("summary", "Control loop (warm-up excluded)",
              ["variant", "provider", "threads", "precision", "size MB", "p50 ms", "p90 ms", "p99 ms",
               "max ms", "Hz (1/p50)", "Hz sustained", "jitter std ms", "p99-p50 ms", "CPU ms p50", "CPU share"]
              + [f"miss @{r} Hz" for r in rates]
              + ["peak RSS MB", "RSS added MB", f"Hz / {report.get('baseline') or 'baseline'}", "CPU-time Hz ratio"],
              note=f"{report['config']['steps']} timed steps after {report['config']['warmup']} warm-up "
                   f"calls per variant ({report['config'].get('rounds', 1)} round(s)), cycling "
                   f"{report['observations']['frames']} simulator frames. CPU = process CPU time per step; "
                   "a CPU share well below 1 (1 thread) means other processes took the core: the CPU "
                   "figure is then the better estimate of a quiet core's latency.")
    for v in report["variants"]:
        tm, lat = v["timing"], v["timing"]["latency"]
        ratio, cpu_ratio = ((v.get("ratios") or {}).get(k) for k in ("hz_median", "hz_cpu_median"))
        t.rows.append([v["label"], v.get("provider", "-"), fmt(v.get("threads")), v.get("precision", "-"),
                       f"{v.get('size_bytes', 0) / 1e6:.2f}", ms(lat["p50_s"]), ms(lat["p90_s"]),
                       ms(lat["p99_s"]), ms(lat["max_s"]), f"{tm['hz_median']:.1f}", f"{tm['hz_sustained']:.1f}",
                       ms(tm["jitter_std_s"]), ms(tm["jitter_p99_p50_s"]),
                       ms((tm.get("cpu") or {}).get("p50_s")), fmt(tm.get("cpu_share"), 2)]
                      + [pct(tm["deadline_miss"].get(r)) for r in rates]
                      + [f"{v['memory']['peak_rss_mb']:.0f}", f"{v['memory']['rss_added_mb']:.0f}",
                         "-" if ratio is None else f"{ratio:.2f}x", "-" if cpu_ratio is None else f"{cpu_ratio:.2f}x"])
    return t


def stage_table(report: Mapping[str, Any]) -> Table:
    t = Table("stages", "Per-stage median latency (ms)",
              ["variant"] + list(STACK_STAGES) + ["total", "decode runs", "decode run p50 (each)"],
              note="decode = every decoder run after the prefill; overhead = generate() time outside the "
                   "vision tower and the language-model runs (torch backends only).")
    for v in report["variants"]:
        stages = v["timing"]["stages"]
        steps = v["timing"].get("decode_steps_by_index") or []
        t.rows.append([v["label"]] + [ms(stages[s]["p50_s"]) if s in stages else "-" for s in STACK_STAGES]
                      + [ms(stages["total"]["p50_s"]) if "total" in stages else "-", str(len(steps)),
                         " ".join(ms(s["p50_s"]) for s in steps) or "-"])
    return t


def _peaks(machine: Mapping[str, Any]) -> str:
    fp32 = f"fp32 {machine['ort_gemm_gflops']:.0f} GFLOP/s ORT MatMul"
    int8 = machine.get("ort_int8_gops") or 0.0
    return f"{fp32}, int8 {int8:.0f} GOP/s ORT MatMulInteger; measured" if int8 else f"{fp32}, measured"


def roofline_table(report: Mapping[str, Any]) -> Table:
    m = report["machine"]
    t = Table("roofline", "Roofline per stage on this machine",
              ["variant", "stage", "runs", "MFLOP", "MB moved", "limit", "peak GOP/s", "GB/s used", "bound ms",
               "overhead ms", "measured ms", "of roofline", "of roofline + overhead", "kernels"],
              note=(f"Bound = max(FLOPs / the peak of the stage's math unit ({_peaks(m)}), bytes / "
                    "copy bandwidth measured at the stage's working-set size). Bytes = weights + KV cache "
                    "(+ graph IO), no intermediate activations: a lower bound. Overhead = kernels x "
                    "per-op cost (+ session.run cost per run for ONNX Runtime), measured on this machine."))
    for v in report["variants"]:
        for name, b in v["roofline"]["stages"].items():
            t.rows.append([v["label"], name, str(b["runs"]), f"{b['flops'] / 1e6:.1f}", f"{b['bytes'] / 1e6:.2f}",
                           b["limit"], f"{b['peak_gflops']:.0f}", f"{b['bandwidth_gbs']:.0f}", ms(b["bound_s"]),
                           ms(b["overhead_s"]), ms(b["measured_s"]), pct(b["fraction"]),
                           pct(b["fraction_with_overhead"]), str(b["kernels"])])
        total = v["roofline"].get("total") or {}
        if total:
            t.rows.append([v["label"], "all of the above", "", "", "", "", "", "", ms(total["bound_s"]),
                           ms(total["overhead_s"]), ms(total["measured_s"]), pct(total["fraction"]),
                           pct(total["fraction_with_overhead"]), ""])
    return t


def projection_table(report: Mapping[str, Any]) -> Table:
    devices = list(dict.fromkeys(p["device_name"] for v in report["variants"] for p in v["projection"]))
    t = Table("projection", "Projected control rate per Jetson device (ESTIMATE)",
              ["variant"] + [f"{d} Hz" for d in devices], note=report["projection_label"])
    for v in report["variants"]:
        by = {p["device_name"]: p for p in v["projection"]}
        t.rows.append([v["label"]] + [f"{by[d]['hz']:.1f}" + ("" if by[d]["fits_memory"] else " (does not fit)")
                                      if d in by else "-" for d in devices])
    return t


def validation_table(report: Mapping[str, Any]) -> Table:
    val = report["openvla_validation"]
    t = Table("validation", f"Projection check: {val['model']} on {val['device']}",
              ["variant", "precision", "role", "published ms", "projected ms", "error"],
              note=(f"Efficiency {val['efficiency']:.4f} fitted on the published {val['fitted_on']} figure only; "
                    f"{', '.join(val['held_out'])} held out ({val['efficiency_source']}). "
                    "Published: Jetson AI Lab OpenVLA tutorial, AGX Orin 64GB."))
    for row in val["rows"]:
        t.rows.append([row["variant"], row["precision"], row["role"], f"{row['published_ms']:.0f}",
                       f"{row['projected_ms']:.1f}", f"{row['error_pct']:+.1f}%"])
    return t


def accuracy_table(report: Mapping[str, Any]) -> Table | None:
    ref = report.get("reference")
    if ref is None and not any(v.get("success") for v in report["variants"]):
        return None
    t = Table("accuracy", "Fidelity and closed-loop success",
              ["variant", "reference", "token agreement", "action agreement", "action MAE", "action max err",
               "success", "episodes", "only reference / only variant", "McNemar p", "Hz (1/p50)"],
              note="Reference: " + (f"{ref['label']} ({ref['source']})" if ref else "none given")
                   + ("" if not ref or not ref.get("success") else
                      f"; its own success {pct(ref['success']['success_rate'])} over "
                      f"{ref['success']['episodes']} episodes"))
    for v in report["variants"]:
        f, s = v.get("fidelity") or {}, v.get("success") or {}
        # Both splits together: the same scenes under the reference and the variant.
        pooled = next((c for c in s.get("paired_with_reference") or [] if c["split"] is None), None)
        pair = ([f"{pooled['only_a']} / {pooled['only_b']}", f"{pooled['p_value']:.3g}"] if pooled else ["-", "-"])
        t.rows.append([v["label"], f.get("reference", "-"), pct(f.get("token_agreement")),
                       pct(f.get("action_agreement")), fmt(f.get("action_mae")), fmt(f.get("action_max_abs_error")),
                       pct(s.get("success_rate")), fmt(s.get("episodes")), *pair, f"{v['timing']['hz_median']:.1f}"])
    return t


def machine_table(report: Mapping[str, Any]) -> Table:
    m = report["machine"]
    run = m.get("session_run_overhead") or {}
    by_size = m.get("working_set_bandwidth_gbs") or {}
    rows = [["cpu", m["cpu"]], ["threads", fmt(m["threads"])],
            ["probes timed in", "process CPU time (immune to other processes' load)"
             if m.get("clock") == "process-cpu" else "wall time"],
            ["DRAM copy / read bandwidth GB/s", f"{m['copy_bandwidth_gbs']:.1f} / {m['read_bandwidth_gbs']:.1f}"],
            ["ORT / numpy fp32 GEMM GFLOP/s", f"{m['ort_gemm_gflops']:.1f} / {m['numpy_gemm_gflops']:.1f}"],
            ["ORT int8 GEMM GOP/s (MatMulInteger u8 x s8)",
             f"{m['ort_int8_gops']:.1f}" if m.get("ort_int8_gops") else "-"],
            ["ORT per-op overhead us", f"{m['op_overhead_us']:.2f}"],
            ["ORT session.run fixed / per-tensor-pair us",
             f"{run.get('fixed_us', 0):.2f} / {run.get('per_tensor_us', 0):.2f}"],
            ["torch per-op overhead us", fmt(m.get("torch_op_overhead_us"))],
            ["copy bandwidth by working set (GB/s)",
             ", ".join(f"{int(k) / 2**20:g} MiB: {v:.0f}" for k, v in by_size.items()) or "-"]]
    return Table("machine", "This machine (measured at the start of the run)", ["quantity", "value"], rows)


def all_tables(report: Mapping[str, Any]) -> list[Table]:
    tables = [summary_table(report), stage_table(report), roofline_table(report)]
    accuracy = accuracy_table(report)
    if accuracy is not None:
        tables.append(accuracy)
    return tables + [projection_table(report), validation_table(report), machine_table(report)]
