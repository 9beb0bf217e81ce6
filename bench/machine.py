"""Measure this machine's roofline in a few seconds: memory bandwidth, GEMM rate, per-op overhead.

A measured stage time means little alone ("prefill 3.1 ms"); against the machine's own roofline
it says how far from the hardware limit the runtime is ("prefill at 62 % of the bandwidth bound"),
which carries over to other machines far better than the raw number (gpt-fast reports achieved
bandwidth for the same reason). Measurements:

  copy bandwidth  np.copyto of a buffer 4x larger than a typical L3; bytes = read + write
                  (the STREAM "copy" convention, write-allocate traffic not counted)
  read bandwidth  np.sum over the same buffer (1 read stream)
  GEMM rate       ONNX Runtime CPU EP fp32 MatMul n x n x n with `threads` intra-op threads:
                  the engine that runs rt2edge artifacts; numpy's BLAS rate too (its thread
                  count is numpy's own, not `threads`)
  int8 GEMM rate  ONNX Runtime MatMulInteger uint8 x int8 -> int32, n x n x n: the unit int8
                  artifacts' matmuls run on (VNNI where the CPU has it; 3.9x the fp32 rate on
                  an EPYC); bounding int8 stages by the fp32 rate put them "above" the roofline
  per-op overhead ORT run of a chain of tiny Add nodes / number of nodes (the CPU EP's analogue of
                  a GPU kernel launch)

Best-of-N timings: the roofline is what the machine *can* do; on a shared machine the median is
noisy upwards. With one thread the single-threaded probes (copy, read, ORT GEMM, op chain) are
timed in process CPU time, not wall time: on a loaded machine a niced probe is preempted for
most of its wall time, and a wall-clock "peak" measured that way can be 30x too low (seen on a
2-core box next to a training job). Everything is bounded by `budget_s` of wall time.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from bench.devices import DeviceProfile, Figure
from rt2edge.errors import ConfigError
from rt2edge.optional import require


@dataclass(frozen=True)
class MachineProfile:
    cpu: str
    threads: int
    copy_bandwidth_gbs: float
    read_bandwidth_gbs: float
    ort_gemm_gflops: float
    numpy_gemm_gflops: float
    op_overhead_us: float
    buffer_mb: int
    gemm_n: int
    seconds: float  # wall time the measurement took
    clock: str = "wall"  # what the probes were timed with: "process-cpu" (1 thread) or "wall"
    ort_int8_gops: float = 0.0  # 0: not measured (reports written before the int8 probe)

    @property
    def bandwidth_gbs(self) -> float:
        """The bandwidth used for rooflines: the better of the two access patterns."""
        return max(self.copy_bandwidth_gbs, self.read_bandwidth_gbs)

    def as_device(self) -> DeviceProfile:
        """This machine as a DeviceProfile (ORT CPU: fp32 and int8 rates), so projections and roofline fractions
        work on it like on a Jetson. fp16 is not measured and gets the fp32 rate."""
        src = f"measured by bench.machine ({self.threads} thread(s), {self.cpu})"
        gemm = Figure(self.ort_gemm_gflops / 1e3, "measured", f"{src}: ORT fp32 MatMul {self.gemm_n}^3")
        untested = Figure(self.ort_gemm_gflops / 1e3, "estimate", "not measured: the fp32 ORT rate")
        int8 = (Figure(self.ort_int8_gops / 1e3, "measured", f"{src}: ORT MatMulInteger u8 x s8 {self.gemm_n}^3")
                if self.ort_int8_gops > 0 else untested)
        return DeviceProfile(
            key="this-machine", name=f"this machine ({self.cpu})", architecture=platform.machine(),
            power_mode="as found", memory_gb=Figure(_total_memory_gb(), "measured", src),
            memory_bandwidth_gbs=Figure(self.bandwidth_gbs, "measured", f"{src}: numpy copy / sum"),
            fp16_tflops=untested, int8_tops=int8, fp32_tflops=gemm,
            launch_overhead_us=Figure(max(self.op_overhead_us, 1e-3), "measured", f"{src}: ORT Add chain"))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bandwidth_gbs": self.bandwidth_gbs}


def _total_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 1.0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_time(fn: Callable[[], Any], reps: int, deadline: float,
              clock: Callable[[], float] = time.perf_counter, min_reps: int = 3) -> float:
    """Fastest of up to `reps` calls (after one untimed warm-up) timed with `clock`, stopping at
    `deadline` (wall, perf_counter) once `min_reps` were timed: a starved process still gets a
    few tries, one of which usually runs with warm caches."""
    fn()
    best = float("inf")
    for i in range(reps):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
        if i + 1 >= min_reps and time.perf_counter() > deadline:
            break
    return best


def probe_clock(threads: int) -> tuple[Callable[[], float], str]:
    """CPU time for single-threaded probes (immune to other processes' load), wall otherwise
    (CPU time sums every thread and would under-state a multi-threaded rate)."""
    return (time.process_time, "process-cpu") if threads == 1 else (time.perf_counter, "wall")


def _ort_session(model_bytes: bytes, threads: int, optimize: bool):
    ort = require("onnxruntime", extra="cpu", purpose="measuring the ONNX Runtime GEMM rate")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning threads burn the shared cores between runs (docs/artifact-format.md runtime notes).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _gemm_model(n: int, int8: bool = False) -> bytes:
    """x @ w with a constant n x n weight: fp32 MatMul, or MatMulInteger (uint8 activations x
    int8 weights, the pairing ONNX Runtime's quantizers emit) when `int8`."""
    require("onnx", extra="toolkit", purpose="building the GEMM probe graph")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (n, n)).astype(np.int8), "w")
        op, x_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
    else:
        weight = numpy_helper.from_array(rng.standard_normal((n, n), np.float32), "w")
        op, x_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", x_type, [n, n])],
                              [helper.make_tensor_value_info("y", y_type, [n, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def _add_chain_model(nodes: int) -> bytes:
    require("onnx", extra="toolkit", purpose="building the per-op overhead probe graph")
    from onnx import TensorProto, helper, numpy_helper

    one = numpy_helper.from_array(np.ones((1, 16), np.float32), "one")
    chain = [helper.make_node("Add", [f"t{i}", "one"], [f"t{i + 1}"]) for i in range(nodes)]
    graph = helper.make_graph(chain, "chain", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, [1, 16])], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def measure_machine(threads: int = 1, budget_s: float = 4.0, buffer_mb: int = 128, gemm_n: int = 768,
                    chain_nodes: int = 200) -> MachineProfile:
    """Measure bandwidth, GEMM rate and per-op overhead within about `budget_s` seconds."""
    if threads < 1:
        raise ConfigError("threads", f"must be >= 1, got {threads}")
    if budget_s <= 0 or buffer_mb < 8 or gemm_n < 64:
        raise ConfigError("measure_machine", "budget_s > 0, buffer_mb >= 8 and gemm_n >= 64 required")
    start = time.perf_counter()
    share = budget_s / 4  # four probes, each stops at its share of the budget
    clock, clock_name = probe_clock(threads)
    cpu = probe_clock(1)[0]  # numpy's copy and sum are single-threaded whatever `threads` is

    src = np.ones(buffer_mb * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    copy_s = best_time(lambda: np.copyto(dst, src), 8, time.perf_counter() + share, cpu)
    read_s = best_time(lambda: src.sum(), 8, time.perf_counter() + share, cpu)
    del src, dst

    x = np.random.default_rng(1).standard_normal((gemm_n, gemm_n), np.float32)
    session = _ort_session(_gemm_model(gemm_n), threads, optimize=True)
    ort_s = best_time(lambda: session.run(None, {"x": x}), 25, time.perf_counter() + share / 3, clock)
    x8 = np.random.default_rng(1).integers(0, 256, (gemm_n, gemm_n)).astype(np.uint8)
    session8 = _ort_session(_gemm_model(gemm_n, int8=True), threads, optimize=True)
    int8_s = best_time(lambda: session8.run(None, {"x": x8}), 25, time.perf_counter() + share / 3, clock)
    w = np.asarray(x.T, order="C")
    np_s = best_time(lambda: x @ w, 25, time.perf_counter() + share / 3, clock)  # BLAS: 1 thread under OMP=1

    chain = _ort_session(_add_chain_model(chain_nodes), threads, optimize=False)
    small = np.zeros((1, 16), np.float32)
    chain_s = best_time(lambda: chain.run(None, {"t0": small}), 20, time.perf_counter() + share, clock)

    flops = 2.0 * gemm_n ** 3
    nbytes = buffer_mb * 2**20
    return MachineProfile(
        cpu=_cpu_name(), threads=threads, copy_bandwidth_gbs=2 * nbytes / copy_s / 1e9,
        read_bandwidth_gbs=nbytes / read_s / 1e9, ort_gemm_gflops=flops / ort_s / 1e9,
        numpy_gemm_gflops=flops / np_s / 1e9, op_overhead_us=chain_s / chain_nodes * 1e6,
        buffer_mb=buffer_mb, gemm_n=gemm_n, seconds=time.perf_counter() - start, clock=clock_name,
        ort_int8_gops=flops / int8_s / 1e9)
