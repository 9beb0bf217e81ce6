"""Run configs of the distill stage's trainings, validated where they are made.

`TrainingConfig` holds what every co-training run shares (optimization, the robot/VQA mixture,
checkpointing, resume); `FinetuneConfig` (RT-2 co-fine-tuning) and `distill.kd.DistillConfig`
(knowledge distillation) add their own inputs. A config is written as JSON next to the checkpoint,
and a resumed run compares the settings that shape the result against the saved ones (everything
but `RUN_ONLY_FIELDS`), so a resume can never silently continue a different experiment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from distill.checks import existing_dir, finite, one_of, positive_int, required
from rt2edge.atomic import atomic_write_json
from rt2edge.checks import check_known_keys
from rt2edge.errors import ConfigError

CONFIG_FILENAME = "finetune_config.json"
MIXED_PRECISION = ("no", "bf16", "fp16")
RESUME_MODES = ("auto", "never", "require")


@dataclass(kw_only=True)
class TrainingConfig:
    """The settings of a resumable co-training run on `accelerate`.

    `batch_size` is the *global* batch: under `accelerate launch` it is split across processes, so
    the same config gives the same optimization on 1 or 64 GPUs.
    """

    CONFIG_FILENAME: ClassVar[str] = "training_config.json"
    # Fields that do not change the trained weights: they may differ between a run and its resume.
    RUN_ONLY_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"out", "resume", "max_steps_per_run", "progress", "log_every", "checkpoint_every",
         "keep_checkpoints"})

    out: str
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
        required("out", self.out, "the checkpoint folder to write")
        for name in ("steps", "batch_size", "vqa_pool_size", "checkpoint_every", "keep_checkpoints",
                     "log_every"):
            positive_int(name, getattr(self, name))
        if self.max_steps_per_run is not None:
            positive_int("max_steps_per_run", self.max_steps_per_run)
        finite("lr", self.lr, low=0.0, low_open=True)
        finite("weight_decay", self.weight_decay, low=0.0)
        finite("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        finite("max_grad_norm", self.max_grad_norm, low=0.0, low_open=True)
        finite("vqa_ratio", self.vqa_ratio, low=0.0, high=1.0)
        if self.vqa_ratio == 1.0:
            raise ConfigError("vqa_ratio", "must be < 1: a batch of only VQA never trains actions")
        if self.warmup_steps is not None and not (0 <= self.warmup_steps < self.steps):
            raise ConfigError("warmup_steps", f"must be in [0, steps={self.steps}), got {self.warmup_steps}")
        one_of("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        one_of("resume", self.resume, RESUME_MODES)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"must be a non-negative int, got {self.seed!r}")

    @property
    def effective_warmup_steps(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(0.05 * self.steps)

    # ----------------------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / self.CONFIG_FILENAME
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        check_known_keys(cls, data)
        return cls(**dict(data))

    @classmethod
    def load(cls, folder: str | Path):
        return cls.from_dict(json.loads((Path(folder) / cls.CONFIG_FILENAME).read_text()))

    def check_resumable_from(self, saved: Mapping[str, Any]) -> None:
        """Raise ConfigError naming the first result-shaping field that differs from `saved`."""
        for name, value in self.to_dict().items():
            if name in self.RUN_ONLY_FIELDS or name not in saved:
                continue
            if saved[name] != value:
                raise ConfigError(
                    name,
                    f"is {value!r} but the checkpoint in {self.out!r} was trained with "
                    f"{saved[name]!r}; use the same value to resume, or another --out",
                )


@dataclass(kw_only=True)
class FinetuneConfig(TrainingConfig):
    """RT-2 co-fine-tuning of a VLAPolicy on robot frames mixed with VQA samples.

    Exactly one of `preset` (a fresh model from `rt2edge.models.build_preset`, its action tokenizer
    built with the dataset's statistics) or `init` (a checkpoint folder to continue from) is set.
    """

    CONFIG_FILENAME: ClassVar[str] = CONFIG_FILENAME

    data: str
    preset: str | None = "teacher"
    init: str | None = None

    def __post_init__(self) -> None:
        required("data", self.data, "a dataset folder from `rt2edge data generate`")
        super().__post_init__()
        if (self.preset is None) == (self.init is None):
            raise ConfigError("preset", "set exactly one of `preset` (fresh model) or `init` (checkpoint)")
        if self.init is not None:
            existing_dir("init", self.init, "checkpoint folder")
