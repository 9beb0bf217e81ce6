"""QuantizeConfig: the one typed config of the quantize stage, validated where it is made.

Every bad value raises ConfigError naming the field, before any model is loaded. The config is
written next to the output as `quantize_config.json` (`to_dict`), and `from_dict` reads it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from rt2edge.checks import check_finite, check_int, check_known_keys, is_int
from rt2edge.errors import ConfigError
from quantize.registry import QuantMethod, get_method

# Module groups of a VLA policy (rt2edge.models.families.VLMFamily.parameter_groups). Token
# embeddings are never quantized by these methods (bitsandbytes replaces nn.Linear only; the ONNX
# methods quantize MatMul weights only, and the embed graph is a Gather).
MODULE_GROUPS = ("vision", "projector", "language", "head")
# Default: the language model is quantized; the vision tower, the projector and the LM head (which
# holds the action-token rows every action is read from) stay in the source precision.
DEFAULT_KEEP = ("vision", "projector", "head")
SIM_CALIBRATION = "sim"
CONFIG_FILE = "quantize_config.json"
# ONNX Runtime calibrators for the static int8 method (onnxruntime.quantization.CalibrationMethod).
CALIBRATE_METHODS = ("minmax", "percentile", "entropy")
# Held-out frames of the simulator start this far from the calibration seed, so the two sets
# never share a scene (calibration uses seeds seed .. seed + calibration_frames - 1).
HOLDOUT_SEED_OFFSET = 1_000_000


def check_keep_groups(value: Any, field: str = "keep_groups") -> tuple[str, ...]:
    """The module groups to leave unquantized, in canonical order; ConfigError(`field`) for a
    non-list, an unknown group, or 'language' (nothing would be left to quantize)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ConfigError(field, f"must be a list of groups from {MODULE_GROUPS}, got {value!r}")
    unknown = [g for g in value if g not in MODULE_GROUPS]
    if unknown:
        raise ConfigError(field, f"unknown module groups {unknown}; known: {MODULE_GROUPS}")
    if "language" in value:
        raise ConfigError(field, "keeping 'language' leaves nothing to quantize")
    return tuple(g for g in MODULE_GROUPS if g in value)  # canonical order, no duplicates


