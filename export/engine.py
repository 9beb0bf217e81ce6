"""Build TensorRT engines for an exported artifact, on the device that will run them.

    build_engine("artifact")            # vision/embed/decoder.engine, listed in manifest "engines"

Engines are specific to a GPU and a TensorRT version, so this runs on the target (a Jetson, the
robot's workstation), never at export time on a build machine. Networks are created *strongly
typed*: precision comes from the graph's own types (fp16 weights, explicit casts), which is what
TensorRT 11 supports (it dropped the FP16/INT8 builder flags) and what `--target tensorrt`
exports check for. Each graph gets one optimization profile, min/opt/max of batch, sequence and
past length, from the manifest's "tensorrt.profiles" (written by the tensorrt target).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from rt2edge.artifact import GRAPH_NAMES, FileSpec, load_manifest, write_manifest
from rt2edge.atomic import atomic_write_bytes
from rt2edge.errors import ArtifactError, ExportValidationError, MissingDependencyError
from rt2edge.optional import require

log = logging.getLogger("rt2edge.export")


def _tensorrt():
    trt = require("tensorrt", extra="gpu", purpose="building TensorRT engines")
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as exc:  # TensorRT raises when it finds no CUDA device
        raise MissingDependencyError(f"TensorRT is installed but found no usable CUDA GPU ({exc}); "
                                     "build engines on the target device") from exc
    if builder is None:
        raise MissingDependencyError("TensorRT is installed but found no usable CUDA GPU; build "
                                     "engines on the target device")
    return trt, logger, builder


def _profiles(manifest) -> Mapping[str, Any]:
    profiles = (manifest.extra.get("tensorrt") or {}).get("profiles")
    if not profiles:
        raise ArtifactError("the manifest has no 'tensorrt.profiles'; export with --target tensorrt")
    return profiles


def _build_one(trt, logger, builder, onnx_path: Path, profile_shapes: Mapping[str, Mapping[str, list[int]]],
               workspace_bytes: int) -> bytes:
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external weights next to the file
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportValidationError(f"{onnx_path.name}: TensorRT's ONNX parser failed:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shapes = profile_shapes.get(tensor.name)
        if shapes is None:
            continue  # a fixed-shape input (past_length, prefix_length)
        profile.set_shape(tensor.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ExportValidationError(f"{onnx_path.name}: TensorRT could not build an engine (see its log)")
    return bytes(engine)


def build_engine(artifact: str | Path, graphs: Sequence[str] = GRAPH_NAMES,
                 workspace_gb: float = 4.0) -> dict[str, Path]:
    """Build and serialize `<graph>.engine` for each graph, list them in the manifest (hashed);
    return their paths. Raises MissingDependencyError without tensorrt or a CUDA GPU."""
    folder = Path(artifact)
    manifest = load_manifest(folder, verify=True)
    unknown = [g for g in graphs if g not in manifest.graphs]
    if unknown:
        raise ArtifactError(f"{folder}: no graphs {unknown} in the manifest (has {sorted(manifest.graphs)})")
    profiles = _profiles(manifest)
    trt, logger, builder = _tensorrt()
    written: dict[str, Path] = {}
    engines = dict(manifest.engines)
    for name in graphs:
        log.info("rt2edge export: building TensorRT engine for %s", name)
        data = _build_one(trt, logger, builder, folder / manifest.graphs[name].file, profiles.get(name, {}),
                          int(workspace_gb * (1 << 30)))
        path = folder / f"{name}.engine"
        atomic_write_bytes(path, data)
        engines[name] = FileSpec(path.name)
        written[name] = path
    manifest.engines = engines
    manifest.provenance = {**manifest.provenance, "tensorrt": str(getattr(trt, "__version__", "?"))}
    write_manifest(folder, manifest)
    return written
