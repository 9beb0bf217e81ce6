"""rt2edge stage: quantize (see DESIGN.md) -- int8 / int4 that keeps the action head.

    import quantize
    cfg = quantize.QuantizeConfig(source="ckpt/student", out="ckpt/student-nf4", method="bnb-nf4")
    quantize.run(cfg)            # -> Path; quantize_report.{json,md} inside
    quantize.run(quantize.QuantizeConfig(source="artifacts/student", out="artifacts/student-int4",
                                         method="int4-qdq", target="tensorrt"))
    quantize.known_methods()     # bnb-fp4, bnb-int8, bnb-nf4 (checkpoints); int8-dynamic, int8-qdq,
                                 # int4-matmulnbits, int4-qdq (deploy artifacts)

Modules: primitives (numpy RTN / HQQ / GPTQ), matmul_nbits (ONNX Runtime int4 packing),
registry + config + pipeline + report (the stage), bnb (bitsandbytes torch path), onnx_int8 /
onnx_int4 (the ONNX methods) on onnx_flow (their common flow), onnx_graph (weight layers, groups),
onnx_probe (the runtime with taps: tokens, teacher-forced logits, calibration feeds),
onnx_artifact (source checks, the new manifest), sensitivity (per-layer ranking), fidelity
(action-token agreement, action error), calibration (observations), sizes (weight bytes).
Importing `quantize` loads no torch; looking up a method (building a config) does.
"""

from __future__ import annotations

from quantize.config import QuantizeConfig
from quantize.pipeline import run
from quantize.registry import MethodOutput, known_methods, register_method

__all__ = ["MethodOutput", "QuantizeConfig", "known_methods", "register_method", "run"]
