"""What the runtime's prefix cache buys: one artifact, `act` with and without it, in one run.

An instruction-first prompt puts the text before the image; in a causal decoder the text's keys and
values depend on the text alone, so `Policy` computes them once per instruction and later frames
prefill only the image tokens (`Policy.load(..., prefix_cache_size=0)` turns that off). Both
policies act on the bench's control-loop stream (bench.observations: consecutive expert steps,
a new instruction every 3 frames) in interleaved blocks, alternating which goes first; per act it
records this thread's CPU time (ONNX Runtime with 1 intra-op thread runs on it, so another job on
the machine does not inflate it; with --threads > 1 the other threads' time is not counted) and
the wall time of each stage.

    python scripts/prefix_cache_speed.py ARTIFACT [--acts 600] [--threads 1]

An artifact whose prompt is not instruction-first gets no cache (both columns are the same path).
"""

from __future__ import annotations

import json
import time

import numpy as np

from act_loop_args import parse_act_loop_args
from bench.observations import simulator_observations
from rt2edge.runtime import Policy

BLOCK = 20


def main() -> None:
    args = parse_act_loop_args(__doc__, "timed acts per policy", min_acts=BLOCK)
    policies = {name: Policy.load(args.artifact, providers=["cpu"], num_threads=args.threads, warmup=5,
                                  prefix_cache_size=size) for name, size in (("cache", 2), ("whole", 0))}
    frames = simulator_observations(args.frames, policies["cache"].preprocessing.size, seed=0)
    cpu: dict[str, list[float]] = {name: [] for name in policies}
    stages: dict[str, dict[str, list[float]]] = {name: {} for name in policies}
    for block in range(args.acts // BLOCK):
        order = list(policies) if block % 2 == 0 else list(policies)[::-1]
        for name in order:
            policy = policies[name]
            for i in range(BLOCK):
                image, text = frames[(block * BLOCK + i) % len(frames)]
                start = time.thread_time()
                action = policy.act(image, text)
                cpu[name].append(time.thread_time() - start)
                if action.safe_fallback:
                    raise SystemExit(f"{name}: safe action ({action.reason})")
                for stage, seconds in action.timing.items():
                    stages[name].setdefault(stage, []).append(seconds)
    summary = {
        "artifact": str(args.artifact), "threads": args.threads, "acts": len(cpu["cache"]),
        "instruction_first": policies["cache"].prompt.instruction_first,
        "prefix_cache_size": policies["cache"].prefix_cache_size,
        **{name: {"cpu_ms_p50": 1e3 * float(np.median(cpu[name])),
                  **{f"{stage}_ms_p50": 1e3 * float(np.median(v)) for stage, v in stages[name].items()}}
           for name in policies},
    }
    summary["speedup_cpu_p50"] = summary["whole"]["cpu_ms_p50"] / summary["cache"]["cpu_ms_p50"]
    summary["speedup_prefill_p50"] = summary["whole"]["prefill_ms_p50"] / summary["cache"]["prefill_ms_p50"]
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
