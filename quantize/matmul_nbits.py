"""Pack quantized weights into ONNX Runtime's `com.microsoft.MatMulNBits` layout (numpy only).

MatMulNBits computes Y = A @ dequant(B)^T for A (..., K), with B the (N, K) weight (torch layout)
blocked along K. Its inputs (onnxruntime docs/ContribOperators.md, MatMulNBits):
  B            uint8 [N, k_blocks, blob_size], blob_size = block_size * bits / 8. Within a byte,
               the element with the lower k sits in the lower bits: for 4 bits, byte j of a block
               holds q[2j] in bits 0-3 and q[2j+1] in bits 4-7.
  scales       [N * k_blocks], the type of A (float32 here), row-major over (n, block).
  zero_points  optional. uint8 [N * ceil(k_blocks * bits / 8)]: each row's integral zero points
               packed like B (row by row, each row padded to a whole byte); or the type of A,
               [N * k_blocks], for fractional zero points (HQQ). Absent -> 2**(bits-1).
  attributes   K, N, bits, block_size (a power of 2, >= 16).
The last block of a row is padded with the zero point when block_size does not divide K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rt2edge.errors import ConfigError
from rt2edge.optional import require
from quantize.primitives import QuantizedWeight, num_blocks

MATMUL_NBITS_BITS = (2, 4, 8)


@dataclass(frozen=True)
class PackedNBits:
    """The initializers and attributes of one MatMulNBits node."""

    B: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    K: int
    N: int
    bits: int
    block_size: int

    @property
    def nbytes(self) -> int:
        zp = 0 if self.zero_points is None else self.zero_points.nbytes
        return int(self.B.nbytes + self.scales.nbytes + zp)

    def attributes(self) -> dict[str, int]:
        return {"K": self.K, "N": self.N, "bits": self.bits, "block_size": self.block_size}


def check_block_size(block_size: int) -> None:
    if not isinstance(block_size, int) or block_size < 16 or block_size & (block_size - 1):
        raise ConfigError("block_size", f"MatMulNBits needs a power of 2 >= 16, got {block_size!r}")


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (..., L) -> uint8 (..., ceil(L * bits / 8)), lower index in the lower bits."""
    per_byte = 8 // bits
    length = codes.shape[-1]
    padded = -(-length // per_byte) * per_byte
    c = np.zeros(codes.shape[:-1] + (padded,), dtype=np.uint8)
    c[..., :length] = codes
    c = c.reshape(codes.shape[:-1] + (padded // per_byte, per_byte))
    out = np.zeros(c.shape[:-1], dtype=np.uint8)
    for j in range(per_byte):
        out |= (c[..., j] << (bits * j)).astype(np.uint8)
    return out


def unpack_bits(packed: np.ndarray, bits: int, length: int) -> np.ndarray:
    """The inverse of `pack_bits`: uint8 (..., B) -> unsigned codes (..., length)."""
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * j)) & mask for j in range(per_byte)]
    codes = np.stack(parts, axis=-1).reshape(packed.shape[:-1] + (packed.shape[-1] * per_byte,))
    return codes[..., :length].astype(np.uint8)


