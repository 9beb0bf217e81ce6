"""AR vs parallel student-s: export both (random init), runtime Hz per act on the CPU EP, interleaved blocks.

Usage: python scripts/parallel_speed.py OUT_DIR THREADS ACTS  (the README figure: runs/parallel-bench 1 100)
"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
import export
from rt2edge.models import build_preset
from rt2edge.runtime import Policy
from rt2edge.sim import TabletopEnv

torch.set_num_threads(1)
root, threads, acts = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
arts = {}
for dec in ("autoregressive", "parallel"):
    ckpt, art = root / f"{dec}-ckpt", root / f"{dec}-art"
    if not (art / "manifest.json").exists():
        build_preset("student-s", decoding=dec).save_pretrained(ckpt)
        export.run(export.ExportConfig(checkpoint=ckpt, out=art, validate_frames=4, overwrite=True))
    arts[dec] = art
env, frames = TabletopEnv(image_size=64, split="train"), []
for ep in range(20):
    obs, _ = env.reset(seed=ep)
    frames.append((obs["image"], env.instruction))
policies = {d: Policy.load(a, providers=["cpu"], num_threads=threads, warmup=10) for d, a in arts.items()}
for d, p in policies.items():  # warm the text cache of every instruction, not timed
    for image, text in frames:
        p.act(image, text)
lat = {d: [] for d in policies}
cpu = {d: [] for d in policies}  # this thread's CPU time: ORT with 1 intra-op thread runs on it
stages = {d: [] for d in policies}
block = 10
for b in range(acts // block):
    for d in (list(policies) if b % 2 == 0 else list(policies)[::-1]):  # alternate who goes first
        p = policies[d]
        for i in range(block):
            image, text = frames[(b * block + i) % len(frames)]
            t, c = time.perf_counter(), time.thread_time()
            a = p.act(image, text)
            lat[d].append(time.perf_counter() - t)
            cpu[d].append(time.thread_time() - c)
            assert not a.safe_fallback
            stages[d].append(dict(a.timing))
out = {}
for d, xs in lat.items():
    xs = np.asarray(xs)
    out[d] = {"acts": len(xs), "hz": 1.0 / xs.mean(), "mean_ms": 1e3 * xs.mean(), "p50_ms": 1e3 * np.median(xs),
              "p90_ms": 1e3 * np.percentile(xs, 90), "min_ms": 1e3 * xs.min(), "hz_p50": 1.0 / np.median(xs),
              "cpu_ms_p50": 1e3 * np.median(cpu[d]), "hz_cpu_time": 1.0 / np.median(cpu[d]),
              "stage_p50_ms": {k: round(1e3 * float(np.median([s.get(k, 0.0) for s in stages[d]])), 3)
                               for k in ("preprocess", "embed", "vision", "prefill", "decode", "postprocess")}}
out["ratio_hz_parallel_over_autoregressive"] = out["parallel"]["hz"] / out["autoregressive"]["hz"]
out["ratio_p50"] = out["parallel"]["hz_p50"] / out["autoregressive"]["hz_p50"]
out["ratio_min"] = out["autoregressive"]["min_ms"] / out["parallel"]["min_ms"]
out["ratio_cpu_time"] = out["parallel"]["hz_cpu_time"] / out["autoregressive"]["hz_cpu_time"]
out["threads"] = threads
print(json.dumps(out, indent=1))
