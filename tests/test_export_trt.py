"""export/trt_check.py on hand-built ONNX graphs (no torch, no TensorRT needed)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export.trt_check import (  # noqa: E402
    TensorRTCompatibilityError,
    assert_tensorrt_compatible,
    check_tensorrt_compatibility,
)
from rt2edge.errors import ExportValidationError  # noqa: E402


def _model(nodes, initializers=(), opset=18, extra_opsets=(), x_shape=("batch", 4), weight_dtype=np.float32):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    w = numpy_helper.from_array(np.ones((4, 4), weight_dtype), "w")
    graph = helper.make_graph(nodes, "g", [x], [y], [w, *initializers])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def test_plain_graph_passes():
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])])
    report = assert_tensorrt_compatible(model)
    assert report.ok and report.op_counts == {"MatMul": 1} and report.opset == 18


def test_com_microsoft_op_fails():
    model = _model([helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft")],
                   extra_opsets=["com.microsoft"])
    with pytest.raises(TensorRTCompatibilityError, match="com.microsoft") as info:
        assert_tensorrt_compatible(model)
    assert isinstance(info.value, ExportValidationError)
    assert any("custom domain" in i for i in info.value.report.issues)


@pytest.mark.parametrize("op", ["DynamicQuantizeLinear", "MatMulInteger"])
def test_denied_ops_fail_with_the_reason(op):
    model = _model([helper.make_node(op, ["x", "w"], ["y"])])
    report = check_tensorrt_compatibility(model)
    assert not report.ok and "rejected by TensorRT" in report.issues[0]


def test_op_off_the_allow_list_fails():
    model = _model([helper.make_node("Det", ["x"], ["y"])])
    assert "not on TensorRT's supported-op list" in check_tensorrt_compatibility(model).issues[0]


def test_opset_above_the_parser_maximum_fails():
    matmul = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    assert check_tensorrt_compatibility(_model(matmul, opset=21)).ok  # blocked int4 DQ needs 21
    assert any("opset 26 > 25" in i for i in check_tensorrt_compatibility(_model(matmul, opset=26)).issues)


def test_asymmetric_qdq_fails_and_symmetric_passes():
    def qdq(zero):
        scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
        zp = numpy_helper.from_array(np.array(zero, np.int8), "zp")
        nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"]),
                 helper.make_node("MatMul", ["dq", "w"], ["y"])]
        return _model(nodes, [scale, zp])

    assert check_tensorrt_compatibility(qdq(0)).ok
    issues = check_tensorrt_compatibility(qdq(3)).issues
    assert len(issues) == 2 and all("symmetric" in i for i in issues)


def test_unnamed_dynamic_dim_and_float64_fail():
    model = _model([helper.make_node("Cast", ["x"], ["x64"], to=TensorProto.DOUBLE),
                    helper.make_node("Cast", ["x64"], ["x32"], to=TensorProto.FLOAT),
                    helper.make_node("MatMul", ["x32", "w"], ["y"])], x_shape=(None, 4))
    issues = check_tensorrt_compatibility(model).issues
    assert any("float64" in i for i in issues)
    assert any("neither fixed nor named" in i for i in issues)


def test_fp16_graph_with_fp32_weights_fails():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    assert not check_tensorrt_compatibility(_model(nodes), precision="fp16").ok
    cast = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
            helper.make_node("MatMul", ["xh", "w"], ["yh"]),
            helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT)]
    assert check_tensorrt_compatibility(_model(cast, weight_dtype=np.float16), precision="fp16").ok


def test_nodes_inside_subgraphs_are_checked():
    bad = helper.make_graph([helper.make_node("MatMulInteger", ["x", "w"], ["z"])], "then", [],
                            [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])])
    good = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["z2"])], "else", [],
                             [helper.make_tensor_value_info("z2", TensorProto.FLOAT, ["batch", 4])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    model = _model([helper.make_node("If", ["cond"], ["y"], then_branch=bad, else_branch=good)], [cond])
    assert any("MatMulInteger" in i for i in check_tensorrt_compatibility(model).issues)


def test_engine_build_without_a_gpu_says_so(monkeypatch):
    """tensorrt importable but no CUDA device: a MissingDependencyError naming the GPU."""
    import types

    from export import engine
    from rt2edge.errors import MissingDependencyError

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    def builder(logger):
        raise RuntimeError("CUDA initialization failure with error: 35")

    fake = types.SimpleNamespace(Logger=Logger, Builder=builder)
    monkeypatch.setattr(engine, "require", lambda *a, **k: fake)
    with pytest.raises(MissingDependencyError, match="no usable CUDA GPU"):
        engine._tensorrt()


def test_engine_build_without_tensorrt_says_which_extra(monkeypatch):
    from export import engine
    from rt2edge.errors import MissingDependencyError
    from rt2edge.optional import is_available

    if is_available("tensorrt"):
        pytest.skip("tensorrt is installed here")
    with pytest.raises(MissingDependencyError, match=r"rt2edge\[gpu\]"):
        engine._tensorrt()
