"""Weight-only int4 on deploy artifacts: ONNX Runtime's MatMulNBits, and blocked int4 Q/DQ for TensorRT.

Both quantize each chosen MatMul's weight B [K, N] (= W^T of the nn.Linear W [N, K]) in blocks
of `block_size` along K with quantize.primitives, and leave activations in fp32:
int4-matmulnbits  `com.microsoft.MatMulNBits(A, B_q, scales[, zero_points])`, packed by
                  quantize.matmul_nbits (its layout is checked against ORT in the tests). ORT's CPU
                  kernel dequantizes blocks on the fly: 4 bits + one fp32 scale (+ a 4-bit zero) per
                  block. Algorithms: rtn (asymmetric, integral zero points), hqq (asymmetric, float
                  zero points optimized without data), gptq (asymmetric, error feedback through the
                  Hessian of the layer's recorded calibration inputs).
int4-qdq          `MatMul(A, DequantizeLinear(B_q int4 [K, N], scale [ceil(K/bs), N], axis=0,
                  block_size=bs))`, symmetric (no zero point): the ONNX form of TensorRT's int4
                  weight-only block quantization in a strongly typed network. int4 tensors and the
                  `block_size` attribute are ONNX opset 21 / IR 10, so the graph is converted to
                  opset 21 (onnx.version_converter). Algorithms: rtn, gptq (both symmetric).
GPTQ's layer inputs are the real inputs of each MatMul while the fp32 artifact acts on the
calibration frames (every recorded prefill and decode run), at most GPTQ_MAX_ROWS rows per layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantize.config import QuantizeConfig
from quantize.matmul_nbits import pack_bits, pack_matmul_nbits
from quantize.onnx_flow import QuantContext, run_onnx_method
from quantize.onnx_graph import WeightLayer, add_opset, drop_unused_initializers, initializer_array, upgrade_opset
from quantize.onnx_probe import ort_session
from quantize.primitives import QuantizedWeight, gptq_quantize_weight, hqq_quantize_weight, quantize_weight
from quantize.registry import MethodOutput, Observation, register_method

BITS = 4
QDQ_OPSET = 21  # the first opset with int4 tensors and blocked DequantizeLinear
GPTQ_MAX_ROWS = 4096
NBITS_BLOCKS = (32, 16, 64, 128, 256)
QDQ_BLOCKS = (32, 64, 128)


# ------------------------------------------------------------------------------------ weights
def layer_inputs(ctx: QuantContext, graph: str, src: Path) -> dict[str, np.ndarray]:
    """{node: (rows, K) float32}: each weight layer's input A on the recorded calibration runs."""
    def compute() -> dict[str, np.ndarray]:
        model = onnx.load(str(src))
        layers = ctx.layers[graph]
        names = list(dict.fromkeys(layer_input(model, layer) for layer in layers))
        outputs = {o.name for o in model.graph.output}
        for name in names:
            if name not in outputs:
                model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        path = ctx.scratch / f"{graph}.inputs.onnx"
        onnx.save(model, str(path))
        session = ort_session(path, ctx.cfg.threads)
        rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for feed in ctx.feeds()[graph]:
            for name, value in zip(names, session.run(names, feed)):
                rows[name].append(value.reshape(-1, value.shape[-1]))
        rng = np.random.default_rng(ctx.cfg.seed)
        out = {}
        for layer in layers:
            x = np.concatenate(rows[layer_input(model, layer)])
            if len(x) > GPTQ_MAX_ROWS:  # a seeded subsample keeps the Hessian's cost bounded
                x = x[np.sort(rng.choice(len(x), GPTQ_MAX_ROWS, replace=False))]
            out[layer.node] = x
        return out
    return ctx.cached(("layer_inputs", graph), compute)


def layer_input(model: onnx.ModelProto, layer: WeightLayer) -> str:
    node = next(n for n in model.graph.node if n.name == layer.node)
    return node.input[0]


def quantize_layer(ctx: QuantContext, graph: str, src: Path, layer: WeightLayer, b: np.ndarray,
                   symmetric: bool) -> QuantizedWeight:
    """Codes of W = B^T [N, K], blocked along K, with the configured algorithm."""
    w = np.ascontiguousarray(b.T.astype(np.float32))
    bs, algorithm = ctx.cfg.block_size, ctx.cfg.algorithm
    if algorithm == "hqq":
        return hqq_quantize_weight(w, BITS, bs)
    if algorithm == "gptq":
        return gptq_quantize_weight(w, layer_inputs(ctx, graph, src)[layer.node], BITS, bs, symmetric=symmetric)
    return quantize_weight(w, BITS, bs, symmetric=symmetric)


