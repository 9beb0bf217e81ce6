"""Will TensorRT's ONNX parser take this graph? A static check that runs anywhere (no GPU).

TensorRT >= 10 builds *strongly typed* networks from ONNX: precision comes from the graph's own
tensor types (explicit Cast nodes, symmetric QuantizeLinear/DequantizeLinear), not from builder
flags (TensorRT 11 dropped the FP16/INT8 flags). So a graph that is right for TensorRT:
  * uses only the default ONNX domain at opset <= MAX_OPSET (no com.microsoft contrib ops, which
    ONNX Runtime's quantizer and optimizer like to insert),
  * uses only ops on ALLOWED_OPS (TensorRT 10's parser support matrix, onnx-tensorrt
    docs/operators.md), never one on DENIED_OPS (ops the parser rejects, with the reason),
  * has symmetric Q/DQ (zero points are constant zeros),
  * has no float64 / string / complex tensors,
  * has IO with a fixed rank and every dim either a number or a named symbol, so optimization
    profiles can give each named dim a min/opt/max,
  * for fp16: keeps its weights in fp16 (casts are explicit in the graph, nothing is left for the
    builder to decide).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from rt2edge.errors import ExportValidationError

# TensorRT 11.x's parser takes opsets up to 25 (NVIDIA "ONNX Opset Guide", TensorRT 11.x column);
# 21 is the floor that matters here: blocked int4 DequantizeLinear (block_size) is an opset-21 op.
MAX_OPSET = 25
DEFAULT_DOMAINS = ("", "ai.onnx")

# Ops TensorRT's ONNX parser rejects, with why (what to do instead).
DENIED_OPS: dict[str, str] = {
    "DynamicQuantizeLinear": "dynamic (runtime-computed) quantization; use static symmetric Q/DQ",
    "MatMulInteger": "integer matmul; express int8 as QuantizeLinear/DequantizeLinear around MatMul",
    "ConvInteger": "integer conv; use Q/DQ around Conv",
    "QLinearMatMul": "QOperator format; export in QDQ format instead",
    "QLinearConv": "QOperator format; export in QDQ format instead",
    "QLinearAdd": "QOperator format; export in QDQ format instead",
    "MatMulNBits": "ONNX Runtime contrib int4 op (com.microsoft); use int4 DequantizeLinear blocks",
    "Unique": "data-dependent output shape",
    "StringNormalizer": "string tensors",
    "TfIdfVectorizer": "string/sparse op",
    "SequenceConstruct": "sequence types", "SequenceAt": "sequence types",
    "SequenceInsert": "sequence types", "SequenceEmpty": "sequence types",
    "SplitToSequence": "sequence types", "ConcatFromSequence": "sequence types",
    "Multinomial": "random sampling", "RandomNormal": "random sampling",
    "RandomNormalLike": "random sampling",
}

# TensorRT 10 ONNX parser support matrix (default domain), the ops an exported transformer and
# its vision tower can lower to plus the common rest.
ALLOWED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual
GroupNormalization HardSigmoid HardSwish Identity If InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN MatMul Max MaxPool Mean Min
Mish Mod Mul Neg NonZero Not OneHot Or Pad Pow PRelu QuantizeLinear Range Reciprocal ReduceL1
ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize Round ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign
Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Where Xor
""".split())

BAD_DTYPES = {TensorProto.DOUBLE: "float64", TensorProto.STRING: "string",
              TensorProto.COMPLEX64: "complex64", TensorProto.COMPLEX128: "complex128",
              TensorProto.UINT64: "uint64"}


class TensorRTCompatibilityError(ExportValidationError):
    """A graph TensorRT's ONNX parser would reject; `.report` holds every issue found."""

    def __init__(self, report: "TrtCheckReport"):
        self.report = report
        shown = "\n  ".join(report.issues[:20])
        more = f"\n  ... and {len(report.issues) - 20} more" if len(report.issues) > 20 else ""
        super().__init__(f"{report.graph}: not TensorRT-compatible ({len(report.issues)} issues):\n  "
                         f"{shown}{more}")


