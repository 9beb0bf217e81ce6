"""FinetuneConfig: every setting of an RT-2 co-fine-tuning run, validated where it is made.

The config is written as `finetune_config.json` next to the checkpoint, and a resumed run compares
the settings that shape the result against the saved ones (`RESULT_FIELDS`), so a resume can never
silently continue a different experiment.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from rt2edge.atomic import atomic_write_json
from rt2edge.errors import ConfigError

CONFIG_FILENAME = "finetune_config.json"
MIXED_PRECISION = ("no", "bf16", "fp16")
RESUME_MODES = ("auto", "never", "require")

# Fields that do not change the trained weights: they may differ between a run and its resume.
_RUN_ONLY_FIELDS = frozenset(
    {"out", "resume", "max_steps_per_run", "progress", "log_every", "checkpoint_every",
     "keep_checkpoints"}
)


@dataclass
class FinetuneConfig:
    """RT-2 co-fine-tuning of a VLAPolicy on robot frames mixed with VQA samples.

    Exactly one of `preset` (a fresh model from `rt2edge.models.build_preset`, its action tokenizer
    built with the dataset's statistics) or `init` (a checkpoint folder to continue from) is set.
    `batch_size` is the *global* batch: under `accelerate launch` it is split across processes, so
    the same config gives the same optimization on 1 or 64 GPUs.
    """

    data: str
    out: str
    preset: str | None = "teacher"
    init: str | None = None
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int | None = None  # None: 5% of `steps`
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0
    vqa_ratio: float = 0.25  # fraction of each batch that is VQA (RT-2 co-fine-tuning)
    vqa_pool_size: int = 4096  # VQA samples generated once, then drawn from like the robot frames
    augment: bool = True  # random crop + colour jitter of robot/VQA images
    seed: int = 0
    mixed_precision: str = "no"
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: str = "auto"  # auto: continue from the newest checkpoint in `out` if there is one
    max_steps_per_run: int | None = None  # stop (after a checkpoint) this many steps into the run
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("data", "is required (a dataset folder from `rt2edge data generate`)")
        if not self.out:
            raise ConfigError("out", "is required (the checkpoint folder to write)")
        if (self.preset is None) == (self.init is None):
            raise ConfigError("preset", "set exactly one of `preset` (fresh model) or `init` (checkpoint)")
        if self.init is not None and not Path(self.init).is_dir():
            raise ConfigError("init", f"checkpoint folder {self.init!r} does not exist")
        _positive_int("steps", self.steps)
        _positive_int("batch_size", self.batch_size)
        _positive_int("vqa_pool_size", self.vqa_pool_size)
        _positive_int("checkpoint_every", self.checkpoint_every)
        _positive_int("keep_checkpoints", self.keep_checkpoints)
        _positive_int("log_every", self.log_every)
        if self.max_steps_per_run is not None:
            _positive_int("max_steps_per_run", self.max_steps_per_run)
        _finite("lr", self.lr, low=0.0, low_open=True)
        _finite("weight_decay", self.weight_decay, low=0.0)
        _finite("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        _finite("max_grad_norm", self.max_grad_norm, low=0.0, low_open=True)
        _finite("vqa_ratio", self.vqa_ratio, low=0.0, high=1.0)
        if self.vqa_ratio == 1.0:
            raise ConfigError("vqa_ratio", "must be < 1: a batch of only VQA never trains actions")
        if self.warmup_steps is not None and not (0 <= self.warmup_steps < self.steps):
            raise ConfigError("warmup_steps", f"must be in [0, steps={self.steps}), got {self.warmup_steps}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError("mixed_precision", f"must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.resume not in RESUME_MODES:
            raise ConfigError("resume", f"must be one of {RESUME_MODES}, got {self.resume!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"must be a non-negative int, got {self.seed!r}")

    @property
    def effective_warmup_steps(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(0.05 * self.steps)

    # ----------------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_FILENAME
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"is not a FinetuneConfig field (known: {sorted(known)})")
        return cls(**dict(data))

    @classmethod
    def load(cls, folder: str | Path) -> FinetuneConfig:
        return cls.from_dict(json.loads((Path(folder) / CONFIG_FILENAME).read_text()))

    def check_resumable_from(self, saved: Mapping[str, Any]) -> None:
        """Raise ConfigError naming the first result-shaping field that differs from `saved`."""
        for name, value in self.to_dict().items():
            if name in _RUN_ONLY_FIELDS or name not in saved:
                continue
            if saved[name] != value:
                raise ConfigError(
                    name,
                    f"is {value!r} but the checkpoint in {self.out!r} was trained with "
                    f"{saved[name]!r}; use the same value to resume, or another --out",
                )


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, f"must be an int >= 1, got {value!r}")


def _finite(name: str, value: Any, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(name, f"must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(name, f"must be <= {high}, got {value}")
