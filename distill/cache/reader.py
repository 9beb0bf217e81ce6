"""`TeacherCache`: read a finished teacher cache (numpy + safetensors, no torch).

    cache = TeacherCache("runs/cache")               # verifies every shard's sha256 first
    lp = cache.log_probs([0, 5, 9])                  # float32 (3, D, n_bins), dense, T = 1
    cache.gt_bins([0, 5, 9]); cache.frames           # ground-truth bins; dataset rows

Shards are loaded into memory once (full storage: ~4.1 kB per frame with 8 tokens x 256 bins;
a few GB for a million frames: use top-k storage beyond that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from distill.cache import format as fmt
from rt2edge.actions import ActionTokenizer
from rt2edge.errors import ArtifactError


class TeacherCache:
    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        index = fmt.read_index(self.path)
        if index is None:
            raise ArtifactError(f"{self.path}: no {fmt.INDEX_FILE}; build it with `rt2edge distill cache`")
        if not index.get("complete"):
            raise ArtifactError(f"{self.path}: the cache is unfinished; rerun the same "
                                "`rt2edge distill cache` command to complete it")
        self.index = index
        self.action_tokenizer = ActionTokenizer.from_dict(index["action_tokenizer"])
        records = [fmt.ShardRecord.from_dict(r) for r in index["shards"]]
        shards = [fmt.read_shard(self.path, r, verify) for r in records]
        self._tensors = {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}
        expected = np.arange(index["num_frames"], dtype=np.int64)
        if not np.array_equal(self._tensors["frames"], expected):
            raise ArtifactError(f"{self.path}: the shards do not cover frames 0..{index['num_frames'] - 1} in order")

    # ----------------------------------------------------------------------------- what it holds
    @property
    def num_frames(self) -> int:
        return int(self.index["num_frames"])

    @property
    def frames(self) -> np.ndarray:
        """The dataset row of each cached frame (cache position i -> dataset row frames[i])."""
        return self._tensors["frames"]

    @property
    def n_bins(self) -> int:
        return self.action_tokenizer.n_bins

    @property
    def tokens_per_action(self) -> int:
        return self.action_tokenizer.tokens_per_action

    @property
    def top_k(self) -> int | None:
        return self.index["top_k"]

    @property
    def has_greedy(self) -> bool:
        return "greedy_bins" in self._tensors

    @property
    def dataset_fingerprint(self) -> str:
        return self.index["dataset_fingerprint"]

    @property
    def data(self) -> str:
        return self.index["data"]

    @property
    def nbytes(self) -> int:
        return int(self.index["bytes"])

    # ----------------------------------------------------------------------------- targets
    def _rows(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(positions, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_frames):
            raise IndexError(f"cache positions must be in [0, {self.num_frames}), got {rows.min()}..{rows.max()}")
        return rows

    def log_probs(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 (n, D, n_bins) teacher log-probabilities at T = 1 (top-k made dense)."""
        rows = self._rows(positions)
        stored = {k: v[rows] for k, v in self._tensors.items() if k in ("log_probs", "topk_log_probs", "topk_bins")}
        return fmt.dense_log_probs(stored, self.n_bins)

    def gt_bins(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._tensors["gt_bins"][self._rows(positions)].astype(np.int64)

    def greedy_bins(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        if not self.has_greedy:
            raise ArtifactError(f"{self.path}: built without greedy tokens (--no-greedy)")
        return self._tensors["greedy_bins"][self._rows(positions)].astype(np.int64)

    def describe(self) -> dict[str, Any]:
        keys = ("teacher", "teacher_sha256", "data", "dataset_fingerprint", "num_frames", "top_k",
                "greedy", "dtype", "shard_size", "bytes", "bytes_per_frame")
        return {k: self.index.get(k) for k in keys} | {"shards": len(self.index["shards"])}
