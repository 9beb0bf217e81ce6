"""ExportConfig: everything `export.run` needs, validated where it is made, saved with the artifact."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rt2edge.atomic import atomic_write_json
from rt2edge.checks import check_finite, check_int, check_known_keys
from rt2edge.errors import ConfigError

PRECISIONS = ("fp32", "fp16")
MIN_OPSET = 18  # the torch.onnx dynamo exporter's floor
MAX_OPSET = 23
CONFIG_FILE = "export_config.json"

# Validation tolerances per precision. A max abs diff on image embeddings / action logits may be
# atol + rtol * (the largest |torch value| of that output). min_token_agreement gates the
# tie-aware agreement with torch's constrained decode (export/validate.py): tokens compared while
# both decode the same context, a flip between two bins whose torch logits are within the graph's
# own arithmetic error (a near-tie) counting as agreement. Randomly initialized models have all
# 256 action logits within ~1e-2 of each other, so such ties are common there; the strict
# agreement is reported next to it. fp16 rounds weights and activations to 11-bit mantissas:
# looser diffs, and a decisive flip now and then is tolerated.
DEFAULT_TOLERANCES = {
    "fp32": {"atol": 1e-3, "rtol": 0.0, "min_token_agreement": 1.0},
    "fp16": {"atol": 5e-2, "rtol": 1e-2, "min_token_agreement": 0.95},
}


@dataclass
class ExportConfig:
    """Options of `rt2edge export CHECKPOINT --out ARTIFACT`.

    Args:
        checkpoint: a VLAPolicy checkpoint folder (HF save_pretrained + rt2edge.json).
        out: the artifact folder to write; it appears whole or not at all.
        target: a registered export target (export/targets.py): "onnxruntime" (fused contrib ops
            in the decoder, ONNX Runtime only), "onnx" (plain ONNX) or "tensorrt".
        precision: weights of the graphs; IO stays float32 either way.
        opset: ONNX opset; the tensorrt target needs <= 25 (trt_check.MAX_OPSET).
        validate_frames: random observations to validate on when the caller gives none.
        atol / rtol / min_token_agreement: None means the precision's default (DEFAULT_TOLERANCES).
        seed: of the random validation observations.
        overwrite: replace an existing `out` (atomically) instead of refusing.
        build_engine: also build TensorRT engines (needs tensorrt and a GPU; tensorrt target).
        max_batch / max_prompt_tokens: the TensorRT optimization-profile maxima; None for
            max_prompt_tokens means the longest prompt the checkpoint's PromptFormat allows.
    """

    checkpoint: Path
    out: Path
    target: str = "onnxruntime"
    precision: str = "fp32"
    opset: int = 18
    validate_frames: int = 4
    atol: float | None = None
    rtol: float | None = None
    min_token_agreement: float | None = None
    seed: int = 0
    overwrite: bool = False
    build_engine: bool = False
    max_batch: int = 1
    max_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        from export.targets import TARGETS  # the registry, filled when export.targets is imported

        self.checkpoint = Path(self.checkpoint)
        self.out = Path(self.out)
        if self.out.resolve() == self.checkpoint.resolve():
            raise ConfigError("out", "must differ from the checkpoint folder")
        if self.target not in TARGETS:
            raise ConfigError("target", f"must be one of {sorted(TARGETS)}, got {self.target!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"must be one of {PRECISIONS}, got {self.precision!r}")
        check_int("opset", self.opset, MIN_OPSET, MAX_OPSET)
        max_opset = TARGETS[self.target].max_opset
        if max_opset is not None and self.opset > max_opset:
            raise ConfigError("opset", f"target {self.target!r} reads opset <= {max_opset}, got {self.opset}")
        check_int("validate_frames", self.validate_frames, 1, 10_000)
        # finite: an infinite tolerance would switch the validation gate off
        if self.atol is not None:
            check_finite("atol", self.atol, low=0.0, low_open=True)
        if self.rtol is not None:
            check_finite("rtol", self.rtol, low=0.0)
        if self.min_token_agreement is not None:
            check_finite("min_token_agreement", self.min_token_agreement, low=0.0, high=1.0)
        check_int("seed", self.seed, 0, 2**32 - 1)
        check_int("max_batch", self.max_batch, 1, 4096)
        if self.max_prompt_tokens is not None:
            check_int("max_prompt_tokens", self.max_prompt_tokens, 2, 1 << 20)
        if self.build_engine and not TARGETS[self.target].builds_engines:
            engine_targets = sorted(n for n, t in TARGETS.items() if t.builds_engines)
            raise ConfigError("build_engine", f"needs a target whose graphs are checked for TensorRT "
                                              f"({engine_targets}), got target {self.target!r}")

    @property
    def tolerance(self) -> dict[str, float]:
        """The tolerances in force: the explicit ones, else the precision's defaults."""
        defaults = DEFAULT_TOLERANCES[self.precision]
        given = {"atol": self.atol, "rtol": self.rtol, "min_token_agreement": self.min_token_agreement}
        return {k: float(defaults[k] if v is None else v) for k, v in given.items()}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checkpoint"], data["out"] = str(self.checkpoint), str(self.out)
        data["tolerance_in_force"] = self.tolerance
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportConfig:
        check_known_keys(cls, data, also=("tolerance_in_force",))  # written by to_dict, not a setting
        return cls(**{k: v for k, v in data.items() if k != "tolerance_in_force"})

    def write(self, folder: Path) -> Path:
        path = Path(folder) / CONFIG_FILE
        atomic_write_json(path, self.to_dict())
        return path
