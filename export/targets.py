"""Export targets, registered by name: what each one checks on the written graphs and adds to the
manifest. `ExportConfig.target` picks one; a new target is a subclass and `@register_target`.

  onnxruntime  (default) ONNX for ONNX Runtime with its fused contrib ops (com.microsoft) in the
               autoregressive decoder (export/fused_decoder.py): student-s runs 53 kernels per
               decode step instead of 274. The ONNX checker must pass (it skips the contrib
               domain, whose ops ONNX Runtime itself then runs in the export's validation).
  onnx         plain default-domain ONNX, for any ONNX consumer: the ONNX checker must pass.
  tensorrt     plain ONNX that TensorRT's parser builds as a strongly typed network
               (export/trt_check.py; contrib ops are refused there), plus the optimization
               profiles (min/opt/max of batch, sequence and past length) that
               `export.build_engine` and the runtime's TensorRT paths use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping

import onnx

from export.trt_check import MAX_OPSET as TRT_MAX_OPSET
from export.trt_check import DEFAULT_DOMAINS, assert_tensorrt_compatible
from rt2edge.artifact import GraphSpec
from rt2edge.errors import ExportValidationError
from rt2edge.registry import Registry


class ExportTarget:
    name: ClassVar[str]
    max_opset: ClassVar[int | None] = None
    # Its graphs are checked for TensorRT, so `export.build_engine` may build engines from them.
    builds_engines: ClassVar[bool] = False
    # The autoregressive decoder is exported with ONNX Runtime's fused contrib ops.
    fuses_decoder: ClassVar[bool] = False

    def check_graphs(self, folder: Path, graphs: Mapping[str, GraphSpec], precision: str) -> dict[str, Any]:
        """Raise ExportValidationError for a graph this target cannot use; return a report."""
        out = {}
        for name, spec in graphs.items():
            try:
                onnx.checker.check_model(str(folder / spec.file), full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
                raise ExportValidationError(f"{spec.file}: the ONNX checker rejects it: {exc}") from exc
            out[name] = {"onnx_checker": "ok"}
        return out

    def manifest_extra(self, profiles: Mapping[str, Any], checks: Mapping[str, Any]) -> dict[str, Any]:
        return {}


TARGETS: Registry[ExportTarget] = Registry("export target", field="target")
register_target = TARGETS.register_class("name")
get_target = TARGETS.get


@register_target
class OnnxTarget(ExportTarget):
    name = "onnx"


@register_target
class OnnxRuntimeTarget(ExportTarget):
    name = "onnxruntime"
    fuses_decoder = True

    def check_graphs(self, folder: Path, graphs: Mapping[str, GraphSpec], precision: str) -> dict[str, Any]:
        out = super().check_graphs(folder, graphs, precision)
        for name, spec in graphs.items():
            out[name]["fused_ops"] = fused_op_counts(onnx.load(str(folder / spec.file), load_external_data=False))
        return out

    def manifest_extra(self, profiles: Mapping[str, Any], checks: Mapping[str, Any]) -> dict[str, Any]:
        import onnxruntime

        # [Contract] manifest "onnxruntime": {"fused_ops": {graph: {"domain::Op": count}},
        # "validated_with": version}: which contrib ops each graph needs (a graph without any is
        # plain ONNX) and the ONNX Runtime the export validated them on; older ones may lack an op
        # or attribute and then refuse the graph when the session is created.
        return {"onnxruntime": {"fused_ops": {g: dict(c.get("fused_ops", {})) for g, c in checks.items()},
                                "validated_with": onnxruntime.__version__}}


def fused_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """{"com.microsoft::GroupQueryAttention": 4, ...}: the graph's nodes outside the default domain."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            key = f"{node.domain}::{node.op_type}"
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


@register_target
class TensorRTTarget(ExportTarget):
    name = "tensorrt"
    max_opset = TRT_MAX_OPSET
    builds_engines = True

    def check_graphs(self, folder: Path, graphs: Mapping[str, GraphSpec], precision: str) -> dict[str, Any]:
        out = super().check_graphs(folder, graphs, precision)
        for name, spec in graphs.items():
            report = assert_tensorrt_compatible(folder / spec.file, precision=precision)
            out[name]["tensorrt"] = report.to_dict()
        return out

    def manifest_extra(self, profiles: Mapping[str, Any], checks: Mapping[str, Any]) -> dict[str, Any]:
        # [Contract] manifest "tensorrt.profiles": {graph: {input: {"min"|"opt"|"max": shape}}},
        # one optimization profile per graph; build_engine and TensorRT EP caches read it.
        return {"tensorrt": {"profiles": dict(profiles)}}


def optimization_profiles(graphs: Mapping[str, GraphSpec], sizes: Mapping[str, tuple[int, int, int]]
                          ) -> dict[str, dict[str, dict[str, list[int]]]]:
    """min/opt/max shapes of every input with symbolic dims. `sizes` maps each symbolic dim name
    ("batch", "seq", "past", ...) to its (min, opt, max); a graph may override a name with
    "<graph>.<name>" (the embed graph's seq also covers the n_bins action ids)."""
    out: dict[str, dict[str, dict[str, list[int]]]] = {}
    for graph, spec in graphs.items():
        inputs = {}
        for tensor in spec.inputs:
            if all(isinstance(d, int) for d in tensor.shape):
                continue
            shapes = {"min": [], "opt": [], "max": []}
            for dim in tensor.shape:
                triple = (dim, dim, dim) if isinstance(dim, int) else sizes.get(f"{graph}.{dim}", sizes[dim])
                for key, value in zip(("min", "opt", "max"), triple):
                    shapes[key].append(int(value))
            inputs[tensor.name] = shapes
        out[graph] = inputs
    return out
