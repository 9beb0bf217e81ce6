"""`distill.cache.run(cfg)`: run the teacher once over the frames, write a sharded teacher cache.

Data parallel under `accelerate launch` / `torchrun`: shard i is computed by process
i % world_size; each process writes its own shards (and their records) into the shared `out`
folder, then after a barrier the main process verifies every shard and writes the index. Every
batch lies inside one shard and a shard's batches do not depend on the number of processes, so
1 process and N processes write the same bytes (same device type, threads and batch size).

Resumable: a shard whose record matches its sha256 is skipped; anything else is recomputed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.cache import format as fmt
from distill.cache.config import CacheConfig
from distill.cache.fingerprint import checkpoint_sha256, dataset_fingerprint
from distill.cache.teacher import load_teacher, teacher_targets
from rt2edge.atomic import remove_temporaries
from rt2edge.errors import ArtifactError, ConfigError
from rt2edge.optional import require

# Index keys that say what the cache holds, and the CacheConfig field that sets each: a resumed
# run must agree on all of them (else the shards it finds are another cache's).
IDENTITY = {"teacher_sha256": "teacher", "dataset_fingerprint": "data", "num_frames": "max_frames",
            "top_k": "top_k", "greedy": "greedy", "dtype": "dtype", "shard_size": "shard_size"}


@dataclass
class CacheResult:
    out: str
    frames: int  # frames in the cache
    frames_computed: int  # by this run, over all processes
    shards: int
    shards_skipped: int  # already complete and verified
    bytes: int
    bytes_per_frame: float
    wall_s: float
    frames_per_s: float | None  # frames computed per second of this run (all processes)
    processes: int


def make_header(cfg: CacheConfig, dataset: Any, num_frames: int) -> dict[str, Any]:
    from rt2edge.models.checkpoint import read_metadata

    meta = read_metadata(cfg.teacher)
    n_bins = meta.action_tokenizer.n_bins
    if cfg.top_k is not None and cfg.top_k >= n_bins:
        raise ConfigError("top_k", f"must be < the teacher's {n_bins} bins (leave it unset to store all)")
    bins = fmt.bin_dtype(n_bins).name
    tensors = {"frames": "int64 (n,)", "gt_bins": f"{bins} (n, D)"}
    if cfg.greedy:
        tensors["greedy_bins"] = f"{bins} (n, D)"
    if cfg.top_k is None:
        tensors["log_probs"] = f"float16 (n, D, {n_bins})"
    else:
        tensors.update(topk_log_probs=f"float16 (n, D, {cfg.top_k})", topk_bins=f"{bins} (n, D, {cfg.top_k})")
    return {
        "format": fmt.FORMAT, "format_version": fmt.FORMAT_VERSION, "complete": False,
        "teacher": str(cfg.teacher), "teacher_sha256": checkpoint_sha256(cfg.teacher),
        "teacher_family": meta.family, "unnorm_key": meta.default_unnorm_key,
        "data": str(cfg.data), "dataset_fingerprint": dataset_fingerprint(dataset),
        "dataset_frames": len(dataset),
        "num_frames": num_frames,  # the cache holds dataset rows [0, num_frames)
        "top_k": cfg.top_k, "greedy": cfg.greedy, "dtype": cfg.dtype, "shard_size": cfg.shard_size,
        "teacher_forcing": "ground-truth action tokens",
        "temperature": 1.0,
        "action_tokenizer": meta.action_tokenizer.to_dict(),
        "tensors": tensors,
        "shards": [],
    }


def check_same_cache(existing: dict[str, Any], header: dict[str, Any], out: Path) -> None:
    for key, field in IDENTITY.items():
        if existing.get(key) != header[key]:
            raise ConfigError(field, f"{out} holds a cache with {key}={existing.get(key)!r}, this run has "
                                     f"{header[key]!r}; use the same settings to resume, or another --out")


def prepare_folder(out: Path, header: dict[str, Any]) -> None:
    """Main process: refuse another cache's folder, drop crash leftovers, write the open index."""
    existing = fmt.read_index(out)
    if existing is not None:
        check_same_cache(existing, header, out)
    (out / fmt.SHARD_DIR).mkdir(parents=True, exist_ok=True)
    remove_temporaries(out / fmt.SHARD_DIR)
    fmt.write_index(out, header)


