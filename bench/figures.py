"""The report's figures as data: what each plot shows, computed from the report JSON only.

A FigureSpec is both the input of the renderer (bench/plots.py) and what the HTML page embeds
next to the image (as JSON), so a reader, or a test, can check every plotted number against the
report. Figures: latency distribution, Hz vs size, accuracy vs Hz (Pareto), per-stage breakdown,
per-decode-step latency, roofline fraction per stage, projected Hz per Jetson device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from bench.tables import STACK_STAGES


@dataclass
class Series:
    name: str
    x: list[Any]
    y: list[float]


@dataclass
class FigureSpec:
    id: str
    title: str
    kind: str  # box | scatter | pareto | stacked | line | grouped
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)  # bar charts: one group per category
    note: str = ""

    @property
    def empty(self) -> bool:
        return not any(s.y for s in self.series)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_figure(report: Mapping[str, Any]) -> FigureSpec:
    return FigureSpec("latency", "Latency per control step", "box", "variant", "latency (ms)",
                      [Series(v["label"], [], [s * 1e3 for s in v["timing"]["samples_s"]]) for v in report["variants"]],
                      note="every timed step; box = quartiles, whiskers = 1.5 IQR, dots = outliers")


def hz_size_figure(report: Mapping[str, Any]) -> FigureSpec:
    return FigureSpec("hz_vs_size", "Control rate vs deployed size", "scatter", "size on disk (MB)",
                      "Hz (1 / median latency)",
                      [Series(v["label"], [v["size_bytes"] / 1e6], [v["timing"]["hz_median"]])
                       for v in report["variants"]])


def accuracy_metric(report: Mapping[str, Any]) -> tuple[str, str] | None:
    """(key, axis label) of the accuracy the Pareto plot uses: closed-loop success when some variant
    succeeds at all, else token agreement with the reference (all-zero success ranks nothing),
    else success (all zero) when only rollouts were run."""
    success = [v["success"]["success_rate"] for v in report["variants"] if v.get("success")]
    if any(rate > 0 for rate in success):
        return "success_rate", "closed-loop success rate"
    if any(v.get("fidelity") for v in report["variants"]):
        return "token_agreement", "token agreement with the reference"
    if success:
        return "success_rate", "closed-loop success rate"
    return None


def accuracy_of(variant: Mapping[str, Any], key: str) -> float | None:
    block = variant.get("success") if key == "success_rate" else variant.get("fidelity")
    return None if not block else block.get(key)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both Hz and accuracy (ties kept), sorted by Hz."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def pareto_figure(report: Mapping[str, Any]) -> FigureSpec:
    metric = accuracy_metric(report)
    if metric is None:
        return FigureSpec("pareto", "Accuracy vs control rate", "pareto", "Hz", "accuracy",
                          note="no --reference or --episodes given: nothing to plot")
    key, label = metric
    series, points = [], []
    for v in report["variants"]:
        acc = accuracy_of(v, key)
        if acc is not None:
            series.append(Series(v["label"], [v["timing"]["hz_median"]], [acc]))
            points.append((v["timing"]["hz_median"], acc))
    front = pareto_front(points)
    series.append(Series("Pareto front", [p[0] for p in front], [p[1] for p in front]))
    return FigureSpec("pareto", "Accuracy vs control rate", "pareto", "Hz (1 / median latency)", label, series)


def stage_figure(report: Mapping[str, Any]) -> FigureSpec:
    labels = [v["label"] for v in report["variants"]]
    present = [s for s in STACK_STAGES if any(s in v["timing"]["stages"] for v in report["variants"])]
    series = [Series(s, labels, [v["timing"]["stages"][s]["p50_s"] * 1e3 if s in v["timing"]["stages"] else 0.0
                                 for v in report["variants"]]) for s in present]
    return FigureSpec("stages", "Per-stage breakdown (median ms per stage)", "stacked", "variant", "ms",
                      series, labels, note="medians per stage; their sum differs slightly from the median total")


def decode_step_figure(report: Mapping[str, Any]) -> FigureSpec:
    series = []
    for v in report["variants"]:
        steps = v["timing"].get("decode_steps_by_index") or []
        series.append(Series(v["label"], list(range(1, len(steps) + 1)), [s["p50_s"] * 1e3 for s in steps]))
    return FigureSpec("decode_steps", "Each decode step (median ms)", "line", "decode step after the prefill",
                      "ms", series)


def roofline_figure(report: Mapping[str, Any]) -> FigureSpec:
    stages = list(dict.fromkeys(s for v in report["variants"] for s in v["roofline"]["stages"]))
    series = []
    for v in report["variants"]:
        bounds = v["roofline"]["stages"]
        for key, suffix in (("fraction", ""), ("fraction_with_overhead", " (+ overhead)")):
            series.append(Series(v["label"] + suffix, stages,
                                 [(bounds[s][key] or 0.0) if s in bounds else 0.0 for s in stages]))
    return FigureSpec("roofline", "Fraction of the roofline bound per stage (this machine)", "grouped",
                      "stage", "bound / measured", series, stages,
                      note="1.0 = at the bound; '+ overhead' adds the measured per-op and session.run cost")


def projection_figure(report: Mapping[str, Any]) -> FigureSpec:
    devices = list(dict.fromkeys(p["device_name"] for v in report["variants"] for p in v["projection"]))
    series = []
    for v in report["variants"]:
        by = {p["device_name"]: p["hz"] for p in v["projection"]}
        series.append(Series(v["label"], devices, [by.get(d, 0.0) for d in devices]))
    return FigureSpec("projection", "Projected Hz per Jetson device (ESTIMATE)", "grouped", "device",
                      "Hz (estimate)", series, devices, note=report["projection_label"])


def all_figures(report: Mapping[str, Any]) -> list[FigureSpec]:
    return [latency_figure(report), hz_size_figure(report), pareto_figure(report), stage_figure(report),
            decode_step_figure(report), roofline_figure(report), projection_figure(report)]
