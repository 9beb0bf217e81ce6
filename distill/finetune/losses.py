"""Co-fine-tuning loss on one mixed batch: next-token cross-entropy on the labelled tokens only.

Robot rows carry labels on their action tokens, VQA rows on their answer tokens (+ eos); both go
through the model in one forward pass (RT-2 mixes them within a batch), and the per-source sums
are kept apart for logging. Pure tensor functions: no model, no accelerate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rt2edge.models.batching import IGNORE_INDEX

# Keys padded along the sequence when robot and VQA batches are concatenated, and the pad value.
_SEQUENCE_PAD = {"input_ids": None, "attention_mask": 0, "labels": IGNORE_INDEX, "token_type_ids": 0}


def concat_batches(batches: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the sequence keys of several `build_*_batch` outputs to one width and stack.

    [Contract] training batches are right-padded (rt2edge.models.batching.target_batch), so
    padding further on the right keeps every row's positions and attention unchanged.
    """
    if len(batches) == 1:
        return {k: v for k, v in batches[0].items() if k in _SEQUENCE_PAD or k == "pixel_values"}
    width = max(b["input_ids"].shape[1] for b in batches)
    out: dict[str, torch.Tensor] = {}
    for key, pad in _SEQUENCE_PAD.items():
        if key not in batches[0]:
            continue
        value = pad_id if pad is None else pad
        out[key] = torch.cat([F.pad(b[key], (0, width - b[key].shape[1]), value=value) for b in batches])
    out["pixel_values"] = torch.cat([b["pixel_values"] for b in batches])
    return out


@dataclass
class LossSums:
    """Sums over the labelled tokens of this process's rows (reduce across processes, then divide)."""

    action_ce: torch.Tensor
    action_tokens: torch.Tensor
    action_correct: torch.Tensor  # argmax over the action bins == target bin (constrained decoding)
    vqa_ce: torch.Tensor
    vqa_tokens: torch.Tensor
    # per action dim (x, y, z, roll, pitch, yaw, gripper, terminate): correct bins, and counts.
    # The overall accuracy hides what matters: rotations and terminate are nearly constant in
    # the data and are right from the first steps, while the xyz deltas need the image.
    correct_per_dim: torch.Tensor
    tokens_per_dim: torch.Tensor

    def stack(self) -> torch.Tensor:
        scalars = torch.stack([self.action_ce, self.action_tokens.float(), self.action_correct.float(),
                               self.vqa_ce, self.vqa_tokens.float()])
        return torch.cat([scalars.float(), self.correct_per_dim.float(), self.tokens_per_dim.float()]).detach()


def token_losses(logits: torch.Tensor, labels: torch.Tensor, is_vqa_row: torch.Tensor,
                 action_ids: torch.Tensor, tokens_per_action: int) -> tuple[torch.Tensor, LossSums]:
    """Summed CE over every labelled token, and the per-source sums.

    logits (B, T, V), labels (B, T) with IGNORE_INDEX off-target, is_vqa_row (B,) bool,
    action_ids (n_bins,) the action-token ids in bin order, tokens_per_action the labelled tokens
    of a robot row. Returns (ce_sum, sums); the caller
    divides ce_sum by the global token count so the loss is a mean over all labelled tokens.
    """
    # The token at t is predicted from position t - 1 (causal LM shift).
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    # Only labelled positions go through the float32 log-softmax: a few percent of all positions.
    selected = logits[:, :-1][mask].float()
    targets = shift_labels[mask]
    ce = F.cross_entropy(selected, targets, reduction="none")
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(mask)[mask]
    vqa_tok = is_vqa_row.to(labels.device)[rows]
    act_tok = ~vqa_tok
    action_ids = action_ids.to(labels.device)
    # target id -> bin index (the target of an action token is always one of action_ids)
    bin_of = torch.full((selected.shape[-1],), -1, dtype=torch.long, device=labels.device)
    bin_of[action_ids] = torch.arange(action_ids.shape[0], device=labels.device)
    predicted_bin = selected[act_tok][:, action_ids].argmax(-1)
    correct = predicted_bin == bin_of[targets[act_tok]]
    # [Contract] a robot row's labels are its tokens_per_action action tokens, in dim order, so a
    # token's dim is its rank among its row's labelled tokens.
    rank = (mask.cumsum(dim=1) - 1)[mask][act_tok].clamp(max=tokens_per_action - 1)
    sums = LossSums(
        action_ce=ce[act_tok].sum(),
        action_tokens=act_tok.sum(),
        action_correct=correct.sum(),
        vqa_ce=ce[vqa_tok].sum(),
        vqa_tokens=vqa_tok.sum(),
        correct_per_dim=torch.zeros(tokens_per_action, device=labels.device).index_add_(0, rank, correct.float()),
        tokens_per_dim=torch.bincount(rank, minlength=tokens_per_action).float(),
    )
    return ce.sum(), sums
