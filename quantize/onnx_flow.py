"""The common flow of every ONNX method: source artifact -> layers -> (sensitivity) -> graphs -> artifact.

A method supplies one function, `GraphQuantizer(ctx, graph, src, layers, out) -> details`, which
writes a copy of graph file `src` with the weight `layers` quantized to `out`. The flow
  1. verifies the source artifact (quantize.onnx_artifact.read_source) and the target;
  2. lists the weight layers (quantize.onnx_graph) and drops the kept groups (the action head
     by default, see quantize.config.DEFAULT_KEEP);
  3. with `sensitivity` / `keep_sensitive`, ranks the layers by quantizing one at a time
     (quantize.sensitivity) and keeps the K most sensitive in fp32;
  4. quantizes each graph once with the remaining layers and writes the new artifact;
  5. hands `quantize.run` the runtime Policy of the source and of the output (loaded back through
     `Policy.load`, hashes and all) for the held-out fidelity and closed-loop comparison.
Calibration data (`QuantContext.feeds`) is recorded lazily, once, only for methods that need it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import onnxruntime

from rt2edge.artifact import ArtifactManifest
from rt2edge.errors import ConfigError
from quantize.config import QuantizeConfig
from quantize.onnx_artifact import (check_target, deployed_bytes, list_report_files, output_target, read_source,
                                    write_artifact)
from quantize.onnx_graph import (QUANTIZABLE_GRAPHS, WeightLayer, graph_opset, graph_weight_bytes, name_nodes,
                                 weight_layers)
from quantize.onnx_probe import ArtifactProbe
from quantize.registry import MethodOutput, Observation

GraphQuantizer = Callable[["QuantContext", str, Path, list[WeightLayer], Path], dict[str, Any]]


class QuantContext:
    """What a GraphQuantizer may need, computed once and shared with the sensitivity pass."""

    def __init__(self, cfg: QuantizeConfig, manifest: ArtifactManifest, observations: list[Observation],
                 scratch: Path):
        self.cfg = cfg
        self.source = cfg.source
        self.manifest = manifest
        self.observations = observations
        self.scratch = scratch
        self.models: dict[str, Path] = {}
        self.layers: dict[str, list[WeightLayer]] = {}
        for graph in QUANTIZABLE_GRAPHS:
            path = cfg.source / manifest.graphs[graph].file
            model = onnx.load(str(path))
            if name_nodes(model):  # a working copy with named nodes (the quantizers select by name)
                path = scratch / f"{graph}.named.onnx"
                onnx.save(model, str(path))
            self.models[graph], self.layers[graph] = path, weight_layers(model, graph)
        self.reference = ArtifactProbe(cfg.source, manifest, threads=cfg.threads)
        self._cache: dict[Any, Any] = {}

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @property
    def calibrated(self) -> bool:
        """Whether a quantizer asked for the calibration feeds."""
        return "feeds" in self._cache

    def feeds(self) -> dict[str, list[dict[str, np.ndarray]]]:
        """Every graph's real inputs on the calibration frames: the fp32 artifact run through the
        runtime (vision, embed, prefill and every decode step with its KV cache)."""
        return self.cached("feeds", lambda: self.reference.record_feeds(self.observations))


class RuntimeTokens:
    """TokenFn over a loaded `rt2edge.runtime.Policy` (one act per frame, as on the robot) that
    also keeps each act's wall time; a safe fallback (no tokens) becomes a row of -1."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.seconds: list[float] = []

    def __call__(self, images: np.ndarray, instructions: Sequence[str]) -> np.ndarray:
        rows = []
        width = self.policy.action_tokenizer.tokens_per_action
        for image, instruction in zip(images, instructions):
            self.policy.reset()
            action = self.policy.act(image, instruction)
            self.seconds.append(float(action.timing.get("total", 0.0)))
            tokens = np.asarray(action.tokens, np.int64)
            rows.append(tokens if tokens.size else np.full(width, -1, np.int64))
        return np.stack(rows)

    def latency(self) -> dict[str, float] | None:
        if not self.seconds:
            return None
        s = np.asarray(self.seconds)
        return {"acts": int(s.size), "p50_ms": float(np.median(s) * 1e3),
                "p90_ms": float(np.percentile(s, 90) * 1e3), "hz": float(1.0 / np.median(s))}


def _load_runtime(folder: Path, threads: int | None):
    from rt2edge.runtime import Policy

    return Policy.load(folder, providers=["CPUExecutionProvider"], num_threads=threads, warmup=2)