def compute_shard(policy: Any, dataset: Any, plan: fmt.ShardPlan, cfg: CacheConfig,
                  progress: Any) -> dict[str, np.ndarray]:
    parts: list[dict[str, np.ndarray]] = []
    for start in range(plan.start, plan.stop, cfg.batch_size):
        rows = range(start, min(start + cfg.batch_size, plan.stop))
        parts.append(teacher_targets(policy, [dataset[i] for i in rows], cfg.greedy))
        progress.update(len(rows))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n_bins = merged["log_probs"].shape[-1]
    tensors = {"frames": np.arange(plan.start, plan.stop, dtype=np.int64),
               "gt_bins": merged["gt_bins"].astype(fmt.bin_dtype(n_bins))}
    if cfg.greedy:
        tensors["greedy_bins"] = merged["greedy_bins"].astype(fmt.bin_dtype(n_bins))
    tensors.update(fmt.encode_distributions(merged["log_probs"], cfg.top_k))
    return tensors


def finalize(out: Path, plans: list[fmt.ShardPlan]) -> dict[str, Any]:
    """Main process, after every process is done: verify all shards, close the index."""
    index = fmt.read_index(out)
    records = []
    for plan in plans:
        record = fmt.finished_record(out, plan)
        if record is None:
            raise ArtifactError(f"{out}: shard {plan.file} is missing or corrupt after every process "
                                "finished (is `out` on a filesystem all processes share?)")
        records.append(record.to_dict())
    total = sum(r["bytes"] for r in records)
    index.update(complete=True, shards=records, bytes=total,
                 bytes_per_frame=round(total / max(1, index["num_frames"]), 3))
    fmt.write_index(out, index)
    return index


def build_cache(cfg: CacheConfig) -> CacheResult:
    torch = require("torch", extra="toolkit", purpose="the teacher cache")
    accelerate = require("accelerate", extra="toolkit", purpose="the teacher cache")
    from distill.finetune.setup import reset_accelerate_state_if_single_process
    from rt2edge.data import EpisodeDataset

    t0 = time.perf_counter()
    reset_accelerate_state_if_single_process()
    state = accelerate.PartialState()
    out = Path(cfg.out)
    dataset = EpisodeDataset(cfg.data)
    num_frames = len(dataset) if cfg.max_frames is None else min(cfg.max_frames, len(dataset))
    plans = fmt.plan_shards(num_frames, cfg.shard_size)
    if state.is_main_process:
        prepare_folder(out, make_header(cfg, dataset, num_frames))
    state.wait_for_everyone()

    mine = plans[state.process_index::state.num_processes]
    todo = [p for p in mine if fmt.finished_record(out, p) is None]
    computed = sum(p.stop - p.start for p in todo)
    if todo:
        policy = load_teacher(cfg.teacher, cfg.dtype, cfg.device_map, state.device)
        progress = require("tqdm.auto", extra="toolkit").tqdm(
            total=computed, disable=not (cfg.progress and state.is_main_process), desc="teacher cache",
            unit="frame", dynamic_ncols=True)
        for plan in todo:
            tensors = compute_shard(policy, dataset, plan, cfg, progress)
            fmt.write_shard(out, plan, tensors, {"format": fmt.FORMAT, "shard": str(plan.index),
                                                  "start": str(plan.start), "stop": str(plan.stop)})
        progress.close()
    counts = torch.tensor([computed, len(mine) - len(todo)], dtype=torch.int64, device=state.device)
    if state.num_processes > 1:
        torch.distributed.all_reduce(counts)  # also a barrier: every shard is written after it
    state.wait_for_everyone()
    index = finalize(out, plans) if state.is_main_process else None
    state.wait_for_everyone()
    index = index or fmt.read_index(out)
    wall = time.perf_counter() - t0
    frames_computed, skipped = (int(x) for x in counts.tolist())
    return CacheResult(out=str(out), frames=num_frames, frames_computed=frames_computed, shards=len(plans),
                       shards_skipped=skipped, bytes=index["bytes"], bytes_per_frame=index["bytes_per_frame"],
                       wall_s=round(wall, 3), frames_per_s=round(frames_computed / wall, 2) if frames_computed else None,
                       processes=state.num_processes)
