"""Per-stage clocks inside HF `generate()`, from module hooks (no change to the model or to HF).

generate() is one call; to compare it stage by stage with the runtime (preprocess, vision,
prefill, decode steps, postprocess) the hooks timestamp the modules a VLM family declares in
`parameter_groups` (rt2edge.models.families):

  vision   pre-hook of the vision tower -> hook of the projector      (runs once, on the prompt)
  run k    pre-hook of the language model -> hook of the LM head      (k = 0 prefill, then decode)
  overhead generate() time outside those: logits processors, cache and stopping bookkeeping

A CUDA model is synchronized at each timestamp, so a stage is charged for its own kernels.
Hooks cost ~1 us each; the eager and hf-generate backends always carry them, so their ratios are
unaffected.
"""

from __future__ import annotations

import time
from typing import Any


class GenerateStageClock:
    def __init__(self, family: Any, model: Any):
        import torch

        groups = family.parameter_groups(model)
        device = next(model.parameters()).device
        self._sync = torch.cuda.synchronize if device.type == "cuda" else None
        self.vision_s = 0.0
        self.runs: list[float] = []
        self._vision_start: float | None = None
        self._run_start: float | None = None
        self._handles = [
            groups["vision"].register_forward_pre_hook(self._start_vision),
            groups["projector"].register_forward_hook(self._end_vision),
            groups["language"].register_forward_pre_hook(self._start_run),
            groups["head"].register_forward_hook(self._end_run),
        ]

    def _now(self) -> float:
        if self._sync is not None:
            self._sync()
        return time.perf_counter()

    def _start_vision(self, *_: Any) -> None:
        self._vision_start = self._now()

    def _end_vision(self, *_: Any) -> None:
        if self._vision_start is not None:
            self.vision_s += self._now() - self._vision_start
            self._vision_start = None

    def _start_run(self, *_: Any) -> None:
        self._run_start = self._now()

    def _end_run(self, *_: Any) -> None:
        if self._run_start is not None:
            self.runs.append(self._now() - self._run_start)
            self._run_start = None

    def reset(self) -> None:
        self.vision_s, self.runs = 0.0, []
        self._vision_start = self._run_start = None

    def stages(self, generate_s: float) -> tuple[dict[str, float], tuple[float, ...]]:
        """(stage seconds, decode-step seconds) of the generate() call that just ended."""
        prefill = self.runs[0] if self.runs else 0.0
        steps = tuple(self.runs[1:])
        timing = {"vision": self.vision_s, "prefill": prefill, "decode": float(sum(steps))}
        timing["overhead"] = max(0.0, generate_s - self.vision_s - prefill - timing["decode"])
        return timing, steps

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def torch_op_overhead_us(threads: int = 1, ops: int = 200, reps: int = 5) -> float:
    """Microseconds per tiny eager torch op (dispatch + allocation), best of `reps`: the eager
    backends' analogue of a kernel launch, for the overhead term of their roofline."""
    import torch

    torch.set_num_threads(threads)  # process-wide, as the torch backends set it
    x = torch.zeros(16)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(reps + 1):
            y = x
            t0 = time.perf_counter()
            for _ in range(ops):
                y = y + 1.0
            best = min(best, time.perf_counter() - t0)
    return best / ops * 1e6
