"""Control-loop timing harness: statistics on synthetic act functions (behaviour, not absolute times)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from bench.timing import ControlLoopTimer, LatencyStats, time_policy
from rt2edge.errors import ConfigError

IMAGE = np.zeros((8, 8, 3), np.uint8)


class FakeClock:
    """Simulated time: act functions advance it by their 'latency'."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_statistics_on_a_simulated_clock():
    clock = FakeClock()
    latencies = [0.05, 0.15, 0.25, 0.35] * 5  # 20 timed steps
    calls = []

    def act(image, instruction):
        step = len(calls)
        calls.append(instruction)
        clock.now += 1.0 if step < 3 else latencies[step - 3]  # 3 very slow warm-up calls
        return {"timing": {"vision": 0.01, "decode": 0.02 * step}}

    report = time_policy(act, [(IMAGE, "a"), (IMAGE, "b")], warmup=3, steps=20,
                         target_rates=(2, 5, 10, 3), clock=clock)
    assert len(calls) == 23 and calls[:4] == ["a", "b", "a", "b"]  # observations are cycled
    lat = report.latency
    assert lat.count == 20 and lat.max_s == pytest.approx(0.35)  # the 1 s warm-ups are excluded
    assert lat.p50_s == pytest.approx(0.2) and lat.mean_s == pytest.approx(0.2)
    assert report.hz_median == pytest.approx(5.0)
    assert report.hz_sustained == pytest.approx(20 / sum(latencies))
    # period 0.5 s: none late; 0.2 s: 0.25 and 0.35 late; 0.1 s: all but 0.05; 1/3 s: only 0.35
    assert report.deadline_miss == pytest.approx({"2": 0.0, "5": 0.5, "10": 0.75, "3": 0.25})
    assert report.jitter_p99_p50_s == pytest.approx(lat.p99_s - 0.2)
    assert report.stages["vision"].count == 20
    assert report.stages["decode"].min_s == pytest.approx(0.02 * 3)  # first timed call is call #3
    json.dumps(report.to_dict())


def test_percentiles_ordered_and_miss_rates_monotone_with_real_sleeps():
    pattern = [0.001, 0.001, 0.001, 0.03]

    def act(image, instruction):
        time.sleep(pattern[act.n % 4])
        act.n += 1

    act.n = 0
    rates = (1, 10, 40, 200, 1000)
    report = time_policy(act, [(IMAGE, "x")], warmup=2, steps=16, target_rates=rates)
    lat = report.latency
    assert lat.min_s <= lat.p50_s <= lat.p90_s <= lat.p99_s <= lat.max_s
    misses = [report.deadline_miss[f"{r:g}"] for r in rates]
    assert misses == sorted(misses)  # a faster control rate never misses fewer deadlines
    # time.sleep never returns early: every 30 ms step misses a 25 ms (40 Hz) period
    assert report.deadline_miss["40"] >= 0.25 and lat.max_s >= 0.03
    assert report.hz_sustained <= report.steps / sum([0.001] * 12 + [0.03] * 4) + 1e-9
    assert report.peak_rss_mb > 0


def test_timer_reads_runtime_actions():
    class FakeAction:
        def __init__(self, safe):
            self.timing = {"prefill": 0.002, "decode": 0.003, "total": 0.006}
            self.decode_steps = (0.001, 0.001, 0.001)
            self.safe_fallback = safe

    timer = ControlLoopTimer(target_rates=(10,))
    for safe in (False, True, False):
        timer.measure(lambda: FakeAction(safe))
    report = timer.report("runtime", info={"provider": "CPUExecutionProvider"})
    assert report.safe_fallbacks == 1 and report.steps == 3
    assert report.decode_step.count == 9 and report.stages["total"].p50_s == pytest.approx(0.006)
    assert report.to_dict()["info"] == {"provider": "CPUExecutionProvider"}


def test_recorded_latencies_without_a_clock():
    timer = ControlLoopTimer(target_rates=(4,))
    for lat in (0.1, 0.2, 0.3):
        timer.record(lat)
    report = timer.report()
    assert report.wall_s == pytest.approx(0.6) and report.deadline_miss == {"4": pytest.approx(1 / 3)}


@pytest.mark.parametrize("kwargs,field", [
    ({"warmup": -1}, "warmup"), ({"steps": 0}, "steps"), ({"target_rates": (0,)}, "target_rates"),
    ({"target_rates": ()}, "target_rates"), ({"observations": []}, "observations"),
    ({"observations": [IMAGE]}, "observations"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    args = {"act_fn": lambda image, instruction: None, "observations": [(IMAGE, "x")], **kwargs}
    with pytest.raises(ConfigError, match=field):
        time_policy(**args)


def test_stats_need_samples():
    with pytest.raises(ConfigError):
        LatencyStats.from_samples([])
    with pytest.raises(ConfigError, match="nothing was timed"):
        ControlLoopTimer().report()


def test_blocks_count_only_their_own_wall_time():
    """Interleaved benchmarks: the gap between a policy's blocks is another policy's time."""
    clock = FakeClock()
    timer = ControlLoopTimer(target_rates=(10,), clock=clock)

    def act(image, instruction):
        clock.now += 0.05

    for block in range(3):
        for _ in range(4):
            timer.measure(act, IMAGE, "x")
        timer.end_block()
        clock.now += 10.0  # other variants run here
    report = timer.report("interleaved")
    assert report.steps == 12 and report.wall_s == pytest.approx(12 * 0.05)
    assert report.hz_sustained == pytest.approx(20.0)


def test_cpu_time_is_recorded_next_to_wall_time():
    """A loop preempted half of the time: wall 2x the CPU time, cpu_share 0.5."""
    wall, cpu = FakeClock(), FakeClock()
    timer = ControlLoopTimer(target_rates=(10,), clock=wall, cpu_clock=cpu)

    def act(image, instruction):
        cpu.now += 0.01
        wall.now += 0.02

    for _ in range(5):
        timer.measure(act, IMAGE, "x")
    report = timer.report("preempted")
    assert report.cpu.p50_s == pytest.approx(0.01) and report.latency.p50_s == pytest.approx(0.02)
    assert report.cpu_share == pytest.approx(0.5) and report.hz_cpu_median == pytest.approx(100.0)
