"""DistillConfig: one knowledge-distillation run (`rt2edge distill train`), validated where it is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from distill.checks import existing_dir, finite, one_of, positive_int, required
from distill.finetune.config import TrainingConfig
from rt2edge.errors import ConfigError

KD_LOSSES = ("kl", "rkl", "jsd")  # see distill/kd/losses.py


@dataclass(kw_only=True)
class DistillConfig(TrainingConfig):
    """Distill the teacher of `cache` into a student, co-trained with VQA (RT-2).

    The student is exactly one of:
      student       a preset name (a fresh model with its own text tokenizer, the cache's action
                    bins and statistics) or a checkpoint folder (its action space must match);
      from_teacher  a checkpoint of the teacher's family, shrunk by keeping every `keep_every`-th
                    decoder and vision layer (embeddings, projector, norms and head copied).
    Loss per action token: alpha * CE(ground-truth bin) + (1 - alpha) * T^2 * D(teacher || student),
    D = `loss` (kl, rkl, jsd) at `temperature`; VQA answer tokens add their cross-entropy.
    augment defaults to off: the cache holds the teacher's view of the un-augmented image, and a
    student matched on another view is taught an inconsistent target (Beyer et al. 2022,
    "Knowledge distillation: a good teacher is patient and consistent").
    """

    CONFIG_FILENAME: ClassVar[str] = "distill_config.json"
    # `data` only locates the images (the cache's fingerprint pins the content), so it may move.
    RUN_ONLY_FIELDS: ClassVar[frozenset[str]] = TrainingConfig.RUN_ONLY_FIELDS | {"data"}

    cache: str
    student: str | None = None
    from_teacher: str | None = None
    keep_every: int = 2
    data: str | None = None  # the cache's dataset folder; None: the path recorded in the cache
    loss: str = "kl"
    temperature: float = 2.0
    alpha: float = 0.5
    augment: bool = False

    def __post_init__(self) -> None:
        required("cache", self.cache, "a teacher cache folder from `rt2edge distill cache`")
        existing_dir("cache", self.cache, "teacher cache")
        super().__post_init__()
        if (self.student is None) == (self.from_teacher is None):
            raise ConfigError("student", "set exactly one of `student` (preset or checkpoint) or "
                                         "`from_teacher` (layer-dropped copy of a checkpoint)")
        if self.student is not None:
            required("student", self.student, "a preset name or a checkpoint folder")
        if self.from_teacher is not None:
            existing_dir("from_teacher", self.from_teacher, "checkpoint folder")
        positive_int("keep_every", self.keep_every)
        if self.data is not None:
            existing_dir("data", self.data, "dataset folder")
        one_of("loss", self.loss, KD_LOSSES)
        finite("temperature", self.temperature, low=0.0, low_open=True)
        finite("alpha", self.alpha, low=0.0, high=1.0)
