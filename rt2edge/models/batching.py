"""Token-id batches for a VLA policy: prompts (for generation) and prompt + target (for training).

The prompt layout itself is `PromptFormat.build_input_ids` (observation.py); this module only
tokenizes, pads and marks where the targets are. Pure numpy -> torch, no model.

Padding: generation batches pad on the **left** so every row's next token is at the last column;
training batches pad on the **right** so every row's positions start at 0 (HF generate derives
positions from the attention mask, so both see the same position ids for the same token).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rt2edge.errors import InputError
from rt2edge.observation import PromptFormat

IGNORE_INDEX = -100  # HF's cross-entropy ignore index: no loss at this position


def tokenize_texts(tokenizer, texts: Sequence[str], special_ids: set[int], field: str) -> list[list[int]]:
    """Texts -> ids without special tokens; refuses text that spells a special token (an
    instruction containing "<image>" would otherwise add an image placeholder to the prompt)."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(encoded):
        bad = special_ids.intersection(ids)
        if bad:
            names = tokenizer.convert_ids_to_tokens(sorted(bad))
            raise InputError(field, f"item {i} contains special tokens {names}")
    return encoded


def prompt_ids(prompt: PromptFormat, tokenizer, instructions: Sequence[str], special_ids: set[int],
               field: str = "instruction") -> list[np.ndarray]:
    """Instructions -> full prompt ids (`PromptFormat.build_input_ids`: image tokens, bos, text,
    suffix, or bos, text, image tokens, suffix), one 1-D array each."""
    texts = [prompt.text(i) for i in instructions]  # validates each instruction
    return [prompt.build_input_ids(ids) for ids in tokenize_texts(tokenizer, texts, special_ids, field)]


def _pad(rows: Sequence[np.ndarray], value: int, left: bool) -> np.ndarray:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, r in enumerate(rows):
        if left:
            out[i, width - len(r):] = r
        else:
            out[i, : len(r)] = r
    return out


def generation_batch(prompts: Sequence[np.ndarray], pad_id: int, prefix_lm: bool) -> dict[str, torch.Tensor]:
    """Left-padded prompts; for a prefix-LM every prompt token is prefix (token_type_ids 0)."""
    ids = _pad(prompts, pad_id, left=True)
    mask = _pad([np.ones(len(p), np.int64) for p in prompts], 0, left=True)
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if prefix_lm:
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return batch


def target_batch(prompts: Sequence[np.ndarray], targets: Sequence[np.ndarray], pad_id: int,
                 prefix_lm: bool) -> dict[str, torch.Tensor]:
    """Right-padded prompt + target (teacher forcing), labels on the target tokens only.

    Returns input_ids, attention_mask, labels, target_positions (B, L) with L = the longest
    target (-1 where a row's target is shorter) and, for a prefix-LM, token_type_ids
    (0 = prompt, attended bidirectionally; 1 = target, causal: PaliGemma's "suffix").
    """
    if len(prompts) != len(targets):
        raise InputError("targets", f"{len(targets)} targets for {len(prompts)} prompts")
    rows = [np.concatenate([p, np.asarray(t, np.int64)]) for p, t in zip(prompts, targets)]
    is_target = [np.concatenate([np.zeros(len(p), np.int64), np.ones(len(t), np.int64)])
                 for p, t in zip(prompts, targets)]
    ids = _pad(rows, pad_id, left=False)
    mask = _pad([np.ones(len(r), np.int64) for r in rows], 0, left=False)
    target = _pad(is_target, 0, left=False).astype(bool)
    # HF shifts labels inside the loss: labels[t] is predicted from position t - 1.
    labels = np.where(target, ids, IGNORE_INDEX)
    positions = _pad([len(p) + np.arange(len(t)) for p, t in zip(prompts, targets)], -1, left=False)
    batch = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels),
        "target_positions": torch.from_numpy(positions),
    }
    if prefix_lm:
        batch["token_type_ids"] = torch.from_numpy(target.astype(np.int64))
    return batch
