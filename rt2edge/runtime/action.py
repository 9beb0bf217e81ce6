"""What `Policy.act` returns, and the safe action it returns when it cannot produce a real one."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from rt2edge.actions import ActionTokenizer

STAGES = ("preprocess", "embed", "vision", "prefill", "decode", "postprocess")


def _frozen(arr: Any, dtype: Any) -> np.ndarray:
    out = np.array(arr, dtype=dtype, copy=True)
    out.setflags(write=False)  # a frozen dataclass whose arrays can be edited would not be frozen
    return out


@dataclass(frozen=True)
class Action:
    """One action of the policy.

    values: float32 (action_dim,) in real units (the tokenizer's continuous dims, then the
        terminate flag in {0, 1} if the tokenizer has one), always within the tokenizer's bounds.
    terminate: the terminate flag as a bool (False when the tokenizer has none).
    tokens / bins: the decoded action token ids / bin indices; empty for a safe action.
    timing: seconds per stage (`STAGES`, only those that ran) plus "total".
    decode_steps: seconds of each decoder run after the prefill.
    safe_fallback: True when this is the safe action (deadline, runtime failure), see `reason`.
    loop_escape: True when its bins were sampled to leave a loop (loop_escape.py), not the argmax.
    """

    values: np.ndarray
    terminate: bool
    tokens: np.ndarray
    bins: np.ndarray
    timing: Mapping[str, float]
    safe_fallback: bool = False
    reason: str | None = None
    decode_steps: tuple[float, ...] = field(default=())
    loop_escape: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _frozen(self.values, np.float32))
        object.__setattr__(self, "tokens", _frozen(self.tokens, np.int64))
        object.__setattr__(self, "bins", _frozen(self.bins, np.int64))
        object.__setattr__(self, "timing", MappingProxyType(dict(self.timing)))
        object.__setattr__(self, "decode_steps", tuple(float(t) for t in self.decode_steps))

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": [float(v) for v in self.values],
            "terminate": bool(self.terminate),
            "tokens": [int(t) for t in self.tokens],
            "bins": [int(b) for b in self.bins],
            "timing": dict(self.timing),
            "decode_steps": list(self.decode_steps),
            "safe_fallback": self.safe_fallback,
            "reason": self.reason,
            "loop_escape": self.loop_escape,
        }


class ActionGuard:
    """Clips every action into the tokenizer's bounds and builds the safe action.

    [Contract] The safe action is: zero for every continuous dim except the gripper, the gripper
    held at the last commanded value (or `safe_gripper` before the first action of an episode,
    default 0.0), terminate 0; then clipped into the bounds like every other action (so a dim whose
    bounds exclude 0 gets its nearest bound; `Policy.load` warns about such dims). The gripper is
    the dim named "gripper" in the tokenizer's dim_names; without one, every dim is zeroed.
    """

    def __init__(self, tokenizer: ActionTokenizer, safe_gripper: float | None = None):
        self.num_dims = tokenizer.num_dims
        self.has_terminate = tokenizer.terminate
        self.low = np.asarray(tokenizer.action_low, dtype=np.float64)
        self.high = np.asarray(tokenizer.action_high, dtype=np.float64)
        self._low32, self._high32 = _float32_bounds_inward(self.low, self.high)  # once, not per act
        names = list(tokenizer.dim_names)
        self.gripper_dim = names.index("gripper") if "gripper" in names else None
        self.default_gripper = 0.0 if safe_gripper is None else float(safe_gripper)
        self.last_gripper: float | None = None

    @property
    def zero_outside_bounds(self) -> list[int]:
        """Continuous dims (gripper excluded) whose bounds do not contain 0."""
        return [d for d in range(self.num_dims) if d != self.gripper_dim
                and not (self.low[d] <= 0.0 <= self.high[d])]

    def reset(self, gripper: float | None = None) -> None:
        """Start of an episode: forget the last commanded gripper value (or set the current one)."""
        self.last_gripper = None if gripper is None else float(gripper)

    def clip(self, values: np.ndarray) -> np.ndarray:
        out = np.asarray(values, dtype=np.float32).copy()
        cont = np.nan_to_num(out[: self.num_dims], nan=0.0)
        out[: self.num_dims] = np.clip(cont, self._low32, self._high32)
        if self.has_terminate:
            out[self.num_dims] = 1.0 if out[self.num_dims] >= 0.5 else 0.0
        return out

    def commit(self, values: np.ndarray) -> None:
        """Remember the gripper value of an action handed to the robot."""
        if self.gripper_dim is not None:
            self.last_gripper = float(values[self.gripper_dim])

    def safe_values(self) -> np.ndarray:
        values = np.zeros(self.num_dims + int(self.has_terminate))
        if self.gripper_dim is not None:
            values[self.gripper_dim] = (self.default_gripper if self.last_gripper is None
                                        else self.last_gripper)
        return self.clip(values)

    def safe_action(self, reason: str, timing: Mapping[str, float]) -> Action:
        return Action(values=self.safe_values(), terminate=False, tokens=np.empty(0, np.int64),
                      bins=np.empty(0, np.int64), timing=timing, safe_fallback=True, reason=reason)


def _float32_bounds_inward(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 bounds that lie inside [low, high] (float64), so a clipped float32 action never
    exceeds a bound by a rounding step; a dim with low == high not representable in float32 gets
    its nearest float32 value."""
    low32, high32 = np.float32(low), np.float32(high)
    low32 = np.where(low32 < low, np.nextafter(low32, np.float32(np.inf)), low32)
    high32 = np.where(high32 > high, np.nextafter(high32, np.float32(-np.inf)), high32)
    nearest = np.float32(low)
    crossed = low32 > high32
    return np.where(crossed, nearest, low32).astype(np.float32), np.where(crossed, nearest, high32).astype(np.float32)
