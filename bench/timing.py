"""Control-loop timing: latency percentiles, Hz, jitter and deadline misses of a policy's act().

    report = time_policy(policy.act, [(image, "pick up the red block")], warmup=5, steps=100)
    report.hz_median, report.latency.p99_s, report.deadline_miss["10"], report.to_dict()

What a robot integrator needs from one number is "will it keep up at N Hz", so next to the
median this reports the tail (p90/p99/max), the spread (jitter), the fraction of steps that would
miss each target control period, and the sustained rate over the whole run (harness overhead and
pauses included). Warm-up calls are run and discarded (first-call allocation, lazy init, caches).
If act() returns something with a `timing` mapping (rt2edge.runtime.Action, the bench backends),
each stage gets its own statistics; `decode_steps` gives per-decoder-run statistics.

Timings are wall-clock (time.perf_counter) of the whole call; they are comparable as ratios
within one run on one machine, not across machines. Each call's process CPU time is recorded too:
`cpu_share` (CPU / wall) below ~0.9 for a single-threaded backend means other processes took the
core during the loop, and `cpu` is then the better estimate of the latency on a quiet core.
"""

from __future__ import annotations

import itertools
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from rt2edge.errors import ConfigError

DEFAULT_RATES = (3.0, 5.0, 10.0)


