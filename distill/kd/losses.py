"""Distillation losses on action-bin distributions. Pure tensor functions: no model, no cache.

The student's logits are (B, D, N): D action tokens (7 dims + terminate), N bins, from
`policy.action_logits(batch)` under teacher forcing. How they are produced (autoregressive VLM,
parallel decoding, ...) does not matter here. The teacher gives log-probabilities at T = 1 (the
cache's contract); at temperature T both sides become softmax(x / T).

Per action token:  alpha * CE(student, ground-truth bin) + (1 - alpha) * T^2 * D(teacher, student)
  D = "kl"  forward KL(p_T || q_T)  (Hinton et al. 2015): mass-covering, the classic choice
      "rkl" reverse KL(q_T || p_T)  (MiniLLM, Gu et al. 2024): mode-seeking, a small student
            commits to the teacher's main mode instead of smearing over all of them
      "jsd" Jensen-Shannon (p, q)    symmetric and bounded by log 2
The T^2 factor (Hinton) keeps the gradient of the soft term at the same scale for every T: the
gradient of KL(p_T || q_T) in the student's logits is (q_T - p_T) / T, which shrinks as 1/T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.kd.config import KD_LOSSES


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim, from log-probabilities; 0 * log 0 counts as 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def js_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """JSD(p, q) = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2; in [0, log 2]."""
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    return 0.5 * (kl_divergence(log_p, log_m) + kl_divergence(log_q, log_m))


def distillation_divergence(kind: str, teacher_log_probs: torch.Tensor, student_logits: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """T^2 * D(teacher_T, student_T) per action token: (B, D) from (B, D, N) inputs."""
    log_p = F.log_softmax(teacher_log_probs.float() / temperature, dim=-1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    if kind == "kl":
        div = kl_divergence(log_p, log_q)
    elif kind == "rkl":
        div = kl_divergence(log_q, log_p)
    elif kind == "jsd":
        div = js_divergence(log_p, log_q)
    else:
        raise ValueError(f"unknown distillation loss {kind!r}; one of {KD_LOSSES}")
    return temperature * temperature * div


@dataclass
class KDSums:
    """Sums over this process's action tokens (reduce across processes, then divide)."""

    loss: torch.Tensor  # alpha * CE + (1 - alpha) * T^2 * D, the training objective
    divergence: torch.Tensor  # T^2 * D
    ce: torch.Tensor  # cross-entropy on the ground-truth bins (T = 1)
    tokens: torch.Tensor
    correct: torch.Tensor  # argmax == ground-truth bin
    agree: torch.Tensor  # argmax == the teacher's argmax (teacher-forced token agreement)


def kd_token_losses(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, gt_bins: torch.Tensor,
                    kind: str, temperature: float, alpha: float) -> KDSums:
    """student_logits (B, D, N), teacher_log_probs (B, D, N) at T = 1, gt_bins (B, D) int."""
    if student_logits.shape != teacher_log_probs.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher log-probs "
                         f"{tuple(teacher_log_probs.shape)} differ: the action spaces do not match")
    logits = student_logits.float()
    div = distillation_divergence(kind, teacher_log_probs, logits, temperature)
    ce = F.cross_entropy(logits.flatten(0, 1), gt_bins.flatten(), reduction="none").view_as(div)
    predicted = logits.argmax(-1)
    return KDSums(
        loss=(alpha * ce + (1.0 - alpha) * div).sum(),
        divergence=div.sum(),
        ce=ce.sum(),
        tokens=torch.tensor(float(div.numel()), device=div.device),
        correct=(predicted == gt_bins).sum().float(),
        agree=(predicted == teacher_log_probs.argmax(-1)).sum().float(),
    )