def pack_matmul_nbits(qw: QuantizedWeight, bits: int, block_size: int) -> PackedNBits:
    """QuantizedWeight (codes blocked along K with group_size == block_size) -> MatMulNBits inputs."""
    if bits not in MATMUL_NBITS_BITS:
        raise ConfigError("bits", f"MatMulNBits packs {MATMUL_NBITS_BITS} bits, got {bits!r}")
    check_block_size(block_size)
    n, k = qw.q.shape
    kb = num_blocks(k, block_size)
    if qw.scale.shape != (n, kb):
        raise ConfigError("block_size", f"scales {qw.scale.shape} were not made with block_size {block_size} "
                                        f"for a ({n}, {k}) weight")
    offset = 2 ** (bits - 1)
    if qw.symmetric:
        # Signed codes become unsigned around the operator's default zero point 2**(bits-1),
        # so no zero_points input is needed.
        unsigned = qw.q.astype(np.int16) + offset
        zero_codes = np.full((n, kb), offset, dtype=np.int16)
    else:
        unsigned = qw.q.astype(np.int16)
        zero_codes = None
    if unsigned.min() < 0 or unsigned.max() >= 2**bits:
        raise ConfigError("bits", f"codes do not fit in {bits} bits")
    integral_zero = qw.zero is not None and np.array_equal(qw.zero, np.rint(qw.zero)) and (
        qw.zero.min() >= 0 and qw.zero.max() < 2**bits)
    if integral_zero:
        zero_codes = qw.zero.astype(np.int16)
    elif not qw.symmetric and bits == 8:
        # ORT 1.32's CPU kernel refuses this combination at session creation; fail here instead.
        raise ConfigError("zero_points", "MatMulNBits on CPU needs integral (uint8) zero points for 8 bits")
    # Pad the last block with the zero point (0.0 after dequantization); the kernel never reads
    # past K anyway, this only keeps the padding deterministic.
    pad_value = np.full((n, kb), offset, dtype=np.int16) if zero_codes is None else zero_codes
    full = np.repeat(pad_value, block_size, axis=1)
    full[:, :k] = unsigned
    blocks = full.reshape(n, kb, block_size).astype(np.uint8)
    B = pack_bits(blocks, bits)  # (N, kb, block_size * bits / 8)
    scales = np.ascontiguousarray(qw.scale.astype(np.float32).reshape(-1))
    if qw.symmetric:
        zero_points = None
    elif integral_zero:
        zero_points = pack_bits(zero_codes.astype(np.uint8), bits).reshape(-1)
    else:
        zero_points = np.ascontiguousarray(qw.zero.astype(np.float32).reshape(-1))
    return PackedNBits(B=B, scales=scales, zero_points=zero_points, K=k, N=n, bits=bits, block_size=block_size)


def dequantize_packed(packed: PackedNBits) -> np.ndarray:
    """What MatMulNBits computes with: the float32 (N, K) weight, from the packed inputs alone."""
    n, k, bs, bits = packed.N, packed.K, packed.block_size, packed.bits
    kb = num_blocks(k, bs)
    codes = unpack_bits(packed.B, bits, bs).reshape(n, kb * bs).astype(np.float32)
    if packed.zero_points is None:
        zero = np.full((n, kb), 2 ** (bits - 1), dtype=np.float32)
    elif packed.zero_points.dtype == np.uint8:
        zero = unpack_bits(packed.zero_points.reshape(n, -1), bits, kb).astype(np.float32)
    else:
        zero = packed.zero_points.reshape(n, kb)
    scale = packed.scales.reshape(n, kb)
    w = (codes - np.repeat(zero, bs, axis=1)) * np.repeat(scale, bs, axis=1)
    return w[:, :k]


def matmul_nbits_model(packed: PackedNBits, name: str = "W", opset: int = 18):
    """A one-node ONNX model `Y = MatMulNBits(A, W)`, A float32 [M, K] -> Y [M, N] (for checks)."""
    onnx = require("onnx", extra="toolkit", purpose="building MatMulNBits graphs")
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(packed.B, f"{name}_Q{packed.bits}"),
             numpy_helper.from_array(packed.scales, f"{name}_scales")]
    if packed.zero_points is not None:
        inits.append(numpy_helper.from_array(packed.zero_points, f"{name}_zero_points"))
    node = helper.make_node("MatMulNBits", ["A"] + [t.name for t in inits], ["Y"], domain="com.microsoft",
                            name=f"{name}_MatMulNBits", **packed.attributes())
    graph = helper.make_graph(
        [node], "matmul_nbits",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", packed.K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", packed.N])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.checker.check_model(model)
    return model
