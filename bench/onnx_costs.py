"""Cost of an ONNX graph as exported: weight bytes and multiply-accumulates from the graph itself.

The config-based model (bench/costs.py) says what a graph *should* cost; this walk says what the
exported file *does* cost, precision included (fp16 initializers, int8 QDQ weights, packed int4
MatMulNBits). Agreement of the two is a test; disagreement in a real artifact means the export
kept something it should not (a full-vocabulary head, a duplicated weight, an fp32 island).

    cost = onnx_graph_cost("artifact/decoder.onnx", dims={"batch": 1, "seq": 80, "past": 0})

Counted (same conventions as bench/costs.py): MACs of MatMul, Gemm, Conv, MatMulInteger and
com.microsoft MatMulNBits, and the two attention matmuls inside com.microsoft GroupQueryAttention
(the onnxruntime target's fused decoder; the plain graph has them as MatMul nodes), from shapes
after ONNX shape inference with the symbolic dims fixed by `dims`. A matmul whose shapes stay unknown is listed in `unresolved`, never guessed.
Initializer bytes are split by use: matmul weights (also through Cast / Transpose /
DequantizeLinear / Reshape), lookup tables (Gather: only the gathered rows are read per run) and
the rest (biases, norm weights, shape constants).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from math import prod
from pathlib import Path
from typing import Any, Mapping

from rt2edge.errors import ConfigError
from rt2edge.optional import is_available, require

log = logging.getLogger(__name__)

MATMUL_OPS = ("MatMul", "MatMulInteger", "Gemm", "Conv", "MatMulNBits", "GroupQueryAttention")
PASS_THROUGH = ("Cast", "Transpose", "DequantizeLinear", "Reshape", "Identity", "Unsqueeze", "Squeeze")


@dataclass
class GraphCost:
    graph: str
    macs: int
    weight_macs: int  # of matmuls with a constant (initializer) operand
    matmul_weight_bytes: float
    lookup_table_bytes: float
    other_initializer_bytes: float
    nodes: int
    op_counts: dict[str, int] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)

    @property
    def flops(self) -> float:
        return 2.0 * self.macs

    @property
    def weight_bytes(self) -> float:
        """Bytes a run streams: matmul weights and the small initializers (lookup tables aside)."""
        return self.matmul_weight_bytes + self.other_initializer_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flops": self.flops, "weight_bytes": self.weight_bytes}


def _onnx():
    return require("onnx", extra="toolkit", purpose="counting the cost of ONNX graphs")


def tensor_bytes(tensor: Any) -> float:
    """Stored bytes of an initializer from its dims and dtype (external data need not be loaded)."""
    onnx = _onnx()
    tp = onnx.TensorProto
    numel = prod(tensor.dims) if tensor.dims else 1
    if tensor.data_type in (tp.INT4, tp.UINT4):
        return numel / 2
    if tensor.data_type == tp.STRING:
        return float(sum(len(s) for s in tensor.string_data))
    return float(numel * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)


def _eval_dim(expr: str, dims: Mapping[str, int]) -> int | None:
    """Value of a symbolic dim ("seq", or an exporter's "past + seq") given `dims`, else None."""
    if expr in dims:
        return int(dims[expr])
    tokens = expr.replace("+", " + ").replace("-", " - ").replace("*", " * ").split()
    total, sign = 0, 1
    for i, tok in enumerate(tokens):
        if i % 2:  # operators at odd positions; only + and - are understood
            if tok not in "+-":
                return None
            sign = 1 if tok == "+" else -1
        elif tok.isdigit() or tok in dims:
            total += sign * (int(tok) if tok.isdigit() else int(dims[tok]))
        else:
            return None
    return total if tokens else None


def _fix_inputs(model: Any, dims: Mapping[str, int], values: Mapping[str, Any]) -> None:
    """Set symbolic dims to `dims` everywhere, and turn the inputs named in `values` (e.g. the
    decoder's past_length) into constants, so shape inference can resolve the shapes they drive."""
    graph = model.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                resolved = _eval_dim(d.dim_param, dims)
                if resolved is not None:
                    d.dim_value = resolved
    if not values:
        return
    onnx = _onnx()
    import numpy as np

    for name, value in values.items():
        matches = [v for v in graph.input if v.name == name]
        if not matches:
            raise ConfigError("values", f"{name!r} is not an input of graph {graph.name!r}")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(matches[0].type.tensor_type.elem_type)
        graph.input.remove(matches[0])
        graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))


