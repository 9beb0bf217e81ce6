"""QuantizeConfig: the one typed config of the quantize stage, validated where it is made.

Every bad value raises ConfigError naming the field, before any model is loaded. The config is
written next to the output as `quantize_config.json` (`to_dict`), and `from_dict` reads it back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from rt2edge.errors import ConfigError
from quantize.registry import get_method

# Module groups of a VLA policy (rt2edge.models.families.VLMFamily.parameter_groups). Token
# embeddings are never quantized by these methods (bitsandbytes replaces nn.Linear only).
MODULE_GROUPS = ("vision", "projector", "language", "head")
# Default: the language model is quantized; the vision tower, the projector and the LM head (which
# holds the action-token rows every action is read from) stay in the source precision.
DEFAULT_KEEP = ("vision", "projector", "head")
SIM_CALIBRATION = "sim"
CONFIG_FILE = "quantize_config.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class QuantizeConfig:
    """Args:
        source: the checkpoint folder to quantize (an rt2edge checkpoint, not already quantized).
        out: the folder to write; refused if it exists unless `overwrite`.
        method: a registered method name (see `quantize.known_methods()`).
        bits: the method's bit width; None takes it from the method (given, it must agree).
        block_size: the block (group) size along the input dim; None: the method's default.
        keep_sensitive: module groups (of MODULE_GROUPS) left in the source precision.
        calibration: "sim" (frames of the built-in simulator) or an episode dataset folder; its
            frames feed the fidelity comparison (and calibration-based methods).
        calibration_frames: how many frames to use.
        int8_threshold: LLM.int8 outlier threshold (activations above it run in 16-bit); 0 = off.
        double_quant: bitsandbytes 4-bit: quantize the block scales too (~0.4 bit/weight less).
    """

    source: Path
    out: Path
    method: str = "bnb-int8"
    bits: int | None = None
    block_size: int | None = None
    keep_sensitive: tuple[str, ...] = DEFAULT_KEEP
    calibration: str = SIM_CALIBRATION
    calibration_frames: int = 32
    batch_size: int = 8
    int8_threshold: float = 6.0
    double_quant: bool = False
    device: str = "cpu"
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.source = self._path("source", self.source)
        self.out = self._path("out", self.out)
        if self.source.resolve() == self.out.resolve():
            raise ConfigError("out", "must differ from source (the source is never modified)")
        if not isinstance(self.method, str):
            raise ConfigError("method", f"must be a method name, got {type(self.method).__name__}")
        method = get_method(self.method)
        if self.bits is None:
            self.bits = method.bits
        elif not _is_int(self.bits) or self.bits != method.bits:
            raise ConfigError("bits", f"method {self.method!r} quantizes to {method.bits} bits, got {self.bits!r}")
        if self.block_size is None:
            self.block_size = method.block_sizes[0]
        if self.block_size not in method.block_sizes or isinstance(self.block_size, bool):
            allowed = ", ".join("per-channel" if b is None else str(b) for b in method.block_sizes)
            raise ConfigError("block_size", f"method {self.method!r} supports block sizes {allowed}; "
                                            f"got {self.block_size!r}")
        self.keep_sensitive = self._groups(self.keep_sensitive)
        if not isinstance(self.calibration, (str, Path)) or not str(self.calibration):
            raise ConfigError("calibration",
                              f"must be {SIM_CALIBRATION!r} or a dataset folder, got {self.calibration!r}")
        self.calibration = str(self.calibration)
        for name in ("calibration_frames", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(name, f"must be an int >= 1, got {value!r}")
        if (not isinstance(self.int8_threshold, (int, float)) or isinstance(self.int8_threshold, bool)
                or not math.isfinite(self.int8_threshold) or self.int8_threshold < 0):
            raise ConfigError("int8_threshold", f"must be a finite number >= 0, got {self.int8_threshold!r}")
        self.int8_threshold = float(self.int8_threshold)
        for name in ("double_quant", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError("device", f"must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if not _is_int(self.seed):
            raise ConfigError("seed", f"must be an int, got {self.seed!r}")

    @staticmethod
    def _path(name: str, value: Any) -> Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(name, f"must be a folder path, got {value!r}")
        return Path(value)

    @staticmethod
    def _groups(value: Any) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
            raise ConfigError("keep_sensitive", f"must be a list of groups from {MODULE_GROUPS}, got {value!r}")
        unknown = [g for g in value if g not in MODULE_GROUPS]
        if unknown:
            raise ConfigError("keep_sensitive", f"unknown module groups {unknown}; known: {MODULE_GROUPS}")
        if "language" in value:
            raise ConfigError("keep_sensitive", "keeping 'language' leaves nothing to quantize")
        return tuple(g for g in MODULE_GROUPS if g in value)  # canonical order, no duplicates

    # ------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["source"], data["out"] = str(self.source), str(self.out)
        data["keep_sensitive"] = list(self.keep_sensitive)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantizeConfig:
        if not isinstance(data, Mapping):
            raise ConfigError("config", f"expected a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown option; known: {sorted(known)}")
        missing = [k for k in ("source", "out") if k not in data]
        if missing:
            raise ConfigError(missing[0], "is required")
        return cls(**dict(data))
