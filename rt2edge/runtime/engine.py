"""Prebuilt TensorRT engines: load and execute them as `GraphRunner`s (the "tensorrt-engine" backend).

Engines are device- and TensorRT-version-specific, so they are built on the robot and listed in
the manifest's `engines` section (hashed like the graphs) by whoever builds them. Device memory
comes from onnxruntime-gpu's `OrtValue` (already in `rt2edge[gpu]`), so this needs no pycuda /
cuda-python. Untested on this project's CI (no GPU): the missing-dependency path is what is tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rt2edge.artifact import GRAPH_NAMES, ArtifactManifest
from rt2edge.errors import ArtifactError
from rt2edge.optional import is_available, require
from rt2edge.runtime.backends import Backend, BackendOptions, GraphRunner, check_io, register_backend

BACKEND_NAME = "tensorrt-engine"


class TensorRTEngine:
    """One deserialized TensorRT engine with its execution context (TensorRT >= 10 tensor API)."""

    def __init__(self, path: str | Path, device_id: int = 0):
        self.trt = require("tensorrt", extra="gpu", purpose="running prebuilt TensorRT engines")
        self.ort = require("onnxruntime", extra="gpu", purpose="GPU buffers for TensorRT engines")
        self.path = Path(path)
        self.device_id = device_id
        self._logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._runtime = self.trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{self.path}: TensorRT cannot deserialize it (built for another GPU "
                                "or TensorRT version? rebuild the engine on this device)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = [self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT for n in names]
        self.input_names = tuple(n for n, i in zip(names, is_input) if i)
        self.output_names = tuple(n for n, i in zip(names, is_input) if not i)
        self._output_dtypes = {n: self.trt.nptype(self.engine.get_tensor_dtype(n)) for n in self.output_names}

    def _device(self, arr: np.ndarray) -> Any:
        # TensorRT wants a valid address even for an empty tensor (the first step's KV cache).
        host = arr if arr.size else np.zeros(1, dtype=arr.dtype)
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(host), "cuda", self.device_id)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        keep = {}  # device buffers must outlive the (asynchronous) execution
        for name in self.input_names:
            arr = np.asarray(feeds[name])
            if not self.context.set_input_shape(name, arr.shape):
                raise RuntimeError(f"{self.path.name}: input {name} shape {arr.shape} is outside the "
                                   "engine's optimization profile")
            keep[name] = self._device(arr)
            self.context.set_tensor_address(name, keep[name].data_ptr())
        shapes = {}
        for name in self.output_names:
            shapes[name] = tuple(self.context.get_tensor_shape(name))
            keep[name] = self.ort.OrtValue.ortvalue_from_shape_and_type(
                shapes[name] if np.prod(shapes[name]) else (1,), self._output_dtypes[name], "cuda",
                self.device_id)
            self.context.set_tensor_address(name, keep[name].data_ptr())
        # Stream 0 (the legacy default stream) serializes with the copies OrtValue.numpy() makes.
        if not self.context.execute_async_v3(0):
            raise RuntimeError(f"{self.path.name}: TensorRT execution failed")
        out = []
        for name in outputs:
            host = keep[name].numpy()
            out.append(host.reshape(shapes[name]) if host.size == np.prod(shapes[name]) else
                       np.zeros(shapes[name], dtype=host.dtype))
        return out


def _unavailable(folder: Path, manifest: ArtifactManifest) -> str | None:
    missing = [g for g in GRAPH_NAMES if g not in manifest.engines]
    if missing:
        return f"the manifest lists no TensorRT engine for {missing}"
    if not is_available("tensorrt"):
        return "tensorrt is not installed (pip install 'rt2edge[gpu]' and NVIDIA's tensorrt)"
    if not is_available("onnxruntime"):  # a missing package skips this backend, never crashes load
        return "onnxruntime-gpu is not installed (it provides the engine's CUDA buffers)"
    ort = require("onnxruntime", extra="gpu")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDA support (install onnxruntime-gpu) for the engine buffers"
    return None


def _create(folder: Path, manifest: ArtifactManifest, options: BackendOptions):
    runners: dict[str, GraphRunner] = {
        g: TensorRTEngine(folder / manifest.engines[g].file) for g in GRAPH_NAMES}
    check_io(manifest, runners)
    return runners, BACKEND_NAME


register_backend(Backend(BACKEND_NAME, 40, _unavailable, _create))