# ------------------------------------------------------------------------------------ graphs
def _replace_layers(model: onnx.ModelProto, layers: list[WeightLayer], rewrite) -> None:
    """Replace each layer's MatMul node by the nodes `rewrite(node, layer)` returns, in place."""
    by_node = {layer.node: layer for layer in layers}
    nodes = []
    for node in model.graph.node:
        layer = by_node.get(node.name)
        nodes.extend(rewrite(node, layer) if layer is not None else [node])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    drop_unused_initializers(model)


def nbits_graph(ctx: QuantContext, graph: str, src: Path, layers: list[WeightLayer], out: Path) -> dict[str, Any]:
    model = onnx.load(str(src))
    symmetric = False

    def rewrite(node: onnx.NodeProto, layer: WeightLayer) -> list[onnx.NodeProto]:
        b = initializer_array(model, layer.weight)
        packed = pack_matmul_nbits(quantize_layer(ctx, graph, src, layer, b, symmetric), BITS, ctx.cfg.block_size)
        prefix = f"{node.name}_q{BITS}"
        inits = [numpy_helper.from_array(packed.B, f"{prefix}_B"),
                 numpy_helper.from_array(packed.scales, f"{prefix}_scales")]
        if packed.zero_points is not None:
            inits.append(numpy_helper.from_array(packed.zero_points, f"{prefix}_zero_points"))
        model.graph.initializer.extend(inits)
        return [helper.make_node("MatMulNBits", [node.input[0]] + [t.name for t in inits], list(node.output),
                                 name=f"{node.name}_MatMulNBits", domain="com.microsoft", **packed.attributes())]

    _replace_layers(model, layers, rewrite)
    add_opset(model, "com.microsoft", 1)
    onnx.save(model, str(out))
    return {"weights": f"int{BITS} {ctx.cfg.algorithm}, blocks of {ctx.cfg.block_size} along K", "format": "MatMulNBits"}


def int4_tensor(codes: np.ndarray, name: str) -> onnx.TensorProto:
    """Signed codes in [-8, 7] -> an ONNX INT4 tensor: two's-complement nibbles, the element with
    the lower flat index in the low nibble (ONNX's int4 packing, also TensorRT's)."""
    flat = (codes.astype(np.int16).reshape(-1) & 0xF).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.INT4, list(codes.shape), pack_bits(flat, 4).tobytes(), raw=True)


def qdq_graph(ctx: QuantContext, graph: str, src: Path, layers: list[WeightLayer], out: Path) -> dict[str, Any]:
    model = upgrade_opset(onnx.load(str(src)), QDQ_OPSET)

    def rewrite(node: onnx.NodeProto, layer: WeightLayer) -> list[onnx.NodeProto]:
        qw = quantize_layer(ctx, graph, src, layer, initializer_array(model, layer.weight), symmetric=True)
        prefix = f"{node.name}_q{BITS}"
        # B = W^T: codes [K, N], one scale per (block of K, column n).
        model.graph.initializer.extend([int4_tensor(qw.q.T, f"{prefix}_B"),
                                        numpy_helper.from_array(np.ascontiguousarray(qw.scale.T), f"{prefix}_scale")])
        dq = helper.make_node("DequantizeLinear", [f"{prefix}_B", f"{prefix}_scale"], [f"{prefix}_B_dq"],
                              name=f"{node.name}_DequantizeLinear", axis=0, block_size=ctx.cfg.block_size)
        matmul = helper.make_node("MatMul", [node.input[0], f"{prefix}_B_dq"], list(node.output), name=node.name)
        matmul.metadata_props.extend(node.metadata_props)
        return [dq, matmul]

    _replace_layers(model, layers, rewrite)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return {"weights": f"int{BITS} symmetric {ctx.cfg.algorithm}, blocks of {ctx.cfg.block_size} along K",
            "format": f"DequantizeLinear (opset {QDQ_OPSET}, block_size) + MatMul"}


# ------------------------------------------------------------------------------------ methods
@register_method("int4-matmulnbits", bits=BITS, block_sizes=NBITS_BLOCKS, source="artifact", targets=("onnx",),
                 algorithms=("rtn", "hqq", "gptq"),
                 description="weight-only int4, ONNX Runtime MatMulNBits (blocked along K), fp32 activations")
def quantize_int4_matmulnbits(cfg: QuantizeConfig, work_dir: Path, observations: list[Observation]) -> MethodOutput:
    return run_onnx_method(cfg, work_dir, observations, nbits_graph)


@register_method("int4-qdq", bits=BITS, block_sizes=QDQ_BLOCKS, source="artifact", targets=("tensorrt", "onnx"),
                 algorithms=("rtn", "gptq"),
                 description="weight-only int4 as symmetric blocked DequantizeLinear (opset 21) for TensorRT "
                             "strongly typed networks; also runs on ONNX Runtime")
def quantize_int4_qdq(cfg: QuantizeConfig, work_dir: Path, observations: list[Observation]) -> MethodOutput:
    return run_onnx_method(cfg, work_dir, observations, qdq_graph)
