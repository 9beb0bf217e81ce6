"""`bench.run(config) -> report path`: the benchmark stage's one entry function.

    from bench import BenchConfig, run
    path = run(BenchConfig(sources=["runs/ckpt", "runs/artifact"], out="runs/bench"))

Order matters for honest numbers: the machine's roofline is probed first (nothing loaded yet),
then each variant is loaded, timed, costed and scored on its own, and released before the next
(its peak memory is its own, bench/memory.py). The reference policy, when given, runs once up
front on the same observations.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.backends import make_backend
from bench.config import BASELINE_BACKEND, CONFIG_FILE, BenchConfig
from bench.fidelity import Outputs, closed_loop_success, fidelity
from bench.machine import measure_machine
from bench.observations import describe, simulator_observations
from bench.overheads import BandwidthAtSize, measure_run_overhead
from bench.report import assemble, write_report
from bench.sources import Source, plan_variants, resolve_sources
from bench.variants import (VariantRun, time_interleaved, time_variant, timing_dict, variant_costs,
                            variant_projection, variant_roofline)
from rt2edge.atomic import atomic_write_json

log = logging.getLogger("rt2edge.bench")


def _reference_backend(source: Source, cfg: BenchConfig):
    backend = "runtime" if source.kind == "artifact" else "eager"
    options = {"providers": cfg.providers} if backend == "runtime" else {}
    return make_backend(backend, source.path, num_threads=cfg.threads, **options)


@dataclass
class _Context:
    """What every variant is measured against: this machine's roofline and the reference."""

    machine: Any
    run_overhead: Any
    bandwidth_at: BandwidthAtSize
    torch_op_us: float | None
    observations: list
    reference: Outputs | None = None
    reference_label: str | None = None
    continuous_dims: int = 0
    reference_episodes: list | None = None  # its closed-loop episodes: variants are paired with them


def _machine(cfg: BenchConfig, any_checkpoint: bool) -> tuple[_Context, dict[str, Any]]:
    machine = measure_machine(threads=cfg.threads, budget_s=cfg.machine_budget_s)
    run_overhead = measure_run_overhead(cfg.threads, op_overhead_us=machine.op_overhead_us)
    torch_op_us = None
    if any_checkpoint:
        import rt2edge.models.policy  # noqa: F401  (transformers: imported outside every memory window)
        from bench.torch_stages import torch_op_overhead_us

        torch_op_us = torch_op_overhead_us(threads=cfg.threads)
    data = {**machine.to_dict(), "session_run_overhead": run_overhead.to_dict(),
            "torch_op_overhead_us": torch_op_us}
    return _Context(machine, run_overhead, BandwidthAtSize(), torch_op_us, []), data


def _reference(source: Source, cfg: BenchConfig, ctx: _Context) -> dict[str, Any]:
    """Run the reference once on the observations (and in closed loop); fills ctx.reference."""
    log.info("bench: reference %s", source.path)
    backend = _reference_backend(source, cfg)
    ctx.reference = Outputs.of(backend, ctx.observations)
    ctx.continuous_dims = source.contract()[0].num_dims
    ctx.reference_label = f"{source.name}/{backend.name}"
    success = None
    if cfg.episodes:
        success, ctx.reference_episodes = closed_loop_success(backend, ctx.reference_label, cfg.episodes,
                                                              cfg.seed, cfg.max_episode_steps)
    return {"label": ctx.reference_label, "source": str(source.path), "source_kind": source.kind,
            "backend": backend.name, "success": success}


def _analyse(run_: VariantRun, cfg: BenchConfig, ctx: _Context, interleaved: bool) -> dict[str, Any]:
    """Everything the report says about one timed variant."""
    variant = run_.variant
    texts = [text for _, text in ctx.observations]
    prompt_tokens = variant.source.prompt_tokens(texts)
    costs, tensors, cost_source = variant_costs(run_, prompt_tokens, cfg.threads,
                                                variant.source.tokens_before_image(texts))
    entry: dict[str, Any] = {
        "label": variant.label, "source": str(variant.source.path), "source_kind": variant.source.kind,
        "backend": variant.backend, "provider": run_.provider, "threads": cfg.threads,
        "precision": run_.precision, "size_bytes": variant.source.size_bytes(), "load_s": run_.load_s,
        "prefix_cache_size": run_.backend.info.get("prefix_cache_size"),  # runtime only; 0 = off
        "timing": timing_dict(run_),
        "memory": {**run_.memory.to_dict(),
                   "window": "load + warm-up" if interleaved else "load + warm-up + timed loop"},
        "roofline": variant_roofline(run_, costs, tensors, cost_source, ctx.machine, ctx.bandwidth_at,
                                     ctx.run_overhead, ctx.torch_op_us),
        "projection": variant_projection(run_, costs, cfg.devices), "fidelity": None, "success": None}
    if ctx.reference is not None:
        entry["fidelity"] = fidelity(Outputs.of(run_.backend, ctx.observations), ctx.reference,
                                     ctx.reference_label, ctx.continuous_dims).to_dict()
    if cfg.episodes:
        entry["success"] = closed_loop_success(run_.backend, variant.label, cfg.episodes, cfg.seed,
                                               cfg.max_episode_steps, ctx.reference_episodes)[0]
    return entry


def run(cfg: BenchConfig) -> Path:
    """Bench every variant of `cfg.sources`; write bench.json / .md / .html into `cfg.out`."""
    sources = resolve_sources(cfg.sources)  # a missing or unknown folder fails before any work
    reference = resolve_sources([cfg.reference])[0] if cfg.reference is not None else None
    variants = plan_variants(sources, cfg.backends)
    ctx, machine_data = _machine(cfg, any(v.source.kind == "checkpoint" for v in variants))
    ctx.observations = simulator_observations(cfg.frames, cfg.image_size, cfg.seed)
    ref_data = _reference(reference, cfg, ctx) if reference is not None else None

    results: list[dict[str, Any]] = []
    # rounds > 1: every variant timed first, in interleaved blocks; else each alone, in turn.
    timed: list[VariantRun | None] | None = (time_interleaved(variants, ctx.observations, cfg)
                                             if cfg.rounds > 1 else None)
    for index, variant in enumerate(variants):
        log.info("bench: %s", variant.label)
        if timed is not None:
            run_, timed[index] = timed[index], None  # released after its analysis, as sequentially
        else:
            run_ = time_variant(variant, ctx.observations, cfg)
        results.append(_analyse(run_, cfg, ctx, interleaved=timed is not None))
        del run_
        gc.collect()  # the next variant's peak memory starts from a clean slate

    machine_data["working_set_bandwidth_gbs"] = ctx.bandwidth_at.to_dict()
    report = assemble(cfg.to_dict(), machine_data, describe(ctx.observations, cfg.image_size, cfg.seed),
                      results, BASELINE_BACKEND, ref_data)
    path = write_report(cfg.out, report)
    atomic_write_json(Path(cfg.out) / CONFIG_FILE, cfg.to_dict())
    return path
