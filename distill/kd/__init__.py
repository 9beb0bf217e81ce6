"""Knowledge distillation of a VLA teacher into a small student, from a teacher cache.

    from distill.kd import DistillConfig, run
    result = run(DistillConfig(cache="cache/tabletop", student="student-s", out="ckpt/student",
                               loss="kl", temperature=2.0, alpha=0.5, steps=5000))

CLI: `rt2edge distill train --cache CACHE --student PRESET_OR_CKPT --out CKPT` (or
`--from-teacher CKPT --keep-every K`), unchanged under `accelerate launch` (DDP / FSDP). The run
folder ends up holding the student checkpoint, distill_config.json, train_log.jsonl and
training_state/ (resumable). `distill.kd.compare` scores teacher and students on held-out frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distill.kd.config import DistillConfig

if TYPE_CHECKING:
    from distill.finetune.loop import TrainingResult


def run(cfg: DistillConfig) -> "TrainingResult":
    """The stage's entry point (imports torch and accelerate only when called)."""
    from distill.kd.trainer import train

    return train(cfg)


__all__ = ["DistillConfig", "run"]
