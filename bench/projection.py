"""Project per-stage latency and control frequency of a policy onto a device. An ESTIMATE.

Per stage (bench/costs.py), on a device (bench/devices.py):

    seconds = max(flops / (peak_flops[compute] * e), bytes / (bandwidth * e)) + kernels * launch

`e` is one efficiency factor: the fraction of the datasheet roofline a well-optimized runtime
reaches. It is the same number that bench/machine.py reports for measured stages ("fraction of
roofline"), and it is FIXED before any comparison: bench/calibration.toml stores the value, the
one published figure it was fitted on and the figures held out (bench/calibration.py). The
projection is labelled an estimate in its output and lists which device inputs are not datasheet
numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from bench.costs import CostBreakdown, StageCost
from bench.devices import DeviceProfile, get_device, load_devices
from rt2edge.errors import ConfigError

LABEL = ("estimate: roofline max(compute, bytes / bandwidth) per stage x a fixed efficiency factor "
         "+ kernel launch overhead; not a measurement")


@dataclass(frozen=True)
class Efficiency:
    """Fraction of the roofline achieved, and where that number comes from."""

    value: float
    source: str
    fitted_on: str | None = None
    held_out: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.value <= 1:
            raise ConfigError("efficiency", f"must be in (0, 1], got {self.value}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "held_out": list(self.held_out)}


IDEAL = Efficiency(1.0, "ideal roofline (no derating)")


@dataclass
class StageProjection:
    stage: str
    seconds: float
    compute_s: float
    memory_s: float
    launch_s: float

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bound": self.bound}


@dataclass
class Projection:
    model: str
    precision: str
    device: str
    device_name: str
    efficiency: Efficiency
    stages: list[StageProjection]
    resident_gb: float
    memory_gb: float
    uncertain_inputs: list[str] = field(default_factory=list)
    label: str = LABEL

    @property
    def total_s(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def hz(self) -> float:
        return 1.0 / self.total_s

    @property
    def fits_memory(self) -> bool:
        # Jetson memory is shared with the OS and the CPU side of the robot stack; a model that
        # needs more than 3/4 of it is flagged (a heuristic, not a datasheet number).
        return self.resident_gb <= 0.75 * self.memory_gb

    def by_runtime_stage(self) -> dict[str, float]:
        """Seconds keyed like `Action.timing` (decode.k merged into decode)."""
        out: dict[str, float] = {}
        for s in self.stages:
            key = "decode" if s.stage.startswith("decode.") else s.stage
            out[key] = out.get(key, 0.0) + s.seconds
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "model": self.model, "precision": self.precision,
                "device": self.device, "device_name": self.device_name,
                "efficiency": self.efficiency.to_dict(), "total_s": self.total_s, "hz": self.hz,
                "stage_seconds": self.by_runtime_stage(), "stages": [s.to_dict() for s in self.stages],
                "resident_gb": self.resident_gb, "memory_gb": self.memory_gb,
                "fits_memory": self.fits_memory, "uncertain_inputs": self.uncertain_inputs}


def stage_bounds(stage: StageCost, device: DeviceProfile) -> tuple[float, float]:
    """(compute seconds, memory seconds) of a stage at the device's full datasheet peaks."""
    return stage.flops / device.peak_flops(stage.compute), stage.bytes / device.bandwidth


def roofline_seconds(costs: CostBreakdown, device: DeviceProfile) -> tuple[float, float]:
    """(sum over stages of the ideal roofline time, total launch overhead): total = S / e + L."""
    ideal = sum(max(stage_bounds(s, device)) for s in costs.stages)
    return ideal, sum(s.kernels for s in costs.stages) * device.launch_overhead_s


def project(costs: CostBreakdown, device: str | DeviceProfile,
            efficiency: Efficiency | None = None) -> Projection:
    """Per-stage latency of `costs` on `device`; efficiency None = the stored calibration."""
    dev = get_device(device)
    if efficiency is None:
        from bench.calibration import load_calibration  # calibration imports this module
        efficiency = load_calibration().efficiency
    e = efficiency.value
    stages = []
    for s in costs.stages:
        compute_s, memory_s = stage_bounds(s, dev)
        launch_s = s.kernels * dev.launch_overhead_s
        stages.append(StageProjection(s.stage, max(compute_s, memory_s) / e + launch_s,
                                      compute_s / e, memory_s / e, launch_s))
    return Projection(model=costs.model, precision=costs.precision, device=dev.key, device_name=dev.name,
                      efficiency=efficiency, stages=stages, resident_gb=costs.resident_bytes / 1e9,
                      memory_gb=dev.memory_gb.value, uncertain_inputs=dev.uncertain())


def project_devices(costs: CostBreakdown, devices: Iterable[str | DeviceProfile] | None = None,
                    efficiency: Efficiency | None = None) -> list[Projection]:
    """`project` on every given device (default: all built-in profiles)."""
    chosen = list(load_devices().values()) if devices is None else list(devices)
    return [project(costs, d, efficiency) for d in chosen]


def roofline_fractions(costs: CostBreakdown, measured_s: Mapping[str, float],
                       device: str | DeviceProfile) -> dict[str, float]:
    """Per runtime stage: ideal roofline seconds / measured seconds (1.0 = at the roofline).

    `device` is usually this machine (`MachineProfile.as_device()`); `measured_s` is keyed like
    `Action.timing` (median seconds per stage). Stages missing on either side are skipped.
    """
    dev = get_device(device)
    ideal: dict[str, float] = {}
    for s in costs.stages:  # per decoder run, then summed: each run has its own bound
        key = "decode" if s.stage.startswith("decode.") else s.stage
        ideal[key] = ideal.get(key, 0.0) + max(stage_bounds(s, dev))
    return {name: ideal[name] / measured_s[name] for name in ideal
            if measured_s.get(name) is not None and measured_s[name] > 0}