@dataclass
class QuantizeConfig:
    """Args:
        source: a checkpoint folder (bitsandbytes methods) or a deploy artifact folder (ONNX
            methods); never an already-quantized one.
        out: the folder to write; refused if it exists unless `overwrite`.
        method: a registered method name (see `quantize.known_methods()`); it decides which kind
            of source it reads.
        bits: the method's bit width; None takes it from the method (given, it must agree).
        block_size: the block (group) size along the input dim; None: the method's default.
        target: the runtime the output is for ("onnx": ONNX Runtime, "tensorrt": TensorRT's
            strongly typed networks); None: the method's default. Checkpoint methods have none.
        algorithm: weight rounding of the int4 methods ("rtn", "hqq", "gptq"); None: the default.
        keep_groups: module groups (of MODULE_GROUPS) left in the source precision.
        keep_sensitive: ONNX methods: leave the K layers the sensitivity pass finds most
            sensitive in the source precision too (0: none).
        sensitivity: run the per-layer sensitivity pass (always on when keep_sensitive > 0).
        sensitivity_frames: calibration frames the sensitivity pass compares on.
        calibration: "sim" (frames of the built-in simulator) or an episode dataset folder.
        calibration_frames: how many frames calibrate (static int8, GPTQ) and rank layers.
        calibrate_method: static int8 activation ranges: minmax, percentile or entropy.
        percentile: the percentile of |activation| the "percentile" calibrator keeps.
        holdout_frames: frames, disjoint from the calibration frames, that the fidelity report
            compares the quantized output with its source on.
        holdout_seed: seed of the held-out simulator frames; None: seed + HOLDOUT_SEED_OFFSET.
        episodes: closed-loop episodes per simulator split for source and output (0: skip).
        threads: ONNX Runtime intra-op threads per graph (None: ORT's default).
        int8_threshold: LLM.int8 outlier threshold (activations above it run in 16-bit); 0 = off.
        double_quant: bitsandbytes 4-bit: quantize the block scales too (~0.4 bit/weight less).
    """

    source: Path
    out: Path
    method: str = "bnb-int8"
    bits: int | None = None
    block_size: int | None = None
    target: str | None = None
    algorithm: str | None = None
    keep_groups: tuple[str, ...] = DEFAULT_KEEP
    keep_sensitive: int = 0
    sensitivity: bool = False
    sensitivity_frames: int = 16
    calibration: str = SIM_CALIBRATION
    calibration_frames: int = 32
    calibrate_method: str = "minmax"
    percentile: float = 99.999
    holdout_frames: int = 64
    holdout_seed: int | None = None
    episodes: int = 0
    threads: int | None = None
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
        self._check_method_options(method)
        self.keep_groups = check_keep_groups(self.keep_groups)
        check_int("keep_sensitive", self.keep_sensitive, 0)
        if self.keep_sensitive and not method.reads_artifact:
            raise ConfigError("keep_sensitive", f"the per-layer sensitivity pass is for the ONNX methods; "
                                                f"{self.method!r} quantizes a checkpoint")
        for name in ("sensitivity", "double_quant", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.calibration, (str, Path)) or not str(self.calibration):
            raise ConfigError("calibration",
                              f"must be {SIM_CALIBRATION!r} or a dataset folder, got {self.calibration!r}")
        self.calibration = str(self.calibration)
        for name in ("calibration_frames", "batch_size", "sensitivity_frames", "holdout_frames"):
            check_int(name, getattr(self, name), 1, HOLDOUT_SEED_OFFSET - 1)
        if self.calibrate_method not in CALIBRATE_METHODS:
            raise ConfigError("calibrate_method", f"must be one of {CALIBRATE_METHODS}, got {self.calibrate_method!r}")
        check_finite("percentile", self.percentile, low=50.0, high=100.0, low_open=True)
        self.percentile = float(self.percentile)
        check_int("episodes", self.episodes, 0)
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        check_finite("int8_threshold", self.int8_threshold, low=0.0)
        self.int8_threshold = float(self.int8_threshold)
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError("device", f"must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        check_int("seed", self.seed, 0, 2**32 - 1)
        if self.holdout_seed is None:
            self.holdout_seed = self.seed + HOLDOUT_SEED_OFFSET
        check_int("holdout_seed", self.holdout_seed, 0)
        if self.seed <= self.holdout_seed < self.seed + self.calibration_frames or (
                self.holdout_seed <= self.seed < self.holdout_seed + self.holdout_frames):
            raise ConfigError("holdout_seed", f"frames {self.holdout_seed}.. overlap the calibration frames "
                                              f"{self.seed}..{self.seed + self.calibration_frames - 1}")

    def _check_method_options(self, method: QuantMethod) -> None:
        if self.bits is None:
            self.bits = method.bits
        elif not is_int(self.bits) or self.bits != method.bits:
            raise ConfigError("bits", f"method {self.method!r} quantizes to {method.bits} bits, got {self.bits!r}")
        if self.block_size is None:
            self.block_size = method.block_sizes[0]
        if self.block_size not in method.block_sizes or isinstance(self.block_size, bool):
            allowed = ", ".join("per-channel" if b is None else str(b) for b in method.block_sizes)
            raise ConfigError("block_size", f"method {self.method!r} supports block sizes {allowed}; "
                                            f"got {self.block_size!r}")
        for name, choices in (("target", method.targets), ("algorithm", method.algorithms)):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, choices[0] if choices else None)
            elif value not in choices:
                what = f"one of {list(choices)}" if choices else "left unset (not applicable)"
                raise ConfigError(name, f"method {self.method!r}: must be {what}, got {value!r}")

    @property
    def runs_sensitivity(self) -> bool:
        return self.sensitivity or self.keep_sensitive > 0

    @staticmethod
    def _path(name: str, value: Any) -> Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(name, f"must be a folder path, got {value!r}")
        return Path(value)

    # ------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["source"], data["out"] = str(self.source), str(self.out)
        data["keep_groups"] = list(self.keep_groups)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantizeConfig:
        check_known_keys(cls, data)
        missing = [k for k in ("source", "out") if k not in data]
        if missing:
            raise ConfigError(missing[0], "is required")
        return cls(**dict(data))
