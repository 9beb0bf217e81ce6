"""The fidelity targets every quantized output is checked against, and the verdict in its report.

A user choosing between methods needs to see at once whether one costs too much, not derive it
from the tables: held-out action-token agreement with the source of at least 99% for 8-bit
methods and 97% for 4-bit ones, and, when closed-loop episodes ran, success on each split no more
than 3 points below the source's. A miss names the remedy this tool has for it: rank the layers
and keep the most sensitive in the source precision.
"""

from __future__ import annotations

from typing import Any

TOKEN_AGREEMENT_MIN = {8: 0.99, 4: 0.97}  # by the method's bits
SUCCESS_DROP_MAX = 0.03  # per split, as a fraction of episodes
REMEDY = ("keep the K most sensitive layers in fp32 (--keep-sensitive K; --sensitivity shows the ranking), "
          "or choose a method with more bits")
_ROUNDING = 9  # rates are k / n: 0.50 - 0.47 must compare equal to 0.03


def check_targets(bits: int, token_agreement: float, closed_loop: dict[str, Any] | None) -> dict[str, Any]:
    """{"checks": [{check, op, bound, measured, met}], "met": all of them, "remedy": on a miss}."""
    checks = []
    floor = TOKEN_AGREEMENT_MIN.get(bits)
    if floor is not None:
        checks.append(_check("token_agreement", ">=", floor, token_agreement))
    if closed_loop:
        for split, source_rate in closed_loop["source"].items():
            drop = source_rate - closed_loop["quantized"][split]
            checks.append(_check(f"success_drop_{split}", "<=", SUCCESS_DROP_MAX, drop))
    met = all(c["met"] for c in checks)
    return {"checks": checks, "met": met, "remedy": None if met else REMEDY}


def _check(name: str, op: str, bound: float, measured: float) -> dict[str, Any]:
    value = round(float(measured), _ROUNDING)
    met = value >= bound if op == ">=" else value <= bound
    return {"check": name, "op": op, "bound": bound, "measured": value, "met": bool(met)}


def targets_markdown(targets: dict[str, Any]) -> list[str]:
    lines = ["", "## Targets", "", "| check | required | measured | |", "|---|---|---|---|"]
    for c in targets["checks"]:
        lines.append(f"| {c['check']} | {c['op']} {c['bound']:.1%} | {c['measured']:.1%} | "
                     f"{'met' if c['met'] else '**missed**'} |")
    if targets["remedy"]:
        lines += ["", f"A target is missed: {targets['remedy']}."]
    return lines
