"""Device profiles: the datasheet numbers a roofline projection needs, each with its source.

    devices = load_devices()                      # the built-in bench/devices.toml
    orin = get_device("jetson-agx-orin-64gb")
    mine = load_devices("my_robot.toml")          # same format, e.g. a measured carrier board

A number without a `source` and a `status` (datasheet / derived / estimate) is refused, so a
projection can always say which of its inputs are printed by NVIDIA and which are guesses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from rt2edge.errors import ConfigError
from rt2edge.optional import require_toml

BUILTIN_DEVICES = Path(__file__).with_name("devices.toml")
STATUSES = ("datasheet", "derived", "estimate", "measured")
FIGURES = ("memory_gb", "memory_bandwidth_gbs", "fp16_tflops", "int8_tops", "fp32_tflops",
           "launch_overhead_us")
TEXT_FIELDS = ("name", "architecture", "power_mode")


@dataclass(frozen=True)
class Figure:
    value: float
    status: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "status": self.status, "source": self.source}


@dataclass(frozen=True)
class DeviceProfile:
    key: str
    name: str
    architecture: str
    power_mode: str
    memory_gb: Figure
    memory_bandwidth_gbs: Figure
    fp16_tflops: Figure
    int8_tops: Figure
    fp32_tflops: Figure
    launch_overhead_us: Figure

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.memory_bandwidth_gbs.value * 1e9

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb.value * 1e9

    @property
    def launch_overhead_s(self) -> float:
        return self.launch_overhead_us.value * 1e-6

    def peak_flops(self, compute: str) -> float:
        """Dense peak (FLOP/s or OP/s) of the math unit a precision's matmuls run on."""
        table = {"fp32": self.fp32_tflops, "fp16": self.fp16_tflops, "int8": self.int8_tops}
        if compute == "mixed":  # a merged stage: the slowest unit is the safe bound
            return min(f.value for f in table.values()) * 1e12
        try:
            return table[compute].value * 1e12
        except KeyError:
            raise ConfigError("compute", f"device {self.key!r} has no peak for {compute!r}") from None

    def uncertain(self) -> list[str]:
        """Figures that are not printed in a datasheet (derived or estimated)."""
        return [f for f in FIGURES if getattr(self, f).status != "datasheet"]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Figure) else value
        return out


def _figure(where: str, raw: Any) -> Figure:
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "must be a table {value = ..., status = ..., source = ...}")
    unknown = sorted(set(raw) - {"value", "status", "source"})
    if unknown:
        raise ConfigError(where, f"unknown keys {unknown}")
    value = raw.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{where}.value", f"must be a positive number, got {value!r}")
    status = raw.get("status")
    if status not in STATUSES:
        raise ConfigError(f"{where}.status", f"must be one of {STATUSES}, got {status!r}")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{where}.source", "every number needs a source (where it was printed, or how "
                                             "it was derived)")
    return Figure(float(value), status, source)


def device_from_dict(key: str, raw: Mapping[str, Any], where: str = "devices") -> DeviceProfile:
    here = f"{where}: [{key}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(here, "must be a table")
    unknown = sorted(set(raw) - set(FIGURES) - set(TEXT_FIELDS))
    if unknown:
        raise ConfigError(here, f"unknown keys {unknown}; known: {sorted(FIGURES + TEXT_FIELDS)}")
    missing = [f for f in FIGURES + ("name",) if f not in raw]
    if missing:
        raise ConfigError(here, f"missing {missing}")
    text = {f: str(raw.get(f, "")) for f in TEXT_FIELDS}
    return DeviceProfile(key=key, **text, **{f: _figure(f"{here}.{f}", raw[f]) for f in FIGURES})


def _read_toml(path: Path) -> dict[str, Any]:
    toml = require_toml("reading device profiles")
    if not path.is_file():
        raise ConfigError("devices", f"{path}: no such device profile file")
    try:
        with path.open("rb") as fh:
            return toml.load(fh)
    except toml.TOMLDecodeError as exc:
        raise ConfigError("devices", f"{path}: not valid TOML: {exc}") from None


def load_devices(path: str | Path | None = None) -> dict[str, DeviceProfile]:
    """Device profiles keyed by their table name; `path` None reads the built-in profiles."""
    file = Path(path) if path is not None else BUILTIN_DEVICES
    data = _read_toml(file)
    if not data:
        raise ConfigError("devices", f"{file}: defines no device")
    return {key: device_from_dict(key, raw, file.name) for key, raw in data.items()}


def get_device(name: str | DeviceProfile, path: str | Path | None = None) -> DeviceProfile:
    if isinstance(name, DeviceProfile):
        return name
    devices = load_devices(path)
    try:
        return devices[name]
    except KeyError:
        raise ConfigError("device", f"unknown device {name!r}; known: {sorted(devices)}") from None
