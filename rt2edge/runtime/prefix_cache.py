"""The prefix cache: keys/values of the prompt text before the image, kept per instruction.

[Contract] In a causal decoder the keys and values of the tokens before the image depend on those
tokens alone (positions from 0, no later token visible). An instruction-first prompt puts the whole
instruction there, so `Policy` takes them once per instruction from the first whole prefill's
`present.*` and later frames prefill only the image tokens and what follows (`past.*` = the text's
KV, `past_length` = its length): the same result for a fraction of the prompt. Not where the text
sees more than itself: prefix-LM families (the text attends to the image), parallel decoders (no
KV input), and graphs that quantize activations per tensor at run time (int8-dynamic: the scale of
a run depends on every row in it, so the text's KV depends on the image). `Policy.load` also checks
the opened graphs (`outputs_match`) before it keeps the cache on.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from rt2edge.errors import ConfigError

# Precisions whose decoder quantizes activations with a scale taken over the whole run.
RUNTIME_ACTIVATION_SCALES = frozenset({"int8-dynamic"})
# Tolerance of the load-time check, relative to each tensor's own magnitude: reordered float
# accumulation (a prefill of T - n rows instead of T) moves fp32 by ~1e-6 and fp16 by ~1e-3.
CHECK_TOLERANCE = 1e-2


def check_prefix_cache_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError("prefix_cache_size", f"must be an int >= 0, got {value!r}")
    return value


def prefix_cache_refusal(instruction_first: bool, prefix_lm: bool, parallel: bool, precision: str) -> str | None:
    """Why an artifact cannot use the prefix cache (None: it can)."""
    if not instruction_first:
        return "the prompt puts the image first: no text precedes it"
    if prefix_lm:
        return "prefix-LM decoder: the text attends to the image"
    if parallel:
        return "parallel decoder: no KV cache input"
    if precision in RUNTIME_ACTIVATION_SCALES:
        return f"{precision}: activation scales are taken over the whole run, image included"
    return None


def outputs_match(whole: Sequence[np.ndarray], cached: Sequence[np.ndarray]) -> bool:
    """The decoder outputs of a whole prefill and of a cached one agree: same shapes, every
    tensor within CHECK_TOLERANCE of its own largest magnitude (bins exactly)."""
    for a, b in zip(whole, cached, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return False
        if a.dtype.kind in "iu":
            if not np.array_equal(a, b):
                return False
            continue
        scale = float(np.abs(a).max()) if a.size else 0.0
        if not np.isfinite(b).all() or np.abs(a - b).max(initial=0.0) > CHECK_TOLERANCE * max(scale, 1e-6):
            return False
    return True


class PrefixKVCache:
    """An LRU of instruction -> per-layer past KV of the text before the image. Size 0: off."""

    def __init__(self, size: int):
        self.size = check_prefix_cache_size(size)
        self._entries: OrderedDict[str, list[np.ndarray]] = OrderedDict()

    def __contains__(self, text: str) -> bool:
        return text in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, text: str) -> list[np.ndarray] | None:
        kv = self._entries.get(text)
        if kv is not None:
            self._entries.move_to_end(text)
        return kv

    def put(self, text: str, presents: Sequence[np.ndarray], length: int) -> None:
        """Keep the first `length` positions of a whole prefill's present KV (copies: a slice
        would keep the whole prompt's arrays alive)."""
        if not self.size:
            return
        self._entries[text] = [kv[:, :, :length].copy() for kv in presents]
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def pop(self, text: str) -> None:
        self._entries.pop(text, None)

    def turn_off(self) -> None:
        self.size = 0
        self._entries.clear()
