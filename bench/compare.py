"""Compare two bench reports and flag regressions: the check a user's CI runs on every change.

    result = compare_reports(load_report("old.json"), load_report("new.json"), threshold=0.1)
    print(result.format_table()); sys.exit(1 if result.regressed else 0)

Variants are matched by label. A metric regresses when it moved the bad way by more than
`threshold` times its old value (relative, so one threshold fits Hz, milliseconds and rates):

  hz_median       Hz (1 / median latency)          lower is worse
  p99_latency_s   tail latency                     higher is worse
  token_agreement fidelity to the reference         lower is worse (only when both reports have it)
  success_rate    closed-loop success               lower is worse (only when both reports have it)

Variants present in only one report are listed, not failed: adding or dropping a backend is a
change of the benchmark, not of the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from rt2edge.errors import ConfigError

# name -> (getter, +1 if higher is better else -1)
METRICS: dict[str, tuple[Callable[[Mapping[str, Any]], float | None], int]] = {
    "hz_median": (lambda v: v["timing"].get("hz_median"), +1),
    "p99_latency_s": (lambda v: v["timing"]["latency"].get("p99_s"), -1),
    "token_agreement": (lambda v: (v.get("fidelity") or {}).get("token_agreement"), +1),
    "success_rate": (lambda v: (v.get("success") or {}).get("success_rate"), +1),
}


@dataclass(frozen=True)
class MetricChange:
    variant: str
    metric: str
    old: float
    new: float
    change: float  # (new - old) / old; 0 when old is 0 and new too
    regressed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Comparison:
    threshold: float
    changes: list[MetricChange] = field(default_factory=list)
    only_old: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[MetricChange]:
        return [c for c in self.changes if c.regressed]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "regressed": self.regressed,
                "changes": [c.to_dict() for c in self.changes], "only_old": self.only_old,
                "only_new": self.only_new}

    def format_table(self) -> str:
        head = f"{'variant':<32}{'metric':<17}{'old':>12}{'new':>12}{'change':>9}  verdict"
        lines = [head, "-" * len(head)]
        for c in self.changes:
            lines.append(f"{c.variant:<32}{c.metric:<17}{c.old:>12.4g}{c.new:>12.4g}{100 * c.change:>8.1f}%  "
                         + ("REGRESSION" if c.regressed else "ok"))
        for label in self.only_old:
            lines.append(f"{label:<32}only in the old report")
        for label in self.only_new:
            lines.append(f"{label:<32}only in the new report")
        verdict = (f"{len(self.regressions)} regression(s) beyond {100 * self.threshold:g}%" if self.regressed
                   else f"no regression beyond {100 * self.threshold:g}%")
        return "\n".join(lines + [verdict])


def _change(old: float, new: float) -> float:
    if old == 0:
        return 0.0 if new == 0 else float("inf") if new > 0 else float("-inf")
    return (new - old) / abs(old)


def compare_reports(old: Mapping[str, Any], new: Mapping[str, Any], threshold: float = 0.1) -> Comparison:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 10:
        raise ConfigError("threshold", f"must be a relative change in [0, 10), got {threshold!r}")
    old_by = {v["label"]: v for v in old["variants"]}
    new_by = {v["label"]: v for v in new["variants"]}
    result = Comparison(float(threshold), only_old=[k for k in old_by if k not in new_by],
                        only_new=[k for k in new_by if k not in old_by])
    for label, before in old_by.items():
        after = new_by.get(label)
        if after is None:
            continue
        for metric, (get, sign) in METRICS.items():
            a, b = get(before), get(after)
            if a is None or b is None:
                continue
            change = _change(float(a), float(b))
            result.changes.append(MetricChange(label, metric, float(a), float(b), change,
                                               regressed=sign * change < -threshold))
    return result
