"""Knowledge distillation on the shared co-training loop (distill/finetune/loop.py): the robot
frames of a teacher cache scored against the teacher's bin distributions, mixed with VQA.

The entry point is `distill.kd.run(cfg)`. Everything else (accelerate, DDP/FSDP, the seeded
mixture, resume to identical weights, SIGTERM, checkpoints, logs) is the loop's.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from distill.cache.fingerprint import dataset_fingerprint
from distill.cache.reader import TeacherCache
from distill.finetune.data import RawItem
from distill.finetune.loop import CoTrainingLoop, TrainingResult
from distill.finetune.losses import token_losses
from distill.kd.config import DistillConfig
from distill.kd.losses import kd_token_losses
from distill.kd.students import build_student
from rt2edge.errors import ConfigError

# train_log.jsonl sums of a window, in this order
STATS = ("loss", "divergence", "ce", "action_tokens", "correct", "agree", "vqa_ce", "vqa_tokens")


class CachedFrames:
    """The dataset frames a cache holds, indexed by cache position (what the mixture draws)."""

    def __init__(self, dataset: Any, rows: np.ndarray):
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[int(self.rows[i])]


class StudentForward(nn.Module):
    """What accelerate prepares (DDP / FSDP wrap it): one forward per step, returning the
    student's action logits from `policy.action_logits` (any subclass's override) and its LM
    logits on the VQA rows."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, robot_batch: dict | None, text_inputs: dict | None) -> tuple[Any, Any]:
        actions = None if robot_batch is None else self.policy.action_logits(robot_batch)
        text = None if text_inputs is None else self.policy.model(**text_inputs, use_cache=False).logits
        return actions, text


class DistillTrainer(CoTrainingLoop):
    progress_desc = "distill"
    window_size = len(STATS)

    def __init__(self, cfg: DistillConfig):
        self.cache = TeacherCache(cfg.cache)
        super().__init__(cfg)

    # --------------------------------------------------------------------------- hooks
    def robot_frames(self) -> CachedFrames:
        from rt2edge.data import EpisodeDataset

        dataset = EpisodeDataset(self.cfg.data or self.cache.data)
        if dataset_fingerprint(dataset) != self.cache.dataset_fingerprint:
            raise ConfigError("data", f"{self.cfg.data or self.cache.data} is not the dataset the cache "
                                      f"{self.cfg.cache} was built from (fingerprints differ)")
        return CachedFrames(dataset, self.cache.frames)

    def build_policy(self, robot: CachedFrames) -> Any:
        return build_student(self.cfg, self.cache)

    def training_module(self) -> nn.Module:
        self.student_forward = StudentForward(self.policy)
        return self.student_forward

    def probe(self, items: list[RawItem]) -> Any:
        actions, text = self.student_forward(*self._batches(items)[:2])
        return sum(x.float().mean() for x in (actions, text) if x is not None)

    def loss_sums(self, items: list[RawItem]) -> tuple[Any, Any, Any]:
        cfg, device = self.cfg, self.accelerator.device
        robot_batch, text_inputs, labels = self._batches(items)
        with self.accelerator.autocast():
            actions, text = self.model(robot_batch, text_inputs)
        zero = torch.zeros((), device=device)
        loss, stats = zero, dict.fromkeys(STATS, zero)
        if actions is not None:
            positions = [x.index for x in items if not x.is_vqa]
            teacher = torch.from_numpy(self.cache.log_probs(positions)).to(device)
            gt = torch.from_numpy(self.cache.gt_bins(positions)).to(device)
            sums = kd_token_losses(actions, teacher, gt, cfg.loss, cfg.temperature, cfg.alpha)
            loss = sums.loss
            stats.update(loss=sums.loss, divergence=sums.divergence, ce=sums.ce, action_tokens=sums.tokens,
                         correct=sums.correct, agree=sums.agree)
        if text is not None:
            tok = self.policy.action_tokenizer
            is_vqa = torch.ones(text.shape[0], dtype=torch.bool)
            vqa_ce, vqa = token_losses(text, labels, is_vqa, torch.as_tensor(tok.allowed_ids), tok.tokens_per_action)
            loss = loss + vqa_ce
            stats.update(loss=stats["loss"] + vqa_ce, vqa_ce=vqa.vqa_ce, vqa_tokens=vqa.vqa_tokens.float())
        vector = torch.stack([stats[k].detach().float().to(device) for k in STATS])
        return loss, stats["action_tokens"] + stats["vqa_tokens"], vector

    def log_row(self, step: int, totals: Sequence[float], lr: float, grad_norm: float,
                samples_per_s: float | None, elapsed: float) -> dict[str, Any]:
        t = dict(zip(STATS, totals))
        n = max(1.0, t["action_tokens"])
        return {
            "step": step,
            "loss": t["loss"] / max(1.0, t["action_tokens"] + t["vqa_tokens"]),
            "kd_loss": t["divergence"] / n,  # T^2 * D per action token
            "ce_loss": t["ce"] / n,  # on the ground-truth bins
            "action_accuracy": t["correct"] / n,
            "teacher_agreement": t["agree"] / n,
            "vqa_loss": t["vqa_ce"] / t["vqa_tokens"] if t["vqa_tokens"] else None,
            "lr": lr,
            "grad_norm": grad_norm,
            "samples_per_s": samples_per_s,
            "elapsed_s": round(elapsed, 3),
        }

    # --------------------------------------------------------------------------- batches
    def _batches(self, items: list[RawItem]) -> tuple[dict | None, dict | None, Any]:
        """(robot batch forced on the cache's ground-truth bins, VQA model inputs, VQA labels)."""
        policy = self.policy
        robot = [x for x in items if not x.is_vqa]
        vqa = [x for x in items if x.is_vqa]
        robot_batch = text_inputs = labels = None
        if robot:
            # [Contract] the student is forced with the very bins the teacher was forced with,
            # written as the student's own action-token ids.
            bins = self.cache.gt_bins([x.index for x in robot])
            robot_batch = policy.build_action_token_batch(
                np.stack([x.image for x in robot]), [x.text for x in robot], policy.action_tokenizer.token_ids[bins])
        if vqa:
            batch = policy.build_text_batch(np.stack([x.image for x in vqa]), [x.text for x in vqa],
                                            [x.answer for x in vqa])
            text_inputs = policy.model_inputs(batch)
            labels = text_inputs.pop("labels")
        return robot_batch, text_inputs, labels


def train(cfg: DistillConfig) -> TrainingResult:
    return DistillTrainer(cfg).run()
