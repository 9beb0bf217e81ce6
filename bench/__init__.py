"""rt2edge stage: bench (see DESIGN.md) — control frequency, roofline cost model, Jetson projection.

    from bench import BenchConfig, run, compare_reports, load_report
    path = run(BenchConfig(sources=["runs/ckpt", "runs/artifact"], out="runs/bench"))  # bench.json/.md/.html
    compare_reports(load_report("old/bench.json"), load_report(path), threshold=0.1).regressed

    from bench import openvla_7b, vla_costs, project_devices, comparison_table
    costs = vla_costs(openvla_7b(), "q4f16_ft", vision_precision="fp16", head="full")
    for p in project_devices(costs): print(p.device_name, f"{p.hz:.2f} Hz (estimate)")

    from bench import make_backend, time_policy, measure_machine
    backend = make_backend("runtime", "artifacts/student-s")
    report = time_policy(backend.act, observations, warmup=5, steps=100)

  architecture.py  VLASpec from a HF / OpenVLA config          costs.py        FLOPs + bytes per stage
  precision.py     bytes per weight (fp32 ... int4 + scales)    onnx_costs.py   the same, from an ONNX graph
  devices.toml/.py Jetson profiles, every number sourced        projection.py   roofline latency per device
  calibration.*    the fixed efficiency factor + published      machine.py      this machine's roofline
                   OpenVLA-7B comparison                        timing.py       control-loop statistics
  backends.py      runtime / eager torch / HF generate() adapters
  config.py        BenchConfig                                  pipeline.py     run(config): the suite
  sources.py       checkpoint / artifact folders, variants      variants.py     one variant: time, cost, bound
  observations.py  simulator frames for the loop                roofline.py     per-stage bound vs measured
  overheads.py     working-set bandwidth, session.run cost      fidelity.py     agreement, action error, success
  memory.py        per-variant peak RSS                         torch_stages.py stage clocks inside generate()
  report.py        schema, JSON, atomic writes                  compare.py      regressions between reports
  tables.py / figures.py / plots.py / render_md.py / render_html.py   pages rendered from the JSON

Names resolve on first use, so `import bench` pulls in neither torch nor onnx.
"""

from __future__ import annotations

from rt2edge.lazy import lazy_getattr

_EXPORTS = {
    "VLASpec": "bench.architecture", "spec_from_config": "bench.architecture",
    "spec_from_policy": "bench.architecture", "openvla_7b": "bench.architecture",
    "Precision": "bench.precision", "PRECISIONS": "bench.precision", "get_precision": "bench.precision",
    "StageCost": "bench.costs", "CostBreakdown": "bench.costs", "vla_costs": "bench.costs",
    "GraphCost": "bench.onnx_costs", "onnx_graph_cost": "bench.onnx_costs",
    "DeviceProfile": "bench.devices", "load_devices": "bench.devices", "get_device": "bench.devices",
    "Efficiency": "bench.projection", "Projection": "bench.projection", "project": "bench.projection",
    "project_devices": "bench.projection", "roofline_fractions": "bench.projection",
    "load_calibration": "bench.calibration", "comparison_table": "bench.calibration",
    "cross_validation": "bench.calibration", "fit_efficiency": "bench.calibration",
    "MachineProfile": "bench.machine", "measure_machine": "bench.machine",
    "ControlLoopTimer": "bench.timing", "LatencyStats": "bench.timing", "TimingReport": "bench.timing",
    "time_policy": "bench.timing",
    "PolicyBackend": "bench.backends", "make_backend": "bench.backends", "register_backend": "bench.backends",
    "BenchConfig": "bench.config", "run": "bench.pipeline",
    "load_report": "bench.report", "write_report": "bench.report",
    "compare_reports": "bench.compare", "Comparison": "bench.compare",
    "render_html": "bench.render_html", "render_markdown": "bench.render_md",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr("bench", _EXPORTS)
