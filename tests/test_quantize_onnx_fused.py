"""quantize.run on an artifact exported for the onnxruntime target (fused decoder with
com.microsoft GroupQueryAttention / SkipSimplifiedLayerNormalization): the ONNX Runtime methods
quantize its weight MatMuls around the contrib ops, the output keeps the target, and a TensorRT
output is refused (its graphs could never parse). The source is the session's tiny LLaVA-style
export for that target (`tiny_llava_artifact`, conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")
pytest.importorskip("transformers")

import quantize  # noqa: E402
from quantize import QuantizeConfig  # noqa: E402
from rt2edge.artifact import load_manifest  # noqa: E402
from rt2edge.errors import ConfigError  # noqa: E402
from rt2edge.runtime import Policy  # noqa: E402

torch.set_num_threads(1)

FAST = dict(calibration_frames=2, holdout_frames=2, threads=1)
CONTRIB = {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"}


@pytest.fixture(scope="module")
def fused(tiny_llava_artifact) -> Path:
    """The tiny llava policy exported for the onnxruntime target (the default): a fused decoder."""
    return tiny_llava_artifact


def contrib_ops(folder: Path) -> set[str]:
    graph = onnx.load(str(folder / "decoder.onnx")).graph
    return {n.op_type for n in graph.node if n.domain == "com.microsoft"}


@pytest.mark.parametrize("method", ["int8-dynamic", "int4-matmulnbits"])
def test_onnxruntime_methods_quantize_the_fused_decoder(fused, tmp_path, method):
    out = quantize.run(QuantizeConfig(source=fused, out=tmp_path / method, method=method, **FAST))
    manifest = load_manifest(out, verify=True)
    assert manifest.target == "onnxruntime" and manifest.precision == method
    # q|k|v packed into one MatMul: 5 weight layers per decoder layer (q|k|v, o, gate, up, down)
    assert manifest.extra["quantization"]["graphs"]["decoder"]["quantized_layers"] == 2 * 5
    assert CONTRIB <= contrib_ops(out)
    policy = Policy.load(out, providers=["cpu"], num_threads=1)
    action = policy.act(np.zeros((32, 32, 3), np.uint8), "pick up the red block")
    assert not action.safe_fallback and len(action.bins) == 8


def test_a_tensorrt_output_of_a_fused_source_is_refused(fused, tmp_path):
    with pytest.raises(ConfigError, match="contrib ops.*--target tensorrt") as err:
        quantize.run(QuantizeConfig(source=fused, out=tmp_path / "o", method="int4-qdq", **FAST))
    assert err.value.field == "target" and os.listdir(tmp_path) == []
