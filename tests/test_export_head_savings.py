"""Head savings from configs: the OpenVLA-7B-sized numbers, checked by hand."""

from __future__ import annotations

import pytest

from export.head_savings import OPENVLA_7B, DecoderShape, format_table, head_savings, layer_params


def test_openvla_7b_head_savings():
    s = head_savings(OPENVLA_7B)
    assert s.full_head_params == 32000 * 4096 == 131_072_000
    assert s.action_head_params == 256 * 4096 == 1_048_576
    assert s.removed_params == 130_023_424
    assert s.bytes_removed["fp16"] == 260_046_848          # ~260 MB of fp16 weights
    assert s.full_head_bytes["fp32"] == 524_288_000
    assert s.full_head_flops_per_step == 262_144_000       # 2 * V * H per decoder run
    assert s.action_head_flops_per_step == 2_097_152
    assert s.flops_removed_per_action == 2 * 130_023_424 * 7 == 1_820_327_936
    assert s.removed_fraction == pytest.approx(1 - 256 / 32000)


def test_llama2_7b_layer_flops_and_head_share():
    # Llama-2-7B: 32 x (4 * 4096^2 attention + 3 * 4096 * 11008 MLP) = 6.48e9 layer weights
    assert layer_params(OPENVLA_7B) == 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) == 6_476_005_376
    s = head_savings(OPENVLA_7B)
    assert s.head_share_full == pytest.approx(0.01984, abs=1e-4)
    assert s.head_share_action < 2e-4


def test_small_decoder_with_large_vocab_is_head_dominated():
    # A Gemma-sized vocabulary on a small student: most of a decoder run is the head.
    shape = DecoderShape("student+gemma-vocab", hidden_size=256, vocab_size=257_152, num_layers=4, num_heads=4,
                         num_kv_heads=1, head_dim=64, intermediate_size=768)
    s = head_savings(shape)
    assert s.head_share_full > 0.9 and s.head_share_action < 0.1


def test_table_prints_every_row():
    table = format_table([head_savings(OPENVLA_7B)])
    assert "openvla-7b" in table and "262.14 MB" in table and "2.10 MB" in table