@dataclass(frozen=True)
class LatencyStats:
    count: int
    mean_s: float
    std_s: float
    min_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> LatencyStats:
        arr = np.asarray(samples, dtype=np.float64)
        if arr.size == 0:
            raise ConfigError("samples", "no latency samples to summarize")
        p50, p90, p99 = np.percentile(arr, [50, 90, 99])
        return cls(count=int(arr.size), mean_s=float(arr.mean()), std_s=float(arr.std()),
                   min_s=float(arr.min()), p50_s=float(p50), p90_s=float(p90), p99_s=float(p99),
                   max_s=float(arr.max()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TimingReport:
    backend: str
    warmup: int
    steps: int
    latency: LatencyStats
    wall_s: float  # the timed loop, first call start to last call end
    target_rates: tuple[float, ...]
    deadline_miss: dict[str, float]  # rate (Hz, as str) -> fraction of steps slower than 1 / rate
    stages: dict[str, LatencyStats] = field(default_factory=dict)
    decode_step: LatencyStats | None = None
    decode_steps_by_index: list[LatencyStats] = field(default_factory=list)  # decode run 1, 2, ...
    samples_s: list[float] = field(default_factory=list)  # every timed step, in order (distributions)
    cpu: LatencyStats | None = None  # process CPU seconds per step (all threads of the process)
    safe_fallbacks: int = 0  # steps that returned the runtime's safe action instead of inferring
    peak_rss_mb: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def hz_median(self) -> float:
        return 1.0 / self.latency.p50_s if self.latency.p50_s > 0 else float("inf")

    @property
    def hz_sustained(self) -> float:
        """Steps per second of wall time: what a loop calling act() back to back achieves."""
        return self.steps / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def cpu_share(self) -> float | None:
        """Process CPU time / wall time over the timed steps (1 thread: 1.0 = never preempted)."""
        if self.cpu is None or not self.samples_s:
            return None
        return self.cpu.mean_s * self.cpu.count / sum(self.samples_s)

    @property
    def hz_cpu_median(self) -> float | None:
        """1 / median CPU seconds per step: the rate a quiet core would give a 1-thread backend."""
        return None if self.cpu is None or self.cpu.p50_s <= 0 else 1.0 / self.cpu.p50_s

    @property
    def jitter_std_s(self) -> float:
        return self.latency.std_s

    @property
    def jitter_p99_p50_s(self) -> float:
        return self.latency.p99_s - self.latency.p50_s

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "warmup": self.warmup, "steps": self.steps,
                "latency": self.latency.to_dict(), "hz_median": self.hz_median,
                "hz_sustained": self.hz_sustained, "wall_s": self.wall_s,
                "jitter_std_s": self.jitter_std_s, "jitter_p99_p50_s": self.jitter_p99_p50_s,
                "target_rates": list(self.target_rates), "deadline_miss": dict(self.deadline_miss),
                "stages": {k: v.to_dict() for k, v in self.stages.items()},
                "decode_step": None if self.decode_step is None else self.decode_step.to_dict(),
                "decode_steps_by_index": [s.to_dict() for s in self.decode_steps_by_index],
                "samples_s": list(self.samples_s),
                "cpu": None if self.cpu is None else self.cpu.to_dict(), "cpu_share": self.cpu_share,
                "hz_cpu_median": self.hz_cpu_median,
                "safe_fallbacks": self.safe_fallbacks, "peak_rss_mb": self.peak_rss_mb,
                "info": dict(self.info)}


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def peak_rss_mb() -> float:
    """The process's resident-set high-water mark (includes anything that ran before timing)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _timing_of(result: Any) -> Mapping[str, float] | None:
    timing = getattr(result, "timing", None)
    if timing is None and isinstance(result, Mapping):
        timing = result.get("timing")
    return timing if isinstance(timing, Mapping) else None


class ControlLoopTimer:
    """Collects per-step latencies (and the stage timings a result carries) and summarizes them.

    Use `time_policy` for the usual loop; use the timer directly when the loop is yours:

        timer = ControlLoopTimer(target_rates=(5, 10))
        for obs in stream:
            action = timer.measure(policy.act, obs.image, obs.instruction)
        report = timer.report("my-robot")
    """

    def __init__(self, target_rates: Iterable[float] = DEFAULT_RATES, clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] | None = time.process_time):
        rates = tuple(float(r) for r in target_rates)
        if not rates or any(not r > 0 for r in rates):
            raise ConfigError("target_rates", f"must be positive control rates in Hz, got {rates}")
        self.target_rates = rates
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.cpu_samples: list[float] = []
        self.latencies: list[float] = []
        self.stage_samples: dict[str, list[float]] = {}
        self.decode_samples: list[float] = []
        self.decode_by_index: list[list[float]] = []
        self.safe_fallbacks = 0
        self._first_start: float | None = None
        self._last_end: float | None = None
        self._closed_wall = 0.0  # wall time of blocks ended by end_block()

    def record(self, latency_s: float, result: Any = None) -> None:
        """Add one step's latency; stage timings and the safe-action flag are read off `result`."""
        if not latency_s >= 0:
            raise ConfigError("latency_s", f"must be >= 0, got {latency_s}")
        self.latencies.append(float(latency_s))
        timing = _timing_of(result)
        if timing:
            for stage, seconds in timing.items():
                self.stage_samples.setdefault(str(stage), []).append(float(seconds))
        steps = [float(s) for s in getattr(result, "decode_steps", ()) or ()]
        self.decode_samples.extend(steps)
        for index, seconds in enumerate(steps):
            if index == len(self.decode_by_index):
                self.decode_by_index.append([])
            self.decode_by_index[index].append(seconds)
        if getattr(result, "safe_fallback", False):
            self.safe_fallbacks += 1

    def measure(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call fn, time it, record it; returns fn's result."""
        cpu_start = self.cpu_clock() if self.cpu_clock is not None else 0.0
        start = self.clock()
        result = fn(*args, **kwargs)
        end = self.clock()
        if self.cpu_clock is not None:
            self.cpu_samples.append(max(0.0, self.cpu_clock() - cpu_start))
        self._first_start = start if self._first_start is None else self._first_start
        self._last_end = end
        self.record(end - start, result)
        return result

    def end_block(self) -> None:
        """Close a block of back-to-back steps: the time until the next `measure` (another policy
        runs in an interleaved benchmark) is not this policy's wall time."""
        if self._first_start is not None and self._last_end is not None:
            self._closed_wall += self._last_end - self._first_start
        self._first_start = self._last_end = None

    def miss_rate(self, rate: float) -> float:
        """Fraction of steps whose latency exceeds the control period 1 / rate."""
        if not self.latencies:
            return 0.0
        period = 1.0 / rate
        return sum(lat > period for lat in self.latencies) / len(self.latencies)

    def report(self, backend: str = "custom", warmup: int = 0, info: Mapping[str, Any] | None = None) -> TimingReport:
        if not self.latencies:
            raise ConfigError("steps", "nothing was timed")
        wall = self._closed_wall
        if self._first_start is not None and self._last_end is not None:
            wall += self._last_end - self._first_start
        if wall == 0.0:  # latencies were recorded by hand: no gaps known
            wall = sum(self.latencies)
        return TimingReport(
            backend=backend, warmup=warmup, steps=len(self.latencies),
            latency=LatencyStats.from_samples(self.latencies), wall_s=wall,
            target_rates=self.target_rates,
            deadline_miss={_rate_key(r): self.miss_rate(r) for r in self.target_rates},
            stages={k: LatencyStats.from_samples(v) for k, v in self.stage_samples.items()},
            decode_step=LatencyStats.from_samples(self.decode_samples) if self.decode_samples else None,
            decode_steps_by_index=[LatencyStats.from_samples(s) for s in self.decode_by_index],
            samples_s=list(self.latencies),
            cpu=LatencyStats.from_samples(self.cpu_samples) if self.cpu_samples else None,
            safe_fallbacks=self.safe_fallbacks, peak_rss_mb=peak_rss_mb(), info=dict(info or {}))


def time_policy(act_fn: Callable[[Any, str], Any], observations: Iterable[tuple[Any, str]],
                warmup: int = 3, steps: int = 50, target_rates: Iterable[float] = DEFAULT_RATES,
                backend: str = "custom", info: Mapping[str, Any] | None = None,
                clock: Callable[[], float] = time.perf_counter) -> TimingReport:
    """Call act_fn(image, instruction) warmup + steps times, cycling through `observations`.

    Only the `steps` timed calls enter the statistics; the warm-up calls use the same
    observations and are discarded. `clock` is injectable (simulated time in tests).
    """
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError("warmup", f"must be an int >= 0, got {warmup!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError("steps", f"must be an int >= 1, got {steps!r}")
    pool = list(itertools.islice(iter(observations), warmup + steps))  # a generator is read once
    if not pool:
        raise ConfigError("observations", "no observations to act on")
    for obs in pool:
        if not (isinstance(obs, Sequence) and len(obs) == 2):
            raise ConfigError("observations", f"each observation must be (image, instruction), got "
                                              f"{type(obs).__name__}")
    feed = itertools.cycle(pool)
    for _ in range(warmup):
        image, instruction = next(feed)
        act_fn(image, instruction)
    # A simulated wall clock (tests) makes real CPU seconds meaningless next to it.
    timer = ControlLoopTimer(target_rates, clock, time.process_time if clock is time.perf_counter else None)
    for _ in range(steps):
        image, instruction = next(feed)
        timer.measure(act_fn, image, instruction)
    return timer.report(backend, warmup=warmup, info=info)
