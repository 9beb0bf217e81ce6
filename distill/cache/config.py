"""CacheConfig: one teacher-cache run (`rt2edge distill cache`), validated where it is made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from distill.checks import existing_dir, one_of, positive_int, required
from rt2edge.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(kw_only=True)
class CacheConfig:
    """Run `teacher` once over the first `max_frames` frames of `data` (all when None) and store
    its action-bin distributions under `out`.

    top_k: None stores all n_bins log-probabilities per action token (fp16); k keeps the k
        largest (fp16 values + uint8/int16 bin indices) and the student spreads the remaining
        mass uniformly over the other bins.
    greedy: also store the teacher's free-running constrained greedy decode (what it would do on
        the robot): one more decode per frame, about the cost of the teacher-forced pass.
    device_map: passed to `from_pretrained` (Hugging Face / accelerate big-model loading) for a
        teacher too large for one device: "auto" / "balanced" spread its layers over this
        process's visible GPUs (then CPU RAM, then disk); "cpu" keeps it in RAM. None: the whole
        teacher on this process's device. With device_map, launch one process per group of
        GPUs that holds a teacher (e.g. one per node, CUDA_VISIBLE_DEVICES per process).
    dtype: the teacher's weights dtype; bfloat16 halves a large teacher's memory.
    batch_size, device_map and progress change neither which frames are cached nor the format,
    so a resumed run may change them (numbers differ only by floating-point noise).
    """

    teacher: str
    data: str
    out: str
    top_k: int | None = None
    shard_size: int = 1024
    batch_size: int = 32
    max_frames: int | None = None
    greedy: bool = True
    device_map: str | None = None
    dtype: str = "float32"
    progress: bool = True

    def __post_init__(self) -> None:
        required("teacher", self.teacher, "a teacher checkpoint folder")
        existing_dir("teacher", self.teacher, "checkpoint folder")
        required("data", self.data, "a dataset folder from `rt2edge data generate`")
        existing_dir("data", self.data, "dataset folder")
        required("out", self.out, "the cache folder to write")
        positive_int("shard_size", self.shard_size)
        positive_int("batch_size", self.batch_size)
        if self.top_k is not None:
            positive_int("top_k", self.top_k)
        if self.max_frames is not None:
            positive_int("max_frames", self.max_frames)
        one_of("dtype", self.dtype, DTYPES)
        if self.device_map is not None and not (isinstance(self.device_map, str) and self.device_map):
            raise ConfigError("device_map", f"must be a non-empty string such as 'auto' or 'cpu', got {self.device_map!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
