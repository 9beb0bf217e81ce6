"""Per-stage roofline of a variant: hand-counted graph costs, the bound arithmetic, the probes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from bench.costs import StageCost
from bench.overheads import BandwidthAtSize, RunOverhead, measure_run_overhead
from bench.roofline import (OverheadModel, artifact_stage_costs, compute_class, convention_kernels,
                            graph_compute, ort_kernel_count, roofline_summary, stage_bounds)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from artifact_factory import make_artifact

    from rt2edge.artifact import load_manifest

    root, _ = make_artifact(tmp_path_factory.mktemp("roofline") / "a", hidden=32, num_layers=2,
                            num_kv_heads=2, head_dim=8, image_size=16, num_image_tokens=4)
    return root, load_manifest(root)


def test_artifact_costs_match_a_hand_count(tiny):
    root, manifest = tiny
    costs, tensors = artifact_stage_costs(root, manifest, prompt_tokens=20)
    by = {c.stage: c for c in costs}
    assert list(by) == ["vision", "prefill"] + [f"decode.{k}" for k in range(1, 8)]  # embed is cached
    # per layer and token: k and v projections 32x16 each, output 16x32 -> 1536 MACs; 2 layers;
    # the 256-row action head runs on the last position only (32 x 256 MACs).
    head = 32 * 256
    assert by["prefill"].flops == 2 * (20 * 2 * 1536 + head)
    assert by["decode.3"].flops == 2 * (2 * 1536 + head)
    assert by["vision"].flops == 2 * (3 * 16 * 16) * (4 * 32)
    # KV: 2 layers x (K, V) x 2 heads x 8 dims x 4 bytes = 256 bytes per position; a decode step
    # reads the past and writes past + 1 (the graph concatenates).
    assert by["prefill"].kv_bytes == 256 * 20
    assert by["decode.1"].kv_bytes == 256 * (20 + 21)
    assert by["decode.7"].kv_bytes == 256 * (26 + 27)
    assert by["decode.1"].weight_bytes == by["prefill"].weight_bytes >= (3 * 2 * 512 + head) * 4
    # inputs: embeds, past_length, prefix_length + 2 layers x (K, V); outputs: logits, bin + 4 present
    assert tensors == {"vision": 2, "decoder": 3 + 4 + 2 + 4}
    raw = len(onnx.load(str(root / "decoder.onnx")).graph.node)
    assert 0 < ort_kernel_count(root / "decoder.onnx") == by["prefill"].kernels <= raw
    assert convention_kernels(root, manifest) == {"vision": None, "decoder": 2 * 16 + 3}  # no ViT here
    # With the runtime's prefix cache on, most acts prefill the prompt after 6 cached text tokens:
    # 14 new positions reading 6 cached ones; the decode steps are unchanged.
    cached = {c.stage: c for c in artifact_stage_costs(root, manifest, prompt_tokens=20, cached_prefix_tokens=6)[0]}
    assert (cached["prefill"].tokens, cached["prefill"].context) == (14, 20)
    assert cached["prefill"].flops == 2 * (14 * 2 * 1536 + head) and cached["prefill"].kv_bytes == 256 * (6 + 20)
    assert cached["decode.3"] == by["decode.3"]


def test_bounds_add_up_per_run():
    costs = [StageCost("vision", 4, 4, 2e9, 1e6, 0, 0, 10, "fp32"),        # compute-bound: 2e9 / 1e11
             StageCost("prefill", 20, 20, 1e8, 4e6, 1e5, 0, 50, "fp32"),
             StageCost("decode.1", 1, 21, 1e6, 4e6, 2e5, 0, 50, "fp32"),   # memory-bound: 4.2e6 / 1e10
             StageCost("decode.2", 1, 22, 1e6, 4e6, 3e5, 0, 50, "fp32")]
    overhead = OverheadModel(per_op_us=1.0, run=RunOverhead(fixed_us=5.0, per_tensor_us=1.0), kernels_source="test")
    measured = {"vision": 0.04, "prefill": 0.01, "decode": 0.004}
    bounds = stage_bounds(costs, measured, peak_flops=lambda unit: 1e11, bandwidth_at=lambda n: 1e10, overhead=overhead,
                          tensors={"vision": 2, "decoder": 12})
    assert set(bounds) == {"vision", "prefill", "decode"}
    v, d = bounds["vision"], bounds["decode"]
    assert v.limit == "compute" and v.bound_s == pytest.approx(0.02) and v.fraction == pytest.approx(0.5)
    assert d.runs == 2 and d.limit == "memory"
    assert d.bound_s == pytest.approx((4.2e6 + 4.3e6) / 1e10)
    # 2 runs x (50 kernels x 1 us + 5 us + 5 tensor pairs x 1 us)
    assert d.overhead_s == pytest.approx(2 * (50 + 5 + 5) * 1e-6)
    assert d.fraction_with_overhead == pytest.approx((d.bound_s + d.overhead_s) / 0.004)
    total = roofline_summary(bounds)
    assert total["measured_s"] == pytest.approx(0.054)
    assert total["fraction"] == pytest.approx(sum(b.bound_s for b in bounds.values()) / 0.054)


def test_each_stage_is_bounded_by_its_own_math_unit():
    """An int8 decoder next to an fp32 vision tower: each stage's compute bound uses the peak of
    the unit its matmuls run on (a single fp32 peak put int8 prefills "above" the roofline)."""
    costs = [StageCost("vision", 4, 4, 2e9, 1e6, 0, 0, 10, "fp32"),
             StageCost("prefill", 20, 20, 2e9, 1e6, 0, 0, 50, "int8")]
    peaks = {"fp32": 1e11, "int8": 4e11}
    bounds = stage_bounds(costs, {"vision": 0.04, "prefill": 0.01}, peaks.__getitem__, lambda n: 1e10,
                          OverheadModel(0.0, None, "none"))
    assert bounds["vision"].bound_s == pytest.approx(0.02) and bounds["vision"].peak_gflops == 100
    assert bounds["prefill"].bound_s == pytest.approx(0.005) and bounds["prefill"].peak_gflops == 400
    assert bounds["prefill"].fraction == pytest.approx(0.5)


def test_a_quantized_artifact_keeps_its_float_graphs_float():
    from types import SimpleNamespace

    def manifest(precision, graphs=None, source="fp32"):
        extra = {} if graphs is None else {"quantization": {"graphs": graphs},
                                          "provenance": {"source_precision": source}}
        return SimpleNamespace(precision=precision, extra=extra)

    deploy = manifest("int8-qdq", {"decoder": {}})  # vision kept (quantize keep_groups)
    assert graph_compute(deploy, "vision") == "fp32" and graph_compute(deploy, "decoder") == "int8"
    everything = manifest("int8-dynamic", {"vision": {}, "decoder": {}})
    assert graph_compute(everything, "vision") == "int8"
    assert graph_compute(manifest("fp16"), "vision") == "fp16"  # not quantized: its own precision
    assert graph_compute(manifest("int8-qdq", {"decoder": {}}, source="fp16"), "vision") == "fp16"


def test_a_stage_without_a_measurement_has_no_fraction():
    costs = [StageCost("prefill", 20, 20, 1e8, 4e6, 0, 0, 50, "fp32")]
    bounds = stage_bounds(costs, {}, lambda unit: 1e11, lambda n: 1e10, OverheadModel(0.0, None, "none"))
    assert bounds["prefill"].fraction is None and roofline_summary(bounds) == {}


def test_probes_are_positive_and_ordered():
    bw = BandwidthAtSize(budget_s=0.02)
    small, again = bw(3e5), bw(4e5)  # same size class (512 KiB): measured once
    assert small > 0 and small == again and len(bw.measured) == 1
    run = measure_run_overhead(budget_s=0.1)
    assert run.fixed_us > 0 and run.per_tensor_us >= 0
    assert run.seconds(2, 10) == pytest.approx(2 * (run.fixed_us + 4 * run.per_tensor_us) * 1e-6)
    assert [compute_class(p) for p in ("fp32", "fp16", "int8-dynamic", "int4", "bfloat16")] == \
        ["fp32", "fp16", "int8", "int4", "bf16"]


def test_peak_memory_is_per_window():
    from bench.memory import PeakMemory

    with PeakMemory() as mem:
        block = np.ones(40 * 2**20 // 8)  # 40 MiB, touched
        del block
    with PeakMemory() as quiet:
        pass
    if mem.window.method == "vmhwm-reset":  # Linux: the high-water mark is reset per window
        assert mem.window.rss_added_mb >= 30 and quiet.window.rss_added_mb < 10
    else:
        assert mem.window.peak_rss_mb > 0
