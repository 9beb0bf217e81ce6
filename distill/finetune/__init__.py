"""RT-2 co-fine-tuning: train a VLAPolicy on robot frames mixed with VQA samples (accelerate).

    from distill.finetune import FinetuneConfig, run
    result = run(FinetuneConfig(data="data/tabletop", out="ckpt/teacher", preset="teacher", steps=5000))

CLI: `rt2edge distill finetune --data DATA --preset teacher --out CKPT` (or `accelerate launch -m
rt2edge.cli distill finetune ...` on several GPUs). The run folder `out` ends up holding the final
checkpoint (VLAPolicy.from_pretrained(out)), finetune_config.json, train_log.jsonl and
training_state/ (resumable checkpoints).

The co-training machinery here (TrainingConfig, the robot/VQA mixture, the accelerate loop in
loop.py, checkpointing, graceful stop) is shared with knowledge distillation (distill.kd), which
only adds its student, its data source (a teacher cache) and its loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distill.finetune.config import FinetuneConfig

if TYPE_CHECKING:
    from distill.finetune.trainer import FinetuneResult


def run(cfg: FinetuneConfig) -> "FinetuneResult":
    """The stage's one entry point (imports torch and accelerate only when called)."""
    from distill.finetune.trainer import train

    return train(cfg)


__all__ = ["FinetuneConfig", "run"]
