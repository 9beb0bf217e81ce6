"""The fidelity targets every quantized output is checked against, and the verdict in its report.

A user choosing between methods needs to see at once whether one costs too much, not derive it
from the tables: held-out action-token agreement with the source of at least 99% for 8-bit
methods and 97% for lower bit widths, and, when closed-loop episodes ran, success on each split
no more than 3 points below the source's. The closed-loop check is on the rates alone: with few
episodes one lost episode misses it, and the report's McNemar p says whether the drop is chance.
A miss names the remedy this tool has for that kind of method.
"""

from __future__ import annotations

from typing import Any

TOKEN_AGREEMENT_MIN_8BIT = 0.99  # 8 bits and more
TOKEN_AGREEMENT_MIN_LOW_BIT = 0.97  # fewer than 8 bits (int4, NF4, FP4)
SUCCESS_DROP_MAX = 0.03  # per split, as a fraction of episodes (3 points)
_ROUNDING = 9  # rates are k / n: 0.50 - 0.47 must compare equal to 0.03


def token_agreement_min(bits: int) -> float:
    return TOKEN_AGREEMENT_MIN_8BIT if bits >= 8 else TOKEN_AGREEMENT_MIN_LOW_BIT


def remedy(source: str, bits: int) -> str:
    """What to try after a miss, for a method reading `source` ("artifact" or "checkpoint")."""
    if source == "artifact":
        text = "keep the K most sensitive layers in fp32 (--keep-sensitive K; --sensitivity shows the ranking)"
    else:  # bitsandbytes replaces whole module groups; the per-layer choice is on the ONNX side
        text = ("export the checkpoint and quantize the artifact with an ONNX method, which can keep the K most "
                "sensitive layers in fp32 (--keep-sensitive K)")
    return text + (", or use an 8-bit method" if bits < 8 else "")


def check_targets(bits: int, source: str, token_agreement: float,
                  closed_loop: dict[str, Any] | None) -> dict[str, Any]:
    """{"checks": [{check, op, bound, measured, met}], "met": all of them, "remedy": on a miss}."""
    checks = [_check("token_agreement", ">=", token_agreement_min(bits), token_agreement)]
    if closed_loop:
        for split, source_rate in closed_loop["source"].items():
            drop = source_rate - closed_loop["quantized"][split]
            checks.append(_check(f"success_drop_{split}", "<=", SUCCESS_DROP_MAX, drop))
    met = all(c["met"] for c in checks)
    return {"checks": checks, "met": met, "remedy": None if met else remedy(source, bits)}


def _check(name: str, op: str, bound: float, measured: float) -> dict[str, Any]:
    value = round(float(measured), _ROUNDING)
    met = value >= bound if op == ">=" else value <= bound
    return {"check": name, "op": op, "bound": bound, "measured": value, "met": bool(met)}


def _shown(check: dict[str, Any], value: float) -> str:
    # Agreement is a share of tokens; a success drop is a difference of rates, in points.
    return f"{value:.1%}" if check["check"] == "token_agreement" else f"{100 * value:.1f} points"


def targets_markdown(targets: dict[str, Any]) -> list[str]:
    lines = ["", "## Targets", "", "| check | required | measured | |", "|---|---|---|---|"]
    for c in targets["checks"]:
        lines.append(f"| {c['check']} | {c['op']} {_shown(c, c['bound'])} | {_shown(c, c['measured'])} | "
                     f"{'met' if c['met'] else '**missed**'} |")
    if targets["remedy"]:
        lines += ["", f"A target is missed: {targets['remedy']}."]
    return lines
