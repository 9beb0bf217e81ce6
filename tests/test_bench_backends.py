"""Benchmark backends (runtime artifact, eager torch, HF generate baseline) and the machine probe."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.backends import BACKENDS, make_backend
from bench.timing import time_policy
from rt2edge.errors import ConfigError

INSTRUCTION = "pick up the red block"


def _observations(size: int, n: int = 2):
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), INSTRUCTION) for _ in range(n)]


def test_runtime_backend_reports_stages_and_decode_steps(tmp_path):
    from artifact_factory import make_artifact

    root, _ = make_artifact(tmp_path)
    backend = make_backend("runtime", root, num_threads=1)
    assert backend.info["provider"] == "CPUExecutionProvider" and backend.info["precision"] == "fp32"
    report = time_policy(backend.act, _observations(32), warmup=1, steps=4, backend=backend.name,
                         info=backend.info)
    assert report.steps == 4 and report.safe_fallbacks == 0
    assert {"vision", "prefill", "decode", "total"} <= set(report.stages)
    assert report.decode_step.count == 4 * 7  # 8 tokens per action: prefill + 7 decode runs
    assert report.stages["total"].p50_s <= report.latency.p50_s
    json.dumps(report.to_dict())


@pytest.fixture(scope="module")
def student():
    from rt2edge.models import build_preset

    return build_preset("student-s")


def test_eager_and_hf_generate_agree_on_the_tokens(student):
    eager = make_backend("eager", student, num_threads=1)
    baseline = make_backend("hf-generate", student, num_threads=1)
    image, _ = _observations(64, 1)[0]
    expected = student.predict_action_tokens(image, INSTRUCTION)[0]
    for backend in (eager, baseline):
        result = backend.act(image, INSTRUCTION)
        np.testing.assert_array_equal(result.tokens, expected)
        assert set(result.timing) == {"preprocess", "vision", "prefill", "decode", "overhead", "postprocess",
                                      "generate", "total"}
        assert result.timing["total"] >= result.timing["generate"]
        # The hooks split generate() into its stages without losing or double-counting time.
        parts = sum(result.timing[k] for k in ("vision", "prefill", "decode", "overhead"))
        assert parts == pytest.approx(result.timing["generate"], rel=1e-6)
        assert result.timing["vision"] > 0 and result.timing["prefill"] > 0
        assert len(result.decode_steps) == student.action_tokenizer.tokens_per_action - 1
        np.testing.assert_allclose(result.values, student.action_tokenizer.decode(expected[None])[0])
    report = time_policy(baseline.act, _observations(64), warmup=1, steps=2, backend=baseline.name)
    assert report.stages["generate"].count == 2 and report.info == {}


@pytest.mark.parametrize("instruction_first", [False, True])
def test_hf_processor_builds_the_policy_prompt(student, instruction_first):
    import dataclasses

    from bench.backends import build_processor

    original = student.prompt
    student.prompt = dataclasses.replace(original, instruction_first=instruction_first)
    try:
        processor, text = build_processor(student)
        image, _ = _observations(64, 1)[0]
        inputs = processor(images=image, text=text(INSTRUCTION), return_tensors="pt")
        ours = student.encode_observations(image, INSTRUCTION)
    finally:
        student.prompt = original
    assert inputs["input_ids"].tolist() == ours["input_ids"].tolist()


def test_unknown_backend_and_bad_threads():
    assert {"runtime", "eager", "hf-generate"} <= set(BACKENDS)
    with pytest.raises(ConfigError, match="unknown backend 'tflite'"):
        make_backend("tflite", "x")
    with pytest.raises(ConfigError, match="num_threads"):
        make_backend("runtime", "x", num_threads=0)


def test_machine_probe_is_quick_and_positive():
    from bench.machine import measure_machine

    m = measure_machine(threads=1, budget_s=1.0, buffer_mb=16, gemm_n=128, chain_nodes=20)
    assert m.seconds < 5.0
    for value in (m.copy_bandwidth_gbs, m.read_bandwidth_gbs, m.ort_gemm_gflops, m.numpy_gemm_gflops,
                  m.op_overhead_us, m.ort_int8_gops):
        assert value > 0
    device = m.as_device()
    assert device.peak_flops("fp32") == pytest.approx(m.ort_gemm_gflops * 1e9)
    # int8 stages are bounded by the measured MatMulInteger rate, not the fp32 one
    assert device.peak_flops("int8") == pytest.approx(m.ort_int8_gops * 1e9)
    assert device.int8_tops.status == "measured" and device.fp16_tflops.status == "estimate"
    assert 0.1 < m.ort_int8_gops / m.ort_gemm_gflops < 20  # same units: a GOP/s vs TOP/s slip fails
    # a report written before the int8 probe: int8 falls back to the fp32 rate, as an estimate
    old = replace(m, ort_int8_gops=0.0).as_device()
    assert old.peak_flops("int8") == old.peak_flops("fp32") and old.int8_tops.status == "estimate"
    json.dumps(m.to_dict())
    with pytest.raises(ConfigError, match="threads"):
        measure_machine(threads=0)


def test_bench_core_imports_no_torch():
    """The cost model, projection, timing and the runtime backend stay usable on a robot."""
    code = ("import sys, bench, bench.costs, bench.projection, bench.calibration, bench.timing, "
            "bench.machine, bench.onnx_costs, bench.backends, bench.devices, bench.pipeline, "
            "bench.compare, bench.render_html, bench.render_md, bench.fidelity, rt2edge.commands.bench; "
            "bench.comparison_table(); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
