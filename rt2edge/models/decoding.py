"""Constrained action decoding with HF `generate()`: only action-token ids are ever eligible."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from rt2edge.actions import ActionTokenizer


class ActionTokenLogitsProcessor(LogitsProcessor):
    """Sets every logit outside `allowed_ids` to -inf, so greedy decoding (or sampling) can only
    pick an action token, whatever the weights: the decode-time half of RT-2's action vocabulary."""

    def __init__(self, allowed_ids: np.ndarray):
        self.allowed_ids = torch.as_tensor(np.asarray(allowed_ids, dtype=np.int64))
        self._mask: torch.Tensor | None = None

    def _allowed_mask(self, scores: torch.Tensor) -> torch.Tensor:
        # Built once per vocabulary width: the LM head may be wider than the vocabulary (padded).
        if self._mask is None or self._mask.shape[0] != scores.shape[-1] or self._mask.device != scores.device:
            mask = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
            mask[self.allowed_ids.to(scores.device)] = True
            self._mask = mask
        return self._mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.masked_fill(~self._allowed_mask(scores), float("-inf"))


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Inference without dropout, restoring the caller's train/eval mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def generate_action_ids(model: PreTrainedModel, inputs: dict[str, torch.Tensor],
                        action_tokenizer: ActionTokenizer, pad_token_id: int) -> torch.Tensor:
    """Greedy constrained decode of one action per row: (B, tokens_per_action) token ids."""
    steps = action_tokenizer.tokens_per_action
    config = GenerationConfig(
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_token_id,
        eos_token_id=None,  # an action has a fixed number of tokens; eos is masked anyway
    )
    processors = LogitsProcessorList([ActionTokenLogitsProcessor(action_tokenizer.allowed_ids)])
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad(), eval_mode(model):
        out = model.generate(**inputs, generation_config=config, logits_processor=processors)
    return out[:, prompt_len:]
