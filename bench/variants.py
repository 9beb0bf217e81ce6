"""One variant (source x backend) through the suite: load, time the control loop, cost, bound, project.

Each step returns plain JSON-able dicts; bench/pipeline.py puts them into the report.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from bench.backends import PolicyBackend, make_backend
from bench.config import BenchConfig
from bench.costs import CostBreakdown
from bench.machine import MachineProfile
from bench.memory import MemoryWindow, PeakMemory
from bench.overheads import BandwidthAtSize, RunOverhead
from bench.roofline import (OverheadModel, artifact_stage_costs, checkpoint_stage_costs, compute_class,
                            convention_kernels, graph_precision, roofline_summary, stage_bounds)
from bench.sources import Variant
from bench.timing import ControlLoopTimer, TimingReport, time_policy


@dataclass
class VariantRun:
    variant: Variant
    backend: PolicyBackend
    timing: TimingReport
    memory: MemoryWindow
    load_s: float

    @property
    def precision(self) -> str:
        info = self.backend.info
        if info.get("precision"):
            return str(info["precision"])
        dtype = str(info.get("dtype", "torch.float32")).replace("torch.", "")
        return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dtype, dtype)

    @property
    def provider(self) -> str:
        info = self.backend.info
        return str(info.get("provider") or f"torch-{info.get('device', 'cpu')}")


def _load(variant: Variant, cfg: BenchConfig) -> tuple[PolicyBackend, float]:
    options: dict[str, Any] = {"providers": cfg.providers} if variant.backend == "runtime" else {}
    start = time.perf_counter()
    backend = make_backend(variant.backend, variant.source.path, num_threads=cfg.threads, **options)
    return backend, time.perf_counter() - start


def time_variant(variant: Variant, observations: Sequence[tuple[np.ndarray, str]], cfg: BenchConfig) -> VariantRun:
    """Load the variant and time `cfg.steps` control-loop steps after `cfg.warmup` untimed ones;
    memory is the peak from before the load to the end of the loop."""
    with PeakMemory() as mem:
        backend, load_s = _load(variant, cfg)
        report = time_policy(backend.act, observations, warmup=cfg.warmup, steps=cfg.steps,
                             target_rates=cfg.target_rates, backend=variant.label, info=backend.info)
    return VariantRun(variant, backend, report, mem.window, load_s)


REWARM_CALLS = 2  # untimed calls per block: refill the caches another variant's block evicted


def time_interleaved(variants: Sequence[Variant], observations: Sequence[tuple[np.ndarray, str]],
                     cfg: BenchConfig) -> list[VariantRun]:
    """All variants loaded (memory: load + warm-up window each), then `cfg.rounds` blocks per
    variant in turn, `cfg.steps` timed steps in all, each block after REWARM_CALLS untimed calls."""
    loaded = []
    for variant in variants:
        with PeakMemory() as mem:
            backend, load_s = _load(variant, cfg)
            for image, instruction in itertools.islice(itertools.cycle(observations), cfg.warmup):
                backend.act(image, instruction)
        loaded.append((variant, backend, mem.window, load_s, ControlLoopTimer(cfg.target_rates),
                       itertools.cycle(observations)))
    blocks = [cfg.steps // cfg.rounds + (r < cfg.steps % cfg.rounds) for r in range(cfg.rounds)]
    for steps in blocks:
        for _, backend, _, _, timer, feed in loaded:
            for _ in range(REWARM_CALLS):
                backend.act(*next(feed))
            for _ in range(steps):
                timer.measure(backend.act, *next(feed))
            timer.end_block()
    return [VariantRun(v, b, t.report(v.label, warmup=cfg.warmup, info={**b.info, "rounds": cfg.rounds}), m, s)
            for v, b, m, s, t, _ in loaded]


def variant_costs(run: VariantRun, prompt_tokens: int, threads: int,
                  cached_prefix_tokens: int = 0) -> tuple[CostBreakdown, dict[str, int], str]:
    """(costs of one action, IO tensors per graph, where the costs come from). A runtime variant
    whose prefix cache is on prefills `cached_prefix_tokens` fewer tokens in most of its acts."""
    source = run.variant.source
    tokenizer, prompt, _ = source.contract()
    if source.kind == "artifact":
        from rt2edge.artifact import load_manifest

        manifest = load_manifest(source.path, verify=False)
        cached = cached_prefix_tokens if run.backend.info.get("prefix_cache_size") else 0
        stages, tensors = artifact_stage_costs(source.path, manifest, prompt_tokens, threads, cached)
        model = manifest.model
        full_kv = model.num_layers * 2 * model.num_kv_heads * model.head_dim * 4 * (
            prompt_tokens + tokenizer.tokens_per_action)
        costs = CostBreakdown(model=run.variant.label, precision=compute_class(manifest.precision),
                              vision_precision=graph_precision(manifest, "vision"),
                              text_tokens=prompt_tokens - prompt.num_image_tokens, prompt_tokens=prompt_tokens,
                              head="action", head_rows=tokenizer.n_bins,
                              resident_bytes=float(source.size_bytes() + full_kv), stages=stages)
        return costs, tensors, "onnx"
    hf_config = source.hf_config()
    costs = checkpoint_stage_costs(hf_config, tokenizer.tokens_per_action, tokenizer.n_bins,
                                   prompt_tokens - prompt.num_image_tokens, run.precision, head="full")
    costs.model = run.variant.label
    return costs, {}, "config"


def measured_stage_medians(timing: TimingReport) -> dict[str, float | None]:
    return {name: stats.p50_s for name, stats in timing.stages.items()}


def variant_roofline(run: VariantRun, costs: CostBreakdown, tensors: dict[str, int], cost_source: str,
                     machine: MachineProfile, bandwidth_at: BandwidthAtSize, run_overhead: RunOverhead,
                     torch_op_us: float | None) -> dict[str, Any]:
    device = machine.as_device()
    if cost_source == "onnx":
        overhead = OverheadModel(machine.op_overhead_us, run_overhead,
                                 "nodes of ONNX Runtime's optimized graphs (measured)")
    else:
        overhead = OverheadModel(torch_op_us or 0.0, None,
                                 "unfused per-layer op count of bench/costs.py (an estimate); "
                                 "per-op cost of a tiny eager torch op (measured)")
    bounds = stage_bounds(costs.stages, measured_stage_medians(run.timing), device.peak_flops, bandwidth_at, overhead,
                          tensors)
    return {"cost_source": cost_source, "kernels_source": overhead.kernels_source,
            "per_op_us": overhead.per_op_us,
            "session_run_overhead": None if overhead.run is None else overhead.run.to_dict(),
            "prompt_tokens": costs.prompt_tokens, "head_rows": costs.head_rows,
            "stages": {name: b.to_dict() for name, b in bounds.items()},
            "total": roofline_summary(bounds)}


def projection_costs(run: VariantRun, costs: CostBreakdown) -> tuple[CostBreakdown, str]:
    """The costs to project onto a Jetson: an artifact's stages with the kernel counts of an
    optimized stack (ONNX Runtime's CPU node count measures this machine's runtime, not TensorRT's
    fused graph), so a model projects the same whichever backend it was benched with."""
    source = run.variant.source
    if source.kind != "artifact":
        return costs, "bench/costs.py per-layer convention (config)"
    from rt2edge.artifact import load_manifest

    kernels = convention_kernels(source.path, load_manifest(source.path, verify=False))
    stages = [replace(s, kernels=kernels["vision"] or s.kernels) if s.stage == "vision"
              else replace(s, kernels=kernels["decoder"]) for s in costs.stages]
    note = "bench/costs.py per-layer convention (layers from the manifest and the vision graph)"
    return replace(costs, stages=stages), note


def variant_projection(run: VariantRun, costs: CostBreakdown, devices: Sequence[str] | None) -> list[dict[str, Any]]:
    from bench.projection import project_devices

    projected, kernels_source = projection_costs(run, costs)
    return [{**p.to_dict(), "kernels_source": kernels_source} for p in project_devices(projected, devices)]


def timing_dict(run: VariantRun) -> dict[str, Any]:
    data = run.timing.to_dict()
    data["info"] = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
                    for k, v in data["info"].items()}
    return data
