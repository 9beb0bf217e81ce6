"""Numeric formats of weights: how many bytes a weight matrix occupies and which math unit runs it.

A decode step of a VLA streams every weight once, so its time on an edge GPU is set by weight
bytes / memory bandwidth; getting the bytes right (quantization scales included) is most of the
roofline. A format has two independent halves:

  storage   bits per weight + one scale (and optionally a zero point) per `group_size` weights of
            an output row. group_size None = one scale per output channel (per-channel).
  compute   the math unit the device uses for the matmul: weight-only formats (W8A16, W4A16)
            dequantize in the kernel and multiply in fp16; W8A8 uses the int8 tensor-core rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from rt2edge.errors import ConfigError

COMPUTE_CLASSES = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Precision:
    name: str
    weight_bits: int
    group_size: int | None = None  # weights per scale along the input dim; None: per output channel
    scale_bytes: float = 0.0  # bytes of one scale (0: unquantized, no scales)
    zero_point_bits: int = 0  # asymmetric formats store one zero point per group
    compute: str = "fp16"
    activation_bytes: int = 2  # activations, KV cache and biases are kept in this many bytes
    note: str = ""

    def __post_init__(self) -> None:
        if self.weight_bits not in (2, 3, 4, 8, 16, 32):
            raise ConfigError(f"precision.{self.name}.weight_bits", f"unsupported {self.weight_bits}")
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError(f"precision.{self.name}.group_size", "must be >= 1 or None (per channel)")
        if self.compute not in COMPUTE_CLASSES:
            raise ConfigError(f"precision.{self.name}.compute", f"must be one of {COMPUTE_CLASSES}")
        if self.activation_bytes not in (1, 2, 4):
            raise ConfigError(f"precision.{self.name}.activation_bytes", "must be 1, 2 or 4")

    @property
    def quantized(self) -> bool:
        return self.scale_bytes > 0

    def matrix_bytes(self, out_features: int, in_features: int) -> float:
        """Bytes of one [out, in] weight matrix including its scales and zero points."""
        values = out_features * in_features * self.weight_bits / 8
        if not self.quantized:
            return values
        groups_per_row = 1 if self.group_size is None else -(-in_features // self.group_size)
        per_group = self.scale_bytes + self.zero_point_bits / 8
        return values + out_features * groups_per_row * per_group

    def bits_per_weight(self, in_features: int = 4096) -> float:
        """Effective storage bits per weight of a row of `in_features` weights (scales included)."""
        return self.matrix_bytes(1, in_features) * 8 / in_features

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Formats that rt2edge's stages produce, plus the MLC formats of the published OpenVLA figures.
PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", 32, compute="fp32", activation_bytes=4),
    Precision("fp16", 16, compute="fp16"),
    Precision("bf16", 16, compute="fp16", note="same rate as fp16 on Ampere/Blackwell tensor cores"),
    # W8A8, per-channel fp16 scales: ONNX Runtime int8 QDQ / TensorRT int8.
    Precision("int8", 8, None, scale_bytes=2, compute="int8"),
    # Weight-only int8, per-channel: bitsandbytes-style or MLC q8f16_ft.
    Precision("w8a16", 8, None, scale_bytes=2, compute="fp16"),
    # Weight-only int4, fp16 scale + 4-bit zero point per 128 weights: ONNX Runtime MatMulNBits
    # (its quantizer's default block_size is 128, asymmetric).
    Precision("int4", 4, 128, scale_bytes=2, zero_point_bits=4, compute="fp16"),
    Precision("int4-g32", 4, 32, scale_bytes=2, compute="fp16", note="MLC q4f16_1 layout"),
    # MLC-LLM FasterTransformer formats (mlc_llm/quantization/quantization.py: FTQuantize with
    # group_size=None -> one fp16 scale per output channel; ft_quantization.py).
    Precision("q8f16_ft", 8, None, scale_bytes=2, compute="fp16", note="MLC-LLM FasterTransformer int8"),
    Precision("q4f16_ft", 4, None, scale_bytes=2, compute="fp16", note="MLC-LLM FasterTransformer int4"),
)}


def get_precision(precision: str | Precision) -> Precision:
    if isinstance(precision, Precision):
        return precision
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ConfigError("precision", f"unknown precision {precision!r}; known: {sorted(PRECISIONS)}") from None


def precision_from_dict(data: Mapping[str, Any]) -> Precision:
    return Precision(**dict(data))
