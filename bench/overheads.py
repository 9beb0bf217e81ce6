"""Machine probes a roofline of *small* models needs next to bench/machine.py's big-buffer ones.

bench/machine.py measures what a large model sees: DRAM bandwidth (a buffer 4x an L3), a big
GEMM, a chain of tiny ops. A 1-10 MB policy is different on two counts, both measured here:

  working-set bandwidth  its weights stay in the last-level cache between decoder runs, so the
                         bandwidth that bounds a stage is the copy bandwidth at that stage's own
                         byte count, not DRAM's (measured per size: np.copyto of size/2 -> size/2,
                         bytes = read + write as in machine.py)
  session.run overhead   every decoder run is one ORT `session.run`: a fixed cost plus a cost per
                         input/output tensor (binding, allocation of outputs), paid 8x per action;
                         measured on Identity graphs with 1 and 17 inputs/outputs, linear fit

These are costs a runtime cannot avoid by better kernels at batch 1, so the overhead-aware
roofline (bench/roofline.py) adds them to the byte/FLOP bound instead of calling them inefficiency.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.machine import best_time, probe_clock
from rt2edge.optional import require

MIN_WORKING_SET = 1 << 16


@dataclass(frozen=True)
class RunOverhead:
    fixed_us: float  # one session.run of a 1-in/1-out Identity graph
    per_tensor_us: float  # each further input + output pair, per run

    def seconds(self, runs: int, tensors: int) -> float:
        """Overhead of `runs` session.run calls, each binding `tensors` inputs + outputs."""
        return runs * (self.fixed_us + self.per_tensor_us * max(0, tensors - 2) / 2) * 1e-6

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _size_class(nbytes: float) -> int:
    """Power of two >= nbytes (and >= 64 KiB): sizes that share a cache level share a probe."""
    return max(MIN_WORKING_SET, 1 << int(np.ceil(np.log2(max(nbytes, 1.0)))))


class BandwidthAtSize:
    """Copy bandwidth (bytes/s) at a working-set size, measured once per size class."""

    def __init__(self, budget_s: float = 0.1):
        self.budget_s = budget_s
        self.measured: dict[int, float] = {}

    def __call__(self, nbytes: float) -> float:
        size = _size_class(nbytes)
        if size not in self.measured:
            half = size // 8  # float32 elements in size / 2 bytes
            src, dst = np.ones(half, np.float32), np.empty(half, np.float32)
            inner = max(1, int(4e6 // size))  # >= ~4 MB copied per timing: timer resolution
            def copy() -> None:
                for _ in range(inner):
                    np.copyto(dst, src)
            # numpy's copy is single-threaded: CPU time, immune to other processes' load
            seconds = best_time(copy, 30, time.perf_counter() + self.budget_s, probe_clock(1)[0],
                                min_reps=10) / inner
            self.measured[size] = size / seconds
        return self.measured[size]

    def to_dict(self) -> dict[str, float]:
        return {str(k): v / 1e9 for k, v in sorted(self.measured.items())}  # GB/s per size class


def _identity_model(tensors: int) -> bytes:
    require("onnx", extra="toolkit", purpose="building the session.run overhead probe")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Identity", [f"x{i}"], [f"y{i}"]) for i in range(tensors)]
    graph = helper.make_graph(
        nodes, "identity", [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1, 16]) for i in range(tensors)],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 16]) for i in range(tensors)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def measure_run_overhead(threads: int = 1, many: int = 17, budget_s: float = 0.4,
                         op_overhead_us: float = 0.0) -> RunOverhead:
    """Fixed and per-tensor cost of ORT `session.run` on the CPU EP (Identity nodes' own cost,
    `op_overhead_us` each, taken out)."""
    ort = require("onnxruntime", extra="cpu", purpose="measuring session.run overhead")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the runtime
    times = {}
    clock = probe_clock(threads)[0]
    for n in (1, many):
        session = ort.InferenceSession(_identity_model(n), opts, providers=["CPUExecutionProvider"])
        feeds = {f"x{i}": np.zeros((1, 16), np.float32) for i in range(n)}
        times[n] = best_time(lambda: session.run(None, feeds), 200, time.perf_counter() + budget_s / 2, clock) * 1e6
        times[n] -= n * op_overhead_us
    per_pair = max(0.0, (times[many] - times[1]) / (many - 1))
    return RunOverhead(fixed_us=max(times[1], 0.0), per_tensor_us=per_pair)
