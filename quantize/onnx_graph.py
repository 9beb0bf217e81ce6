"""What the ONNX methods can quantize in a deploy artifact's graphs, and graph-level helpers.

A *weight layer* is a MatMul whose B input is a constant 2-D float32 initializer [K, N] (an
nn.Linear after export: Y = A @ W^T, B = W^T). Attention's activation x activation MatMuls and
the vision tower's patch Conv are not weight layers and are never touched.

Each weight layer belongs to a module group (quantize.config.MODULE_GROUPS):
  vision graph   "projector" when the exporter's scope metadata names the projector, else "vision"
  decoder graph  "head" for the action-only head (the MatMul that produces `action_logits`,
                 possibly through softcap's elementwise ops), else "language"
  embed graph    a Gather over the embedding table: never quantized
The scope metadata (`pkg.torch.onnx.name_scopes`, written by torch's dynamo exporter) also gives
each layer a readable label such as `layers.3.mlp.down_proj`; graphs without it (hand-built test
artifacts) fall back to the node name and the graph's default group.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper, version_converter

QUANTIZABLE_GRAPHS = ("vision", "decoder")  # embed is a table lookup
DEFAULT_GROUP = {"vision": "vision", "decoder": "language"}
HEAD_OUTPUT = "action_logits"  # [Contract] docs/artifact-format.md: the decoder's action logits
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# Ops between the head MatMul and `action_logits` (Gemma-2 softcap: Div, Tanh, Mul).
_ELEMENTWISE = frozenset({"Mul", "Div", "Tanh", "Add", "Sub", "Cast", "Identity"})


@dataclass(frozen=True)
class WeightLayer:
    graph: str  # "vision" or "decoder"
    node: str  # the MatMul's node name (unique within its graph)
    weight: str  # the initializer name of B
    group: str  # vision / projector / language / head
    scope: str  # the module path ("layers.0.self_attn.q_proj") or the node name
    k: int  # in features
    n: int  # out features

    @property
    def key(self) -> str:
        return f"{self.graph}:{self.node}"

    @property
    def label(self) -> str:
        return f"{self.graph}/{self.scope}"

    @property
    def params(self) -> int:
        return self.k * self.n


def _scope(node: onnx.NodeProto) -> str | None:
    meta = {p.key: p.value for p in node.metadata_props}
    if SCOPES_KEY not in meta:
        return None
    try:
        scopes = ast.literal_eval(meta[SCOPES_KEY])
    except (ValueError, SyntaxError):
        return None
    # The longest scope is the innermost module ("layers.0.mlp.down_proj"); the op's own name
    # ("linear_4") comes last and is shorter than its module path.
    named = [s for s in scopes if isinstance(s, str) and s]
    return max(named, key=len) if named else None


def _head_node(model: onnx.ModelProto, weights: set[str]) -> str | None:
    """The weight MatMul `action_logits` is computed from, through elementwise ops only."""
    producer = {out: node for node in model.graph.node for out in node.output}
    name = HEAD_OUTPUT
    for _ in range(8):
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type == "MatMul" and node.input[1] in weights:
            return node.name
        if node.op_type not in _ELEMENTWISE:
            return None
        name = next((i for i in node.input if i not in weights and i in producer), "")
    return None


def weight_layers(model: onnx.ModelProto, graph: str) -> list[WeightLayer]:
    """The weight layers of one graph, in graph order."""
    if graph not in QUANTIZABLE_GRAPHS:
        return []
    inits = {i.name: i for i in model.graph.initializer
             if i.data_type == TensorProto.FLOAT and len(i.dims) == 2}
    head = _head_node(model, set(inits)) if graph == "decoder" else None
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        if node.input[0] in inits:
            continue  # constant x constant: folded away by ORT, nothing to gain
        if not node.name:
            raise ValueError(f"{graph}: a MatMul producing {node.output[0]!r} has no name (see name_nodes)")
        k, n = (int(d) for d in inits[node.input[1]].dims)
        scope = _scope(node)
        if node.name == head:
            group, label = "head", "action_head"
        elif graph == "vision" and scope and "projector" in scope:
            group, label = "projector", scope
        else:
            group, label = DEFAULT_GROUP[graph], scope or node.name
        out.append(WeightLayer(graph, node.name, node.input[1], group, label, k, n))
    return out


def name_nodes(model: onnx.ModelProto) -> int:
    """Name every unnamed node ("<op>_<index>", unique); returns how many. ORT's quantizers select
    nodes by name, and the exporter names all of its nodes but hand-built graphs may not."""
    taken = {node.name for node in model.graph.node if node.name}
    count = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            count += 1
    return count


# ------------------------------------------------------------------------------------ sizes
def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every stored constant (weights, scales, zero points, packed int4 codes)."""
    total = 0
    for init in model.graph.initializer:
        if init.raw_data:
            total += len(init.raw_data)
        else:
            total += numpy_helper.to_array(init).nbytes
    return total


def graph_weight_bytes(folder: Path, files: dict[str, str]) -> dict[str, int]:
    """{graph: initializer bytes, ..., "total"} for graph files of an artifact folder."""
    out = {g: initializer_bytes(onnx.load(str(folder / f))) for g, f in files.items()}
    out["total"] = sum(out.values())
    return out


# ------------------------------------------------------------------------------------ editing
def initializer_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise KeyError(name)


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for node in model.graph.node for i in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def upgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The model at default-domain opset >= `opset` (int4 and blocked DequantizeLinear are
    opset 21, IR 10). ONNX's converter rewrites the few ops whose signature changed in between."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current < opset:
        model = version_converter.convert_version(model, opset)
    model.ir_version = max(model.ir_version, 10)
    return model


def add_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(domain, version))


def graph_opset(model: onnx.ModelProto) -> int:
    return int(next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0))