def _actor(folder: Path, threads: int | None, name: str) -> Callable[[], Any]:
    def make() -> Any:
        from rt2edge.evaluation import ArtifactPolicyAdapter

        return ArtifactPolicyAdapter(_load_runtime(folder, threads), name=name)
    return make


def select_layers(ctx: QuantContext) -> list[WeightLayer]:
    keep = ctx.cfg.keep_groups
    layers = [layer for g in QUANTIZABLE_GRAPHS for layer in ctx.layers[g] if layer.group not in keep]
    if not layers:
        raise ConfigError("keep_groups", f"{str(ctx.source)!r}: no weight layer left to quantize when "
                                         f"keeping {list(keep)}")
    return layers


def run_onnx_method(cfg: QuantizeConfig, work_dir: Path, observations: list[Observation],
                    quantize_graph: GraphQuantizer, details: dict[str, Any] | None = None) -> MethodOutput:
    """The handler body of every ONNX method (see the module docstring)."""
    from quantize.sensitivity import layer_sensitivity, sensitivity_record

    manifest = read_source(cfg.source)
    check_target(cfg.target, manifest, cfg.source)
    with tempfile.TemporaryDirectory(prefix="rt2edge-quantize-") as scratch:
        ctx = QuantContext(cfg, manifest, observations, Path(scratch))
        candidates = select_layers(ctx)
        if cfg.keep_sensitive >= len(candidates):
            raise ConfigError("keep_sensitive", f"keeping {cfg.keep_sensitive} layers leaves none of the "
                                                f"{len(candidates)} candidates to quantize")
        ranking = layer_sensitivity(ctx, quantize_graph, candidates) if cfg.runs_sensitivity else []
        kept = {r.layer.key for r in ranking[:cfg.keep_sensitive]}
        chosen = [layer for layer in candidates if layer.key not in kept]
        outputs, per_graph = {}, {}
        start = time.perf_counter()
        for graph in QUANTIZABLE_GRAPHS:
            layers = [layer for layer in chosen if layer.graph == graph]
            if not layers:
                continue
            outputs[graph] = Path(scratch) / f"{graph}.quantized.onnx"
            info = quantize_graph(ctx, graph, ctx.models[graph], layers, outputs[graph])
            per_graph[graph] = {**info, "quantized_layers": len(layers),
                                "opset": graph_opset(onnx.load(str(outputs[graph]), load_external_data=False)),
                                "kept_layers": [layer.label for layer in ctx.layers[graph]
                                                if layer.key not in {c.key for c in layers}]}
        target = output_target(cfg.target, manifest)
        record = {
            "method": cfg.method, "bits": cfg.bits, "block_size": cfg.block_size, "algorithm": cfg.algorithm,
            "target": target, "kept_groups": list(cfg.keep_groups),
            "kept_sensitive_layers": [r.layer.label for r in ranking[:cfg.keep_sensitive]],
            "graphs": per_graph, "quantize_seconds": round(time.perf_counter() - start, 3),
            "calibration": {"source": cfg.calibration, "frames": len(observations),
                            "used": ctx.calibrated, "method": cfg.calibrate_method
                            if cfg.method == "int8-qdq" else None},
            **(details or {}),
        }
        new_manifest = write_artifact(cfg.source, manifest, work_dir, outputs, method=cfg.method,
                                      target=target, record=record,
                                      versions={"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__})
        reference_logits = ctx.reference.logits
    files = {g: spec.file for g, spec in manifest.graphs.items()}
    candidate_probe = ArtifactProbe(work_dir, new_manifest, threads=cfg.threads)
    report_details = {**record, "sensitivity": sensitivity_record(ranking, cfg.keep_sensitive),
                      "size_on_disk": {"source": deployed_bytes(cfg.source, manifest),
                                       "quantized": deployed_bytes(work_dir, new_manifest)}}
    return MethodOutput(
        reference=RuntimeTokens(_load_runtime(cfg.source, cfg.threads)),
        candidate=RuntimeTokens(_load_runtime(work_dir, cfg.threads)),  # hashes verified: what users load
        action_tokenizer=manifest.action_tokenizer(),
        bytes_before=graph_weight_bytes(cfg.source, files), bytes_after=graph_weight_bytes(work_dir, files),
        details=report_details, reference_logits=reference_logits, candidate_logits=candidate_probe.logits,
        reference_actor=_actor(cfg.source, cfg.threads, "source"),
        candidate_actor=_actor(work_dir, cfg.threads, cfg.method),
        finalize=list_report_files)