def _shapes(model: Any) -> dict[str, list[int | None]]:
    out: dict[str, list[int | None]] = {}
    graph = model.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = value.type.tensor_type
        if t.HasField("shape"):
            out[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _known(shape: list[int | None] | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _node_macs(node: Any, shapes: Mapping[str, list[int | None]]) -> int | None:
    """MACs of one matmul-like node, or None when its shapes are unknown."""
    a = shapes.get(node.input[0])
    if node.op_type == "GroupQueryAttention":
        # q @ k^T and p @ v over every (query, key) pair: B x H x T x (P + T) x Hd each, as the
        # plain graph's two MatMuls count them (its causal mask is applied after the matmul).
        # Keys = past + new (the past input's shape: shape inference of the present output
        # is not reliable for this op).
        past = shapes.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        heads = next((x.i for x in node.attribute if x.name == "num_heads"), None)
        if not (_known(a) and _known(past) and heads):
            return None
        return 2 * a[0] * heads * a[1] * (past[2] + a[1]) * past[3]
    if node.op_type == "MatMulNBits":
        attrs = {x.name: x.i for x in node.attribute}
        return prod(a[:-1]) * attrs["K"] * attrs["N"] if _known(a) else None
    if node.op_type == "Conv":
        w, y = shapes.get(node.input[1]), shapes.get(node.output[0])
        return prod(y) * prod(w[1:]) if _known(w) and _known(y) else None
    b = shapes.get(node.input[1])
    if not (_known(a) and _known(b)):
        return None
    if node.op_type == "Gemm":
        attrs = {x.name: x.i for x in node.attribute}
        m = a[1] if attrs.get("transA", 0) else a[0]
        k = a[0] if attrs.get("transA", 0) else a[1]
        n = b[0] if attrs.get("transB", 0) else b[1]
        return m * k * n
    a2 = [1] + a if len(a) == 1 else a  # numpy matmul promotion of 1-D operands
    b2 = b + [1] if len(b) == 1 else b
    rank = max(len(a2), len(b2)) - 2  # broadcast the leading (batch) dims
    batch_a = [1] * (rank - len(a2) + 2) + a2[:-2]
    batch_b = [1] * (rank - len(b2) + 2) + b2[:-2]
    return prod(max(x, y) for x, y in zip(batch_a, batch_b)) * a2[-2] * a2[-1] * b2[-1]


def _symbolic_shapes(proto: Any) -> Any | None:
    """ONNX Runtime's symbolic shape inference: it evaluates Range, Slice on computed starts and
    com.microsoft ops, where onnx's own inference gives up. None when it is missing or fails."""
    if not is_available("onnxruntime"):
        return None
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        return SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    except Exception as exc:  # the tool raises bare Exceptions on ops it does not know
        log.info("bench: ORT symbolic shape inference failed (%s); keeping onnx's shapes", exc)
        return None


def onnx_graph_cost(model: Any, dims: Mapping[str, int] | None = None, values: Mapping[str, Any] | None = None,
                    name: str | None = None) -> GraphCost:
    """Cost of one run of `model` (path or ModelProto) with the symbolic dims set to `dims` and the
    shape-driving integer inputs set to `values` (e.g. {"past_length": [0]} for a prefill)."""
    onnx = _onnx()
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise ConfigError("graph", f"{path}: no such ONNX file")
        proto = onnx.load(str(path), load_external_data=False)  # dims suffice; weights stay on disk
        name = name or path.stem
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    _fix_inputs(proto, dims or {}, values or {})
    # onnx's inference first (fast); ORT's symbolic one (imports sympy, seconds) only if needed.
    cost = _walk(onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True), set(values or ()))
    if cost.unresolved:
        symbolic = _symbolic_shapes(proto)
        if symbolic is not None:
            cost = _walk(symbolic, set(values or ()))
    cost.graph = name or proto.graph.name
    return cost


def _walk(inferred: Any, value_inputs: set[str]) -> GraphCost:
    shapes = _shapes(inferred)
    graph = inferred.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    def sources(tensor: str) -> list[str]:
        """The initializers a constant operand is computed from through pass-through ops (a
        DequantizeLinear's scale and zero point included); [] for a runtime tensor."""
        found: list[str] = []
        for _ in range(8):
            if tensor in inits:
                return found + [tensor]
            node = producers.get(tensor)
            if node is None or node.op_type not in PASS_THROUGH:
                return []
            if node.op_type == "DequantizeLinear":
                found += [i for i in node.input[1:] if i in inits]
            tensor = node.input[0]
        return []

    use: dict[str, str] = {}  # initializer -> "matmul" | "lookup" (a matmul use wins)
    macs = weight_macs = 0
    unresolved, op_counts = [], {}
    for node in graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
        if node.op_type == "Gather":
            for table in sources(node.input[0]):
                use.setdefault(table, "lookup")
            continue
        if node.op_type not in MATMUL_OPS:
            continue
        weights = [sources(i) for i in node.input[:2] if i]
        # MatMulNBits' packed weights, scales and zero points are all weight bytes; a Conv's or
        # Gemm's bias is not (it is per output, like any other bias).
        extra = [sources(i) for i in node.input[2:] if i] if node.op_type == "MatMulNBits" else []
        for init in (x for group in weights + extra for x in group):
            use[init] = "matmul"
        n = _node_macs(node, shapes)
        if n is None:
            unresolved.append(node.name or f"{node.op_type}->{node.output[0]}")
            continue
        macs += n
        weight_macs += n if any(weights) else 0
    sums = {"matmul": 0.0, "lookup": 0.0, "other": 0.0}
    for init_name, tensor in inits.items():
        if init_name not in value_inputs:  # runtime inputs made constant above are not weights
            sums[use.get(init_name, "other")] += tensor_bytes(tensor)
    return GraphCost(graph=graph.name, macs=int(macs), weight_macs=int(weight_macs),
                     matmul_weight_bytes=sums["matmul"], lookup_table_bytes=sums["lookup"],
                     other_initializer_bytes=sums["other"], nodes=len(graph.node),
                     op_counts=op_counts, unresolved=unresolved)
