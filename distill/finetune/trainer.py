"""RT-2 co-fine-tuning: next-token cross-entropy on robot action tokens and VQA answers, on the
shared co-training loop (loop.py). The entry point is `distill.finetune.run(cfg)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from distill.finetune import losses, setup
from distill.finetune.config import FinetuneConfig
from distill.finetune.data import RawItem
from distill.finetune.loop import LOG_FILENAME, CoTrainingLoop, TrainingResult

FinetuneResult = TrainingResult
__all__ = ["FinetuneResult", "FinetuneTrainer", "LOG_FILENAME", "log_row", "train"]


class FinetuneTrainer(CoTrainingLoop):
    progress_desc = "finetune"

    def __init__(self, cfg: FinetuneConfig):
        super().__init__(cfg)
        tok = self.policy.action_tokenizer
        self.action_ids = self.torch.as_tensor(tok.allowed_ids, device=self.accelerator.device)
        self.dim_names = [tok.name_of(d) for d in range(tok.tokens_per_action)]

    def robot_frames(self) -> Any:
        from rt2edge.data import EpisodeDataset

        return EpisodeDataset(self.cfg.data)

    def pin_robot_frames(self, robot: Any) -> None:
        # `data generate` extends a dataset in place: resuming on more (or other) frames would
        # change every later batch and the action statistics the bins were learnt with.
        setup.pin_dataset(self.out, robot, self.cfg.data, self.resume_dir is not None,
                          self.accelerator.is_main_process)

    def build_policy(self, robot: Any) -> Any:
        return setup.build_policy(self.cfg, robot.action_statistics(), Path(self.cfg.data).resolve().name or "default")

    def training_module(self) -> Any:
        return self.policy.model

    def probe(self, items: list[RawItem]) -> Any:
        return setup.full_head_probe(self.policy, items)

    @property
    def window_size(self) -> int:
        return 5 + 2 * self.policy.action_tokenizer.tokens_per_action

    def loss_sums(self, items: list[RawItem]) -> tuple[Any, Any, Any]:
        batch, is_vqa = setup.model_batch(self.policy, items)
        inputs = self.policy.model_inputs(batch)
        labels = inputs.pop("labels")
        with self.accelerator.autocast():
            logits = self.model(**inputs, use_cache=False).logits
        ce_sum, sums = losses.token_losses(logits, labels, is_vqa, self.action_ids, len(self.dim_names))
        return ce_sum, (sums.action_tokens + sums.vqa_tokens).float(), sums.stack()

    def log_row(self, step: int, totals: Sequence[float], lr: float, grad_norm: float,
                samples_per_s: float | None, elapsed: float) -> dict[str, Any]:
        return log_row(step, list(totals), self.dim_names, lr, grad_norm, samples_per_s, elapsed)


def log_row(step: int, totals: list[float], dim_names: list[str], lr: float, grad_norm: float,
            samples_per_s: float | None, elapsed: float) -> dict[str, Any]:
    """One train_log.jsonl row from the summed LossSums of a logging window (all processes)."""
    action_ce, action_n, correct, vqa_ce, vqa_n = totals[:5]
    k = len(dim_names)
    per_dim = {name: round(c / max(1.0, n), 4)
               for name, c, n in zip(dim_names, totals[5:5 + k], totals[5 + k:5 + 2 * k])}
    return {
        "step": step,
        "loss": (action_ce + vqa_ce) / max(1.0, action_n + vqa_n),
        "action_loss": action_ce / max(1.0, action_n),
        "action_accuracy": correct / max(1.0, action_n),
        "action_accuracy_per_dim": per_dim,
        "vqa_loss": vqa_ce / vqa_n if vqa_n else None,
        "vqa_token_fraction": vqa_n / max(1.0, action_n + vqa_n),
        "lr": lr,
        "grad_norm": grad_norm,
        "samples_per_s": samples_per_s,
        "elapsed_s": round(elapsed, 3),
    }


def train(cfg: FinetuneConfig) -> TrainingResult:
    return FinetuneTrainer(cfg).run()
