"""Running latency estimate per stage, and the deadline check built on it.

A control loop cannot wait for a late action: `Policy.act` asks, before it starts and between
stages (every decode step included), whether elapsed + predicted remaining time would pass the
deadline, and returns the safe action instead. The prediction is the median of the last `window`
samples of each stage, so one scheduling hiccup does not move it.

A pessimistic estimate would otherwise lock a policy into safe actions forever (skipped runs
produce no new samples), so every `probe_every`-th consecutive skip runs anyway as a *probe*:
it only stops at a check when the deadline has really passed (the overrun is at most one stage),
and the stages it completes refresh the estimate.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque


MIN_SAMPLES = 3  # samples of a stage before its median is trusted


class DeadlineExceeded(Exception):
    """Raised inside `act` to abandon an inference that would miss its deadline."""


class LatencyEstimator:
    def __init__(self, window: int = 16):
        self.window = window
        self._samples: dict[str, deque[float]] = {}

    def record(self, stage: str, seconds: float) -> None:
        self._samples.setdefault(stage, deque(maxlen=self.window)).append(seconds)

    def predict(self, stage: str) -> float:
        """Median seconds of `stage`; 0 when it was never measured (no evidence to skip on), and
        the smallest sample while there are fewer than MIN_SAMPLES: one hiccup right after load
        must not predict a miss, or the policy skips (and so never re-measures) for many frames."""
        samples = self._samples.get(stage)
        if not samples:
            return 0.0
        if len(samples) < MIN_SAMPLES:
            return min(samples)
        # statistics.median: ~1 us on 16 floats, np.median ~15 us (it runs up to 12x per act).
        return statistics.median(samples)

    def has(self, stage: str) -> bool:
        return bool(self._samples.get(stage))

    def predict_sum(self, stages: list[str]) -> float:
        return sum(self.predict(s) * n for s, n in Counter(stages).items())

    def reset(self) -> None:
        self._samples.clear()


class Deadline:
    """The deadline of one `act` call. `check(remaining)` raises DeadlineExceeded."""

    def __init__(self, deadline_s: float | None, estimator: LatencyEstimator, start: float,
                 probe: bool = False):
        self.deadline_s = deadline_s
        self.estimator = estimator
        self.start = start
        self.probe = probe

    def check(self, where: str, remaining: list[str]) -> None:
        if self.deadline_s is None:
            return
        elapsed = time.perf_counter() - self.start
        predicted = 0.0 if self.probe else self.estimator.predict_sum(remaining)
        if elapsed + predicted > self.deadline_s:
            raise DeadlineExceeded(
                f"deadline {self.deadline_s * 1e3:.2f} ms: {where}, elapsed {elapsed * 1e3:.2f} ms"
                + ("" if self.probe else f" + predicted remaining {predicted * 1e3:.2f} ms"))


class SkipPolicy:
    """Decides, before an `act` starts, whether to skip it (safe action) or run (maybe as a probe)."""

    def __init__(self, probe_every: int = 25):
        self.probe_every = probe_every
        self.consecutive_skips = 0

    def decide(self, deadline_s: float | None, predicted_s: float) -> tuple[bool, bool]:
        """Returns (skip, probe)."""
        if deadline_s is None or predicted_s <= deadline_s:
            self.consecutive_skips = 0
            return False, False
        self.consecutive_skips += 1
        if self.probe_every and self.consecutive_skips % self.probe_every == 0:
            return False, True
        return True, False
