"""rt2edge stage: quantize (see DESIGN.md) -- int8 / int4 that keeps the action head.

    import quantize
    cfg = quantize.QuantizeConfig(source="ckpt/student", out="ckpt/student-nf4", method="bnb-nf4")
    quantize.run(cfg)            # -> Path; quantize_report.{json,md} inside
    quantize.known_methods()     # ["bnb-fp4", "bnb-int8", "bnb-nf4"]

Modules: primitives (numpy RTN / HQQ / GPTQ), matmul_nbits (ONNX Runtime int4 packing),
registry + config + pipeline (the stage), bnb (bitsandbytes torch path), fidelity (action-token
agreement, action error), calibration (observations), sizes (weight bytes per module group).
Importing `quantize` loads no torch; looking up a method (building a config) does.
"""

from __future__ import annotations

from quantize.config import QuantizeConfig
from quantize.pipeline import run
from quantize.registry import MethodOutput, known_methods, register_method

__all__ = ["MethodOutput", "QuantizeConfig", "known_methods", "register_method", "run"]
