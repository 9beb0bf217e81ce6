"""quantize_report.json (the source of truth) and quantize_report.md, written inside the output.

Sections: what was done (method, bits, block size, algorithm, target, kept groups / layers), size
on disk and weight bytes before/after, the held-out fidelity (action-token agreement, per-dim
action error in real units, teacher-forced logit KL), runtime latency measured during the
held-out pass, the per-layer sensitivity ranking when it ran, closed-loop success next to
the source's when `episodes` was given, and whether the fidelity targets are met.
"""

from __future__ import annotations

from typing import Any

from quantize.config import QuantizeConfig
from quantize.fidelity import FidelityReport, LogitFidelity
from quantize.registry import MethodOutput, QuantMethod
from quantize.sizes import compression
from quantize.targets import check_targets, targets_markdown

REPORT_STEM = "quantize_report"
SENSITIVITY_ROWS = 20  # the Markdown shows the top of the ranking; the JSON has every layer


def build_report(cfg: QuantizeConfig, method: QuantMethod, result: MethodOutput, fidelity: FidelityReport,
                 logits: LogitFidelity | None, seconds: float, closed_loop: dict[str, Any] | None
                 ) -> dict[str, Any]:
    details = dict(result.details)
    latency = {name: fn.latency() for name, fn in (("source", result.reference), ("quantized", result.candidate))
               if callable(getattr(fn, "latency", None))}
    return {
        "method": method.name, "description": method.description, "bits": cfg.bits,
        "block_size": cfg.block_size, "algorithm": cfg.algorithm, "target": cfg.target,
        "source": str(cfg.source), "out": str(cfg.out), "seconds": round(seconds, 3),
        "size_on_disk": details.pop("size_on_disk", None),
        "weight_bytes": {"before": result.bytes_before, "after": result.bytes_after,
                         "ratio": compression(result.bytes_before, result.bytes_after)},
        "holdout": {"source": cfg.calibration, "frames": fidelity.n_observations,
                    "seed": cfg.holdout_seed if cfg.calibration == "sim" else None},
        "fidelity": fidelity.to_dict(),
        "action_logits": None if logits is None else logits.to_dict(),
        "latency": latency or None,
        "sensitivity": details.pop("sensitivity", None),
        "closed_loop": closed_loop,
        "targets": check_targets(method.bits, method.source, fidelity.token_agreement, closed_loop),
        "details": details,
    }


def _bytes_table(before: dict[str, int], after: dict[str, int]) -> list[str]:
    lines = ["| part | bytes before | bytes after | after/before |", "|---|---|---|---|"]
    for group, b in before.items():
        a = after.get(group, 0)
        lines.append(f"| {group} | {b:,} | {a:,} | {a / b:.3f} |" if b else f"| {group} | {b:,} | {a:,} | - |")
    return lines


def _sensitivity_lines(sens: dict[str, Any]) -> list[str]:
    lines = ["", f"## Per-layer sensitivity ({sens['metric']})", "",
             f"{len(sens['layers'])} layers, {sens['seconds']:.1f} s; the {sens['kept']} most sensitive kept "
             "in fp32", "", "| rank | layer | group | K x N | top-1 agreement | KL mean (nats) | kept |",
             "|---|---|---|---|---|---|---|"]
    for row in sens["layers"][:SENSITIVITY_ROWS]:
        k, n = row["shape"]
        lines.append(f"| {row['rank']} | {row['label']} | {row['group']} | {k} x {n} | "
                     f"{row['top1_agreement']:.1%} | {row['kl_mean']:.3g} | {'yes' if row['kept_fp32'] else ''} |")
    return lines


def _closed_loop_lines(loop: dict[str, Any]) -> list[str]:
    lines = ["", f"## Closed loop ({loop['episodes']} episodes per split, seed {loop['seed']})", "",
             "| split | source success | quantized success | only source / only quantized | McNemar p |",
             "|---|---|---|---|---|"]
    paired = {c["split"]: c for c in loop.get("paired", [])}
    for split in loop["source"]:
        c = paired.get(split)
        pair = f"{c['only_a']} / {c['only_b']} | {c['p_value']:.3g}" if c else "- | -"
        lines.append(f"| {split} | {loop['source'][split]:.1%} | {loop['quantized'][split]:.1%} | {pair} |")
    pooled = paired.get(None)
    if pooled is not None:  # both splits: twice the episodes, the test with the most power
        rates = [(pooled["both"] + pooled[k]) / pooled["episodes"] for k in ("only_a", "only_b")]
        lines.append(f"| all | {rates[0]:.1%} | {rates[1]:.1%} | {pooled['only_a']} / {pooled['only_b']} | "
                     f"{pooled['p_value']:.3g} |")
    return lines


def report_markdown(report: dict[str, Any], fidelity: FidelityReport, logits: LogitFidelity | None) -> str:
    details = report["details"]
    kept = details.get("kept_groups", [])
    lines = [f"# Quantization: {report['method']}", "", report["description"], "",
             f"- source: `{report['source']}`",
             f"- bits: {report['bits']}, block size: {report['block_size'] or 'per-channel'}"
             + (f", algorithm: {report['algorithm']}" if report["algorithm"] else "")
             + (f", target: {report['target']}" if report["target"] else ""),
             f"- kept in source precision: {', '.join(kept) or 'none'}"
             + (f"; layers {', '.join(details['kept_sensitive_layers'])}" if details.get("kept_sensitive_layers")
                else ""),
             f"- time: {report['seconds']:.1f} s"]
    size = report.get("size_on_disk")
    if size:
        lines.append(f"- size on disk: {size['source']:,} -> {size['quantized']:,} bytes "
                     f"({size['quantized'] / size['source']:.3f}x)")
    for name, lat in (report.get("latency") or {}).items():
        if lat:
            lines.append(f"- runtime latency ({name}, CPU, held-out pass): p50 {lat['p50_ms']:.2f} ms, "
                         f"p90 {lat['p90_ms']:.2f} ms, {lat['hz']:.1f} Hz")
    lines += ["", "## Weight bytes", ""] + _bytes_table(report["weight_bytes"]["before"],
                                                        report["weight_bytes"]["after"])
    hold = report["holdout"]
    lines += ["", f"Held-out frames: {hold['frames']} from {hold['source']}"
              + (f" (seed {hold['seed']}, disjoint from the calibration frames)" if hold["seed"] is not None
                 else " (rows the calibration did not take)"), ""]
    text = "\n".join(lines) + "\n" + fidelity.to_markdown("Action fidelity vs the source (held-out)")
    if logits is not None:
        text += "\n" + logits.to_markdown()
    extra = []
    if report.get("sensitivity"):
        extra += _sensitivity_lines(report["sensitivity"])
    if report.get("closed_loop"):
        extra += _closed_loop_lines(report["closed_loop"])
    extra += targets_markdown(report["targets"])  # never empty: every report ends with its verdict
    return text + "\n".join(extra) + "\n"
