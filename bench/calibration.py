"""The projection's efficiency factor and its validation against published OpenVLA-7B latencies.

bench/calibration.toml holds the factor, the one published figure it was fitted on and the ones
held out, decided before the comparison (the file says why that figure). This module reloads it,
recomputes the fit (so a changed cost model or device profile that silently moves the factor is
caught by the tests) and returns the comparison table: published, projected, error %.

    from bench.calibration import comparison_table
    for row in comparison_table(): print(row.to_dict())
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from bench.architecture import openvla_7b
from bench.costs import CostBreakdown, vla_costs
from bench.devices import get_device
from bench.projection import Efficiency, project, roofline_seconds
from rt2edge.errors import ConfigError
from rt2edge.optional import require_toml

CALIBRATION_FILE = Path(__file__).with_name("calibration.toml")
TOLERANCE_PCT = 25.0  # the acceptance bound of the projection on held-out figures


@dataclass(frozen=True)
class PublishedFigure:
    variant: str
    precision: str
    latency_ms: float
    stack: str


@dataclass(frozen=True)
class ComparisonRow:
    variant: str
    precision: str
    role: str  # "fitted" or "held-out"
    published_ms: float
    projected_ms: float

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.projected_ms / self.published_ms - 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_pct": self.error_pct}


@dataclass(frozen=True)
class Calibration:
    efficiency: Efficiency
    device: str
    model: str
    text_tokens: int
    head: str
    vision_precision: str
    published: tuple[PublishedFigure, ...]
    recorded: tuple[Mapping[str, Any], ...]  # the comparison as it was when the factor was fixed

    def figure(self, variant: str) -> PublishedFigure:
        for fig in self.published:
            if fig.variant == variant:
                return fig
        raise ConfigError("variant", f"no published figure {variant!r}; have "
                                     f"{[f.variant for f in self.published]}")


def load_calibration(path: str | Path | None = None) -> Calibration:
    file = Path(path) if path is not None else CALIBRATION_FILE
    toml = require_toml("reading the projection calibration")
    try:
        with file.open("rb") as fh:
            data = toml.load(fh)
        eff, work = data["efficiency"], data["workload"]
        published = tuple(PublishedFigure(str(p["variant"]), str(p["precision"]), float(p["latency_ms"]),
                                          str(p["stack"])) for p in data["published"])
        fitted = str(eff["fitted_on"])
        efficiency = Efficiency(
            value=float(eff["value"]), fitted_on=fitted, held_out=tuple(eff["held_out"]),
            source=f"fitted on the published {eff['model']} {fitted} latency on {eff['device']} "
                   f"(held out: {', '.join(eff['held_out'])}); {file.name}")
        return Calibration(efficiency=efficiency, device=str(eff["device"]), model=str(eff["model"]),
                           text_tokens=int(work["text_tokens"]), head=str(work["head"]),
                           vision_precision=str(work["vision_precision"]), published=published,
                           recorded=tuple(data.get("result", ())))
    except OSError as exc:
        raise ConfigError("calibration", f"{file}: cannot read: {exc}") from None
    except (KeyError, TypeError, ValueError, toml.TOMLDecodeError) as exc:
        raise ConfigError("calibration", f"{file}: malformed: {exc!r}") from None


def reference_costs(fig: PublishedFigure, cal: Calibration) -> CostBreakdown:
    if cal.model != "openvla-7b":
        raise ConfigError("calibration.model", f"only openvla-7b is wired up, got {cal.model!r}")
    return vla_costs(openvla_7b(), fig.precision, vision_precision=cal.vision_precision,
                     text_tokens=cal.text_tokens, head=cal.head)


def fit_efficiency(variant: str | None = None, cal: Calibration | None = None) -> float:
    """The factor e that makes the projection of `variant` equal its published latency.

    Every stage time is (ideal roofline time) / e + launch, so total = S / e + L and e = S / (T - L).
    """
    cal = cal or load_calibration()
    fig = cal.figure(variant or cal.efficiency.fitted_on)
    ideal, launch = roofline_seconds(reference_costs(fig, cal), get_device(cal.device))
    budget = fig.latency_ms / 1e3 - launch
    if budget <= 0:
        raise ConfigError("calibration", f"launch overhead alone ({launch * 1e3:.1f} ms) exceeds the "
                                         f"published {fig.latency_ms} ms")
    return ideal / budget


def comparison_table(cal: Calibration | None = None, efficiency: Efficiency | None = None) -> list[ComparisonRow]:
    """Published vs projected latency of every published figure, with the stored (or given) factor."""
    cal = cal or load_calibration()
    eff = efficiency or cal.efficiency
    rows = []
    for fig in cal.published:
        projected = project(reference_costs(fig, cal), cal.device, eff).total_s * 1e3
        role = "fitted" if fig.variant == eff.fitted_on else "held-out"
        rows.append(ComparisonRow(fig.variant, fig.precision, role, fig.latency_ms, projected))
    return rows


def cross_validation(cal: Calibration | None = None) -> dict[str, list[ComparisonRow]]:
    """The comparison for every possible choice of the fitted figure (a robustness check: the
    stored choice is not the only one that passes)."""
    cal = cal or load_calibration()
    out = {}
    for fig in cal.published:
        eff = Efficiency(fit_efficiency(fig.variant, cal), source=f"fitted on {fig.variant}",
                         fitted_on=fig.variant,
                         held_out=tuple(f.variant for f in cal.published if f is not fig))
        out[fig.variant] = comparison_table(cal, eff)
    return out