@dataclass
class TrtCheckReport:
    graph: str
    opset: int
    issues: list[str] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.issues

    def to_dict(self) -> dict:
        return {"graph": self.graph, "opset": self.opset, "ok": self.ok, "issues": list(self.issues),
                "op_counts": dict(self.op_counts)}


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those in If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def _check_nodes(model: onnx.ModelProto, report: TrtCheckReport) -> None:
    local_functions = {(f.domain, f.name) for f in model.functions}
    nodes = list(_all_nodes(model.graph))
    for function in model.functions:
        nodes.extend(function.node)
    counts: Counter[str] = Counter()
    for node in nodes:
        if (node.domain, node.op_type) in local_functions:
            continue  # its body is checked above
        counts[f"{node.domain + '::' if node.domain not in DEFAULT_DOMAINS else ''}{node.op_type}"] += 1
        where = f"node {node.name or '?'} ({node.op_type})"
        if node.domain not in DEFAULT_DOMAINS:
            report.issues.append(f"{where}: custom domain {node.domain!r}; TensorRT parses only the "
                                 "default ONNX domain (contrib ops need plugins)")
        elif node.op_type in DENIED_OPS:
            report.issues.append(f"{where}: rejected by TensorRT: {DENIED_OPS[node.op_type]}")
        elif node.op_type not in ALLOWED_OPS:
            report.issues.append(f"{where}: not on TensorRT's supported-op list")
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to in BAD_DTYPES:
                report.issues.append(f"{where}: casts to {BAD_DTYPES[to]}, which TensorRT does not support")
    report.op_counts = dict(sorted(counts.items()))


def _check_qdq(model: onnx.ModelProto, report: TrtCheckReport) -> None:
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zero_point = node.input[2]
        if not zero_point:
            continue
        if zero_point not in constants:
            report.issues.append(f"node {node.name} ({node.op_type}): zero point {zero_point!r} is not a "
                                 "constant; TensorRT needs symmetric, static quantization")
        elif np.any(numpy_helper.to_array(constants[zero_point]) != 0):
            report.issues.append(f"node {node.name} ({node.op_type}): non-zero zero point; TensorRT "
                                 "supports symmetric quantization only")


def _check_types(model: onnx.ModelProto, report: TrtCheckReport, precision: str | None) -> None:
    graph = model.graph
    values = list(graph.input) + list(graph.output) + list(graph.value_info)
    for value in values:
        elem = value.type.tensor_type.elem_type
        if elem in BAD_DTYPES:
            report.issues.append(f"tensor {value.name}: dtype {BAD_DTYPES[elem]} is not supported by TensorRT")
    for init in graph.initializer:
        if init.data_type in BAD_DTYPES:
            report.issues.append(f"initializer {init.name}: dtype {BAD_DTYPES[init.data_type]} "
                                 "is not supported by TensorRT")
    if precision == "fp16":
        # Weights (rank >= 2) left in fp32 would make a strongly typed network run those layers
        # in fp32: the fp16 export must carry fp16 weights and cast explicitly.
        fp32 = [i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) >= 2]
        if fp32:
            report.issues.append(f"fp16 graph keeps {len(fp32)} fp32 weight tensors (e.g. {fp32[0]}); "
                                 "a strongly typed network would run them in fp32")


def _check_io_shapes(model: onnx.ModelProto, report: TrtCheckReport) -> None:
    for value in list(model.graph.input) + list(model.graph.output):
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            report.issues.append(f"IO {value.name}: unknown rank; optimization profiles need a fixed rank")
            continue
        for axis, dim in enumerate(tensor.shape.dim):
            if not dim.HasField("dim_value") and not dim.dim_param:
                report.issues.append(f"IO {value.name}: dim {axis} is neither fixed nor named; "
                                     "optimization profiles cannot address it")


def check_tensorrt_compatibility(model: onnx.ModelProto | str | Path, precision: str | None = None,
                                 max_opset: int = MAX_OPSET) -> TrtCheckReport:
    """Every reason TensorRT would reject `model` (a proto or a path); an empty list means go."""
    name = "<model>"
    if not isinstance(model, onnx.ModelProto):
        name = Path(model).name
        model = onnx.load(str(model), load_external_data=False)  # weights are not needed
    opsets = {o.domain: o.version for o in model.opset_import}
    opset = int(opsets.get("", opsets.get("ai.onnx", 0)))
    report = TrtCheckReport(graph=name, opset=opset)
    if opset > max_opset:
        report.issues.append(f"opset {opset} > {max_opset}, the newest TensorRT's parser reads; "
                             f"export with --opset {max_opset} or lower")
    for domain in opsets:
        if domain not in DEFAULT_DOMAINS:
            report.issues.append(f"imports opset domain {domain!r}; TensorRT parses only the default domain")
    _check_nodes(model, report)
    _check_qdq(model, report)
    _check_types(model, report, precision)
    _check_io_shapes(model, report)
    return report


def assert_tensorrt_compatible(model: onnx.ModelProto | str | Path, precision: str | None = None,
                               max_opset: int = MAX_OPSET) -> TrtCheckReport:
    report = check_tensorrt_compatibility(model, precision, max_opset)
    if not report.ok:
        raise TensorRTCompatibilityError(report)
    return report
