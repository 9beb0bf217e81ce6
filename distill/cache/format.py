"""The teacher-cache format: sharded safetensors files + one JSON index (numpy only, no torch).

```
CACHE/
  index.json                      what the cache holds and how (below); `complete` once finished
  shards/shard-00000.safetensors  frames [0, shard_size) of the cached range
  shards/shard-00000.json         that shard's record (range, sha256, bytes), written after it
  ...
```
A shard holds, for its n frames (D = tokens per action, e.g. 8: 7 dims + terminate):
  frames          int64 (n,)           dataset row of each frame
  gt_bins         uint8 (n, D)         ground-truth bins the teacher was forced with
  greedy_bins     uint8 (n, D)         the teacher's free-running greedy decode (if stored)
  log_probs       float16 (n, D, N)    full storage: log-softmax over the N action bins, T = 1
  topk_log_probs  float16 (n, D, k)    top-k storage: the k largest log-probabilities, descending
  topk_bins       uint8 (n, D, k)      ... and their bins
(bins are int16 when N > 256.) Log-probabilities rather than probabilities: a student may
distill at any temperature T, softmax(log p / T) == softmax(logits / T), and fp16 keeps the
tail's log-probabilities where fp16 probabilities would underflow to 0.

[Contract] Keyed by frame, never by token id: teacher and student may have different text
tokenizers and different action-token ids; they share only the bins.

Atomicity: a shard is written to a temp name and renamed (rt2edge.atomic), then its record; a
record is trusted only if the shard's sha256 matches it, so a crash at any point leaves either a
verifiable shard or one that is recomputed, never a half-written file that is read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rt2edge.artifact import sha256_file
from rt2edge.atomic import atomic_write, atomic_write_json
from rt2edge.errors import ArtifactError

FORMAT = "rt2edge-teacher-cache"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
SHARD_DIR = "shards"
# log p below this is stored as this: e^-1e4 is 0 in any float, and fp16 can hold it.
LOG_PROB_FLOOR = -1.0e4


@dataclass(frozen=True)
class ShardPlan:
    index: int
    start: int  # position in the cached frame range (== dataset row: the range starts at row 0)
    stop: int

    @property
    def file(self) -> str:
        return f"{SHARD_DIR}/shard-{self.index:05d}.safetensors"

    @property
    def record_file(self) -> str:
        return f"{SHARD_DIR}/shard-{self.index:05d}.json"


@dataclass(frozen=True)
class ShardRecord:
    index: int
    start: int
    stop: int
    file: str
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardRecord:
        return cls(int(data["index"]), int(data["start"]), int(data["stop"]), str(data["file"]),
                   str(data["sha256"]), int(data["bytes"]))


def plan_shards(num_frames: int, shard_size: int) -> list[ShardPlan]:
    return [ShardPlan(i, start, min(start + shard_size, num_frames))
            for i, start in enumerate(range(0, num_frames, shard_size))]


def bin_dtype(n_bins: int) -> np.dtype:
    return np.dtype(np.uint8) if n_bins <= 256 else np.dtype(np.int16)


# ------------------------------------------------------------------------------ targets
def encode_distributions(log_probs: np.ndarray, top_k: int | None) -> dict[str, np.ndarray]:
    """float32 (n, D, N) log-probabilities -> the stored tensors (full or top-k)."""
    lp = np.maximum(log_probs, LOG_PROB_FLOOR)
    if top_k is None:
        return {"log_probs": lp.astype(np.float16)}
    # stable sort of -lp: equal log-probs keep bin order, so the choice is deterministic
    order = np.argsort(-lp, axis=-1, kind="stable")[..., :top_k]
    return {"topk_log_probs": np.take_along_axis(lp, order, axis=-1).astype(np.float16),
            "topk_bins": order.astype(bin_dtype(lp.shape[-1]))}


def dense_log_probs(tensors: Mapping[str, np.ndarray], n_bins: int) -> np.ndarray:
    """Stored tensors -> float32 (n, D, n_bins) log-probabilities that sum to 1 over the bins.

    Top-k: the mass the k stored bins miss, 1 - sum(p_topk), is spread uniformly over the other
    n_bins - k bins, so every bin has p > 0 and reverse KL / JSD stay finite.
    """
    if "log_probs" in tensors:
        lp = tensors["log_probs"].astype(np.float32)
    else:
        values = tensors["topk_log_probs"].astype(np.float32)
        bins = tensors["topk_bins"].astype(np.int64)
        k = values.shape[-1]
        if k >= n_bins:
            lp = np.empty(values.shape[:-1] + (n_bins,), np.float32)
        else:
            # fp16 rounding can push the kept mass a hair above 1: keep a tiny positive residual
            residual = np.clip(1.0 - np.exp(values).sum(-1, keepdims=True), 1e-6, 1.0)
            lp = np.broadcast_to(np.log(residual / (n_bins - k)),
                                 values.shape[:-1] + (n_bins,)).astype(np.float32)
        np.put_along_axis(lp, bins, values, axis=-1)
    # renormalize (fp16 rounding, the residual's clip): an exact distribution for the losses
    top = lp.max(-1, keepdims=True)
    return lp - (top + np.log(np.exp(lp - top).sum(-1, keepdims=True)))


# ------------------------------------------------------------------------------ files
def write_shard(root: Path, plan: ShardPlan, tensors: Mapping[str, np.ndarray],
                metadata: Mapping[str, str]) -> ShardRecord:
    """Write one shard atomically, then its record; returns the record."""
    from safetensors.numpy import save_file

    path = root / plan.file
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    # One metadata entry: safetensors keeps metadata in a hash map whose order varies from process
    # to process, and the same shard must be the same bytes whoever writes it.
    header = {FORMAT: json.dumps(dict(metadata), sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(arrays, str(tmp), metadata=header))
    record = ShardRecord(plan.index, plan.start, plan.stop, plan.file, sha256_file(path), path.stat().st_size)
    atomic_write_json(root / plan.record_file, record.to_dict())
    return record


def finished_record(root: Path, plan: ShardPlan) -> ShardRecord | None:
    """The shard's record if the shard is complete and intact (sha256 matches), else None."""
    record_path, shard_path = root / plan.record_file, root / plan.file
    if not (record_path.is_file() and shard_path.is_file()):
        return None
    try:
        record = ShardRecord.from_dict(json.loads(record_path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None
    if (record.start, record.stop, record.file) != (plan.start, plan.stop, plan.file):
        return None
    if record.bytes != shard_path.stat().st_size or record.sha256 != sha256_file(shard_path):
        return None
    return record


def read_shard(root: Path, record: ShardRecord, verify: bool = True) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = root / record.file
    if not path.is_file():
        raise ArtifactError(f"{root}: shard {record.file} is missing")
    if verify and sha256_file(path) != record.sha256:
        raise ArtifactError(f"{root}: shard {record.file} does not match its sha256 in {INDEX_FILE}; "
                            "rerun `rt2edge distill cache` with the same options to recompute it")
    return load_file(str(path))


def read_index(root: Path) -> dict[str, Any] | None:
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except ValueError as exc:
        raise ArtifactError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a teacher cache (format must be {FORMAT!r})")
    if index.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {index.get('format_version')!r} is not supported "
                            f"(this rt2edge reads {FORMAT_VERSION})")
    return index


def write_index(root: Path, index: Mapping[str, Any]) -> None:
    atomic_write_json(Path(root) / INDEX_FILE, dict(index))
