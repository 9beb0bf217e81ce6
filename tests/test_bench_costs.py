"""Cost model: hand counts on tiny configs, HF parameter parity, agreement with ONNX graph walks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.architecture import (DecoderSpec, ProjectorSpec, ViTSpec, VLASpec, openvla_7b,
                                spec_from_config)
from bench.costs import decoder_run_cost, vit_cost, vla_costs
from bench.precision import PRECISIONS, Precision, get_precision
from rt2edge.errors import ConfigError

TINY = DecoderSpec(hidden=8, layers=1, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab_size=32)


# ------------------------------------------------------------------------------ hand counts
def test_decode_step_matches_a_hand_count():
    step = decoder_run_cost(TINY, "decode.1", new=1, past=5, p=get_precision("fp16"), head_rows=4)
    # MACs per token: q 8x8 + k 8x4 + v 8x4 + o 8x8 + gate 8x16 + up 8x16 + down 16x8 = 576;
    # attention: 6 keys x (scores + values) x 8 query dims = 96; action head 4 rows x 8 = 32.
    assert step.flops == 2 * (576 + 96 + 32)
    # fp16: 576 weights + two RMSNorms (16) + head (32) + final norm (8) = 632 values x 2 bytes.
    assert step.weight_bytes == 632 * 2
    assert step.kv_bytes == 2 * 4 * 6 * 2  # K and V, kv_dim 4, 5 cached + 1 new positions, fp16
    # matmul inputs + outputs: 16 + 12 + 12 + 16 + 24 + 24 + 24 = 128, attention Q in + out 16,
    # head 8 in + 4 out -> 156 values x 2 bytes.
    assert step.activation_bytes == 156 * 2
    assert step.compute == "fp16" and step.tokens == 1 and step.context == 6


def test_causal_and_bidirectional_prefill_attention():
    p = get_precision("fp32")
    causal = decoder_run_cost(TINY, "prefill", new=4, past=0, p=p, head_rows=4)
    bidir = decoder_run_cost(TINY, "prefill", new=4, past=0, p=p, head_rows=4, bidirectional=True)
    # causal pairs 1+2+3+4 = 10, bidirectional 16; each pair costs 2 x 8 MACs
    assert bidir.flops - causal.flops == 2 * (16 - 10) * 2 * 8


def test_vit_matches_a_hand_count():
    tower = ViTSpec("tiny", hidden=8, layers=1, heads=2, intermediate=16, patch_size=4, image_size=8,
                    prefix_tokens=1)
    cost = vit_cost(tower, get_precision("fp32"))
    # 5 tokens x (4 x 64 + 2 x 128) + attention 2 x 5 x 5 x 8 + patch conv 4 x 48 x 8
    assert cost.flops == 2 * (5 * 512 + 400 + 1536)
    assert tower.tokens == 5 and tower.num_patches == 4


def test_quantized_bytes_include_scales():
    int4 = get_precision("int4")  # group 128, fp16 scale + 4-bit zero point
    assert int4.matrix_bytes(4096, 4096) == 4096 * 4096 / 2 + 4096 * 32 * 2.5
    assert int4.bits_per_weight(4096) == pytest.approx(4.156, abs=1e-3)
    per_channel = get_precision("q8f16_ft")
    assert per_channel.matrix_bytes(10, 100) == 1000 + 10 * 2
    assert get_precision("fp16").matrix_bytes(3, 5) == 30
    with pytest.raises(ConfigError, match="unknown precision 'int3'"):
        get_precision("int3")
    with pytest.raises(ConfigError, match="weight_bits"):
        Precision("bad", 5)


def test_action_head_saves_the_non_action_rows():
    spec = VLASpec("t", (ViTSpec("v", 8, 1, 2, 16, 4, 8),), ProjectorSpec((8, 8)), TINY,
                   num_image_tokens=4, tokens_per_action=3, n_bins=4)
    action = vla_costs(spec, "fp16", text_tokens=2, head="action")
    full = vla_costs(spec, "fp16", text_tokens=2, head="full")
    per_run = (32 - 4) * 8 * 2  # (vocab - n_bins) rows x hidden x fp16
    assert full.total().weight_bytes - action.total().weight_bytes == per_run * 3  # prefill + 2 decodes
    assert [s.stage for s in action.stages] == ["vision", "embed", "prefill", "decode.1", "decode.2"]
    assert action.stages[3].context == 4 + 2 + 1 and action.prompt_tokens == 6
    assert set(action.by_runtime_stage()) == {"vision", "embed", "prefill", "decode"}
    json.dumps(action.to_dict())
    with pytest.raises(ConfigError, match="head"):
        vla_costs(spec, head="lm")


# ------------------------------------------------------------------------------ HF parity
@pytest.mark.parametrize("preset", ["student-s", "teacher", "paligemma-tiny"])
def test_spec_parameters_equal_the_hf_model(preset):
    from rt2edge.models.families import SpecialTokenIds, count_parameters_from_config, get_family
    from rt2edge.models.presets import PRESETS

    entry = PRESETS[preset]
    config = get_family(entry.family).build_config(entry.size, SpecialTokenIds(700, 0, 1, 2, 3))
    spec = spec_from_config(config, tokens_per_action=8)
    assert spec.parameter_counts() == count_parameters_from_config(config)
    assert spec.num_image_tokens == entry.size.num_image_tokens
    assert spec.prefix_lm == (entry.family == "paligemma")


def test_openvla_7b_spec():
    spec = openvla_7b()
    counts = spec.parameter_counts()
    # OpenVLA-7B has 7.54e9 parameters (HF model card); the 15M-parameter SigLIP pooling head that
    # Prismatic never runs is left out here.
    assert counts["total"] == pytest.approx(7.54e9, rel=0.005)
    assert counts["language"] + counts["head"] == pytest.approx(6.74e9 + 64 * 4096 * 2, rel=0.002)
    assert spec.num_image_tokens == 256 and spec.tokens_per_action == 7
    assert spec.projector.dims == (2176, 8704, 4096, 4096)
    assert [t.tokens for t in spec.vision] == [261, 256]
    assert VLASpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_unknown_configs_are_refused_by_name():
    with pytest.raises(ConfigError, match="model_type"):
        spec_from_config({"model_type": "bert"})
    with pytest.raises(ConfigError, match="vision_backbone_id"):
        spec_from_config({"model_type": "openvla", "vision_backbone_id": "resnet-50"})
    with pytest.raises(ConfigError, match="vision_config"):
        spec_from_config({"model_type": "llava", "text_config": {"model_type": "llama"}})


# ------------------------------------------------------------------------------ ONNX cross-check
def _llama_graph(d: DecoderSpec, head_rows: int, seed: int = 0):
    """A Llama-style decoder (RMSNorm weights, GQA attention over a KV cache, SwiGLU MLP, head on
    the last position) built with onnx.helper, fp32, symbolic batch / seq / past dims."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    groups = d.heads // d.kv_heads
    inits, nodes = [], []

    def init(name, *shape, dtype=np.float32, value=None):
        arr = rng.standard_normal(shape).astype(dtype) if value is None else np.asarray(value, dtype)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    shape = lambda name, *dims: init(name, len(dims), dtype=np.int64, value=dims)  # noqa: E731
    q5, kv4 = shape("q5", 0, 0, d.kv_heads, groups, d.head_dim), shape("kv4", 0, 0, d.kv_heads, d.head_dim)
    qg, back = shape("qg", 0, d.kv_heads, -1, d.head_dim), shape("back", 0, d.kv_heads, groups, -1, d.head_dim)
    flat = shape("flat", 0, 0, d.q_dim)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", d.hidden])]
    h = "x"
    for i in range(d.layers):
        xn = node("Mul", [h, init(f"ln1_{i}", d.hidden)], f"xn{i}")
        q = node("MatMul", [xn, init(f"wq{i}", d.hidden, d.q_dim)], f"q{i}")
        q = node("Transpose", [node("Reshape", [q, q5], f"q5_{i}")], f"qt{i}", perm=[0, 2, 3, 1, 4])
        q = node("Reshape", [q, qg], f"qg{i}")
        cache = []
        for kind in ("key", "value"):
            new = node("MatMul", [xn, init(f"w{kind}{i}", d.hidden, d.kv_dim)], f"{kind}{i}")
            new = node("Transpose", [node("Reshape", [new, kv4], f"{kind}4_{i}")], f"{kind}t{i}", perm=[0, 2, 1, 3])
            past = f"past.{i}.{kind}"
            inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT,
                                                        ["batch", d.kv_heads, "past", d.head_dim]))
            cache.append(node("Concat", [past, new], f"present.{i}.{kind}", axis=2))
        kt = node("Transpose", [cache[0]], f"kt{i}", perm=[0, 1, 3, 2])
        probs = node("Softmax", [node("MatMul", [q, kt], f"scores{i}")], f"probs{i}", axis=-1)
        ctx = node("MatMul", [probs, cache[1]], f"ctx{i}")
        ctx = node("Transpose", [node("Reshape", [ctx, back], f"ctx5_{i}")], f"ctxt{i}", perm=[0, 3, 1, 2, 4])
        attn = node("MatMul", [node("Reshape", [ctx, flat], f"ctxf{i}"), init(f"wo{i}", d.q_dim, d.hidden)], f"o{i}")
        h = node("Add", [h, attn], f"h{i}")
        xn = node("Mul", [h, init(f"ln2_{i}", d.hidden)], f"xm{i}")
        gate = node("MatMul", [xn, init(f"wgate{i}", d.hidden, d.intermediate)], f"gate{i}")
        up = node("MatMul", [xn, init(f"wup{i}", d.hidden, d.intermediate)], f"up{i}")
        act = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate], f"sg{i}")], f"silu{i}"), up], f"act{i}")
        h = node("Add", [h, node("MatMul", [act, init(f"wdown{i}", d.intermediate, d.hidden)], f"down{i}")], f"hm{i}")
    last = node("Gather", [node("Mul", [h, init("ln_f", d.hidden)], "hn"), init("minus1", dtype=np.int64, value=-1)],
                "last", axis=1)
    node("MatMul", [last, init("head", d.hidden, head_rows)], "action_logits")
    graph = helper.make_graph(nodes, "decoder", inputs,
                              [helper.make_tensor_value_info("action_logits", TensorProto.FLOAT, ["batch", head_rows])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _norm_bytes(model) -> float:
    """The non-matmul float initializers (norm weights): what the cost model counts besides matrices."""
    from bench.onnx_costs import tensor_bytes
    from onnx import TensorProto

    return sum(tensor_bytes(t) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT
               and t.name.startswith("ln"))


@pytest.mark.parametrize("new,past,bidirectional", [(1, 37, False), (9, 0, True)])
def test_cost_model_agrees_with_the_onnx_graph(new, past, bidirectional):
    import onnx

    from bench.onnx_costs import onnx_graph_cost

    d = DecoderSpec(hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, intermediate=48, vocab_size=100)
    model = _llama_graph(d, head_rows=16)
    onnx.checker.check_model(model)
    graph = onnx_graph_cost(model, dims={"batch": 1, "seq": new, "past": past})
    expected = decoder_run_cost(d, "x", new, past, get_precision("fp32"), head_rows=16,
                                bidirectional=bidirectional)
    assert graph.unresolved == []
    assert graph.flops == expected.flops  # the graph's attention sees every key: causal == full at new=1
    assert graph.matmul_weight_bytes + _norm_bytes(model) == expected.weight_bytes
    assert graph.op_counts["MatMul"] == d.layers * 9 + 1


def test_onnx_walk_counts_quantized_weights_with_their_scales():
    from onnx import TensorProto, helper, numpy_helper

    from bench.onnx_costs import onnx_graph_cost

    k, n, block = 64, 48, 32
    blocks = k // block
    inits = [
        # int8 QDQ weight, per-output-channel fp32 scales (ONNX Runtime's static/dynamic quantizer)
        numpy_helper.from_array(np.ones((k, n), np.int8), "w8"),
        numpy_helper.from_array(np.ones(n, np.float32), "w8_scale"),
        numpy_helper.from_array(np.zeros(n, np.int8), "w8_zp"),
        # int4 MatMulNBits: packed [N, blocks, block/2] uint8, fp32 scales, packed 4-bit zero points
        numpy_helper.from_array(np.zeros((n, blocks, block // 2), np.uint8), "w4"),
        numpy_helper.from_array(np.ones(n * blocks, np.float32), "w4_scale"),
        numpy_helper.from_array(np.zeros((n * blocks + 1) // 2, np.uint8), "w4_zp"),
        numpy_helper.from_array(np.ones((5, 48), np.float32), "table"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w8", "w8_scale", "w8_zp"], ["w8_f"], axis=1),
        helper.make_node("MatMul", ["x", "w8_f"], ["y8"]),
        helper.make_node("MatMulNBits", ["x", "w4", "w4_scale", "w4_zp"], ["y4"], domain="com.microsoft",
                         K=k, N=n, bits=4, block_size=block),
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
    ]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", k]),
                                           helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y8", "y4", "emb")],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.microsoft", 1)])
    cost = onnx_graph_cost(model, dims={"batch": 1, "seq": 3})
    int8 = Precision("qdq-int8", 8, None, scale_bytes=4, zero_point_bits=8, compute="int8")
    int4 = Precision("nbits-int4", 4, block, scale_bytes=4, zero_point_bits=4)
    assert cost.matmul_weight_bytes == int8.matrix_bytes(n, k) + int4.matrix_bytes(n, k)
    assert cost.macs == 2 * 3 * k * n and cost.weight_macs == cost.macs
    assert cost.lookup_table_bytes == 5 * 48 * 4 and cost.other_initializer_bytes == 0
    json.dumps(cost.to_dict())


def test_onnx_walk_of_a_runtime_artifact(tmp_path):
    """The test artifact's decoder (tests/artifact_factory.py): prefill and decode resolve fully."""
    from artifact_factory import make_artifact

    from bench.onnx_costs import onnx_graph_cost

    root, model = make_artifact(tmp_path, num_layers=2, num_kv_heads=2, head_dim=8, hidden=32)
    dims = {"batch": 1, "seq": 14, "past_length": 0}
    prefill = onnx_graph_cost(root / "decoder.onnx", dims, values={"past_length": [0], "prefix_length": [0]})
    kv = 2 * 8
    assert prefill.unresolved == []
    assert prefill.macs == 2 * 14 * (32 * kv * 2 + kv * 32) + 32 * 256  # k, v, o per layer + head
    assert prefill.matmul_weight_bytes == 4 * (2 * 3 * 32 * kv + 32 * 256)
    embed = onnx_graph_cost(root / "embed.onnx", {"batch": 1, "seq": 5})
    assert embed.lookup_table_bytes == model.embed_table.nbytes and embed.weight_bytes == 0
    with pytest.raises(ConfigError, match="not an input"):
        onnx_graph_cost(root / "decoder.onnx", dims, values={"nope": [0]})
    with pytest.raises(ConfigError, match="no such ONNX file"):
        onnx_graph_cost(tmp_path / "missing.onnx")


def test_every_registered_precision_is_consistent():
    for p in PRECISIONS.values():
        assert p.matrix_bytes(64, 256) >= 64 * 256 * p.weight_bits / 8
        assert p.quantized == (p.weight_bits < 16)
