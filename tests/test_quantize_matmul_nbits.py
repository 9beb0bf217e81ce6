"""quantize.matmul_nbits: the packing is checked against a real ONNX Runtime MatMulNBits session."""

from __future__ import annotations

import numpy as np
import pytest

from rt2edge.errors import ConfigError
from quantize.matmul_nbits import (
    dequantize_packed,
    matmul_nbits_model,
    pack_bits,
    pack_matmul_nbits,
    unpack_bits,
)
from quantize.primitives import dequantize_weight, hqq_quantize_weight, quantize_weight


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_unpack_bits_round_trip_and_nibble_order(bits):
    codes = np.random.default_rng(0).integers(0, 2**bits, (3, 5, 37)).astype(np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.shape == (3, 5, -(-37 * bits // 8))
    assert np.array_equal(unpack_bits(packed, bits, 37), codes)
    if bits == 4:  # [Contract] MatMulNBits: the lower k in the low nibble
        assert pack_bits(np.array([1, 2], np.uint8), 4)[0] == 0x21


def _weights(kind, bits, w, block):
    if kind == "hqq":
        return hqq_quantize_weight(w, bits, block)
    return quantize_weight(w, bits, block, symmetric=(kind == "symmetric"))


@pytest.mark.parametrize("bits,kind", [(4, "symmetric"), (4, "asymmetric"), (4, "hqq"),
                                       (8, "symmetric"), (8, "asymmetric"), (2, "asymmetric")])
@pytest.mark.parametrize("n,k,block", [(48, 128, 32), (40, 100, 16), (24, 200, 64)])
def test_onnxruntime_matmul_nbits_matches_numpy_dequantized_matmul(bits, kind, n, k, block):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rng = np.random.default_rng(n + k)
    w = rng.normal(0, 0.05, (n, k)).astype(np.float32)
    a = rng.normal(0, 1, (5, k)).astype(np.float32)
    qw = _weights(kind, bits, w, block)
    packed = pack_matmul_nbits(qw, bits, block)
    assert packed.B.dtype == np.uint8 and packed.B.shape == (n, -(-k // block), block * bits // 8)
    expected_zp = {"symmetric": None, "asymmetric": np.uint8, "hqq": np.float32}[kind]
    assert (packed.zero_points is None) if expected_zp is None else packed.zero_points.dtype == expected_zp
    deq = dequantize_weight(qw.q, qw.scale, qw.zero, block)
    assert np.allclose(dequantize_packed(packed), deq, atol=1e-7)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(matmul_nbits_model(packed).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"A": a})
    ref = a @ deq.T
    assert y.shape == (5, n)
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_pack_refuses_what_matmul_nbits_cannot_run():
    w = np.random.default_rng(0).normal(0, 0.05, (8, 64)).astype(np.float32)
    with pytest.raises(ConfigError) as err:
        pack_matmul_nbits(quantize_weight(w, 4, 24), 4, 24)
    assert err.value.field == "block_size"
    with pytest.raises(ConfigError) as err:  # scales made for another block size
        pack_matmul_nbits(quantize_weight(w, 4, 32), 4, 16)
    assert err.value.field == "block_size"
    with pytest.raises(ConfigError) as err:
        pack_matmul_nbits(quantize_weight(w, 3, 32), 3, 32)
    assert err.value.field == "bits"
    with pytest.raises(ConfigError) as err:  # ORT's CPU kernel: 8 bits needs uint8 zero points
        pack_matmul_nbits(hqq_quantize_weight(w, 8, 32), 8, 32)
    assert err.value.field == "zero_points"
