"""Loop escape: sample the next move when the policy is about to repeat itself.

A VLA policy decoded greedily is a deterministic function of the current image. When the robot
gets back to a pose it already acted from, with the gripper in the same state, the policy sees
(nearly) the same image and commands the same move again: it is in a loop it cannot leave. In the
built-in simulator this is how the DAgger policies run out of steps (README item 18): 34 of round
5's 59 failed seen episodes oscillate between poses until the step limit.

`LoopMonitor` keeps the pose the runtime has commanded since `reset()` (the running sum of the
translation deltas it returned) and the gripper command, and says when the robot is back at a
state it acted from before. The runtime then samples that action's motion and gripper tokens from
the policy's own bin distributions at `temperature` instead of taking the argmax: a move the
policy finds plausible, not a random one, which takes the robot off the cycle. The terminate
token stays greedy (ending the episode is not a way out of a loop), and so does every action
taken from a new state.

What it assumes: translation dims named x, y, z that are end-effector deltas (RT-2's action
space), executed as commanded. A robot that clips a move (workspace limits) is back at a pose
the monitor thinks it left: a missed loop, never a wrong action.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from rt2edge.actions import ActionTokenizer
from rt2edge.errors import ConfigError

TRANSLATION_DIMS = ("x", "y", "z")
MAX_STATES = 10_000  # states kept per episode; older ones are forgotten (a robot that never resets)


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and bool(np.isfinite(value))


@dataclass(frozen=True)
class LoopEscape:
    """How the runtime leaves a loop.

    temperature: softmax temperature of the escape action's sampling (> 0; 1 = the policy's own
        distribution). On the built-in tasks 0.5, 1 and 2 are within noise of each other (README
        item 18); the lowest keeps the escape move closest to what the policy prefers.
    tolerance: how close (max over x, y, z, in the action's units) a commanded pose must come to
        one already acted from to count as a return.
    seed: seeds the sampling; `reset(seed=s)` reseeds it per episode from (seed, s), so an
        episode's draws do not depend on the episodes before it.
    """

    temperature: float = 0.5
    tolerance: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not (_real(self.temperature) and self.temperature > 0):
            raise ConfigError("loop_escape.temperature", f"must be a finite number > 0, got {self.temperature!r}")
        if not (_real(self.tolerance) and self.tolerance >= 0):
            raise ConfigError("loop_escape.tolerance", f"must be a finite number >= 0, got {self.tolerance!r}")
        if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError("loop_escape.seed", f"must be an int >= 0, got {self.seed!r}")


def translation_indices(tokenizer: ActionTokenizer) -> list[int]:
    """The action dims of x, y, z; ConfigError for an action space loop escape cannot track."""
    names = list(tokenizer.dim_names)
    missing = [d for d in TRANSLATION_DIMS if d not in names]
    if missing:
        raise ConfigError("loop_escape", f"needs end-effector delta dims named {list(TRANSLATION_DIMS)}; "
                                         f"this artifact's action dims are {names}")
    return [names.index(d) for d in TRANSLATION_DIMS]


# Gripper state codes of the states acted from: an int8 array compares in one vectorised step.
UNKNOWN, OPEN, CLOSED = -1, 0, 1


class LoopMonitor:
    """The commanded pose and gripper state of one episode, and the states acted from."""

    def __init__(self, config: LoopEscape, tokenizer: ActionTokenizer):
        self._translation = translation_indices(tokenizer)
        names = list(tokenizer.dim_names)
        self.config = config
        self.sampled_tokens = tokenizer.num_dims  # motion and gripper; the terminate token stays greedy
        self._gripper = names.index("gripper") if "gripper" in names else None
        low, high = np.asarray(tokenizer.action_low), np.asarray(tokenizer.action_high)
        # Closed = above the middle of the gripper's range: +-1 (RT-2) and [0, 1] conventions alike.
        self._gripper_middle = 0.0 if self._gripper is None else float(low[self._gripper] + high[self._gripper]) / 2
        self._rng = np.random.default_rng(config.seed)
        self.escapes = 0
        self.reset()

    def reset(self, gripper: float | None = None, seed: int | None = None) -> None:
        """Start of an episode: the commanded pose is the origin, nothing acted from yet.
        gripper: its current command, if known. seed: reseed the sampling from (config.seed, seed)."""
        self._pose = np.zeros(len(TRANSLATION_DIMS))
        self._closed = UNKNOWN if gripper is None else self._is_closed(gripper)
        self._poses = np.empty((0, len(TRANSLATION_DIMS)))
        self._states = np.empty(0, np.int8)  # the gripper state code of each row of _poses
        if seed is not None:
            self._rng = np.random.default_rng([self.config.seed, int(seed)])

    def _is_closed(self, gripper: float) -> int:
        if self._gripper is None:
            return UNKNOWN
        return CLOSED if gripper > self._gripper_middle else OPEN

    def returning(self) -> bool:
        """True when the current state is one an action was already taken from in this episode."""
        if not len(self._states):
            return False
        near = np.max(np.abs(self._poses - self._pose), axis=1) <= self.config.tolerance
        return bool(np.any(near & (self._states == self._closed)))

    def record(self, values: np.ndarray) -> None:
        """An action handed to the robot: remember the state it was taken from, then apply it."""
        self._poses = np.vstack([self._poses[-(MAX_STATES - 1):], self._pose])
        self._states = np.append(self._states[-(MAX_STATES - 1):], np.int8(self._closed))
        values = np.asarray(values, np.float64)
        self._pose = self._pose + values[self._translation]
        if self._gripper is not None:
            self._closed = self._is_closed(float(values[self._gripper]))

    def sample(self, logits: np.ndarray) -> np.ndarray:
        """One bin per row of finite (..., n_bins) logits, from softmax(logits / temperature)."""
        logits = np.asarray(logits, np.float64)
        if not np.isfinite(logits).all():
            raise FloatingPointError("loop escape: non-finite action logits")
        # The max is subtracted before dividing: a tiny temperature must not overflow to inf - inf.
        z = (logits - logits.max(axis=-1, keepdims=True)) / self.config.temperature
        cdf = np.cumsum(np.exp(z), axis=-1).reshape(-1, logits.shape[-1])
        # Inverse-CDF draw per row, one uniform each: the same stream for any batch shape. A bin
        # of probability 0 has a zero-width step of the CDF and is never hit.
        u = self._rng.random(cdf.shape[0]) * cdf[:, -1]
        bins = np.array([np.searchsorted(row, x, side="right") for row, x in zip(cdf, u)], np.int64)
        return np.minimum(bins, logits.shape[-1] - 1).reshape(logits.shape[:-1])
