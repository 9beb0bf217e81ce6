"""Weight bytes per module group (vision / projector / embeddings / language / head).

Counted from what a model's state dict holds (for bitsandbytes: the codes plus SCB / absmax /
quant maps / packed quant states), a tensor shared by two names (a tied LM head) once, in the
first group that reaches it, so the groups add up to the total. Groups are assigned by module-name
prefix, longest match first (`model.language_model.embed_tokens` is "embeddings", not "language").
"""

from __future__ import annotations

from typing import Iterable, Mapping

OTHER = "other"


def group_bytes(tensor_bytes: Iterable[tuple[str, int]], prefixes: Mapping[str, str]) -> dict[str, int]:
    """Sum (name, bytes) pairs per group of `prefixes` (group -> module prefix); unmatched names
    go to "other"; "total" is the sum of all."""
    ordered = sorted(prefixes.items(), key=lambda kv: -len(kv[1]))
    out = {group: 0 for group in prefixes}
    out[OTHER] = 0
    for name, size in tensor_bytes:
        group = next((g for g, p in ordered if name == p or name.startswith(p + ".")), OTHER)
        out[group] += int(size)
    out["total"] = sum(v for k, v in out.items())
    return out


def compression(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, float]:
    """after / before per group (groups with 0 bytes before are left out)."""
    return {g: after.get(g, 0) / b for g, b in before.items() if b}
