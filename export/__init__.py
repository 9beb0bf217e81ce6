"""rt2edge stage: export a VLAPolicy checkpoint to a deploy artifact (ONNX / TensorRT), validated.

    from export import ExportConfig, run, build_engine
    run(ExportConfig(checkpoint="ckpt", out="artifact", target="tensorrt", precision="fp16"))
    build_engine("artifact")            # on the target device: tensorrt + a GPU

The contract it writes is docs/artifact-format.md. Names resolve on first use, so the torch-free
parts (`export.trt_check`, `export.head_savings`) import without torch.
"""

from __future__ import annotations

from rt2edge.lazy import lazy_getattr

_EXPORTS = {
    "ExportConfig": "export.config",
    "run": "export.pipeline",
    "build_engine": "export.engine",
    "validate_artifact": "export.validate",
    "check_tensorrt_compatibility": "export.trt_check",
    "TARGETS": "export.targets",
    "register_target": "export.targets",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr("export", _EXPORTS)
