"""ParallelVLAPolicy: every action token from one decoder pass (OpenVLA-OFT's parallel decoding).

After the prompt come `tokens_per_action` action *slots*: token ids of their own, appended to the
embedding table after every existing row, so the slot queries are learned embeddings saved with the
HF model like any other row (and no text can spell them). One forward pass runs prompt + slots with

    key k visible to query q  iff  k <= q (causal, as in VLAPolicy)  or  k and q are both slots

so each slot sees the whole prompt and every other slot (bidirectional among the slots), and the
constrained action head on slot i's hidden state gives the n_bins logits of action dim i. Nothing is
fed back: a control step is one decoder pass instead of tokens_per_action.

Training contract: `action_logits(batch)` is (B, tokens_per_action, n_bins), as VLAPolicy's, on the
batches `build_training_batch` / `build_action_token_batch` make, so losses written against
VLAPolicy (distillation on the 256-way distributions, CE on the target bins) train this policy
unchanged. Those batches carry the targets as `action_targets` but no next-token `labels`: a slot
has no next token, and a loop that trains HF's own shifted LM loss with the causal mask would train
the wrong objective, so it finds nothing to train on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from rt2edge.errors import ConfigError, InputError
from rt2edge.models import checkpoint
from rt2edge.models.batching import prompt_ids, target_batch
from rt2edge.models.decoding import eval_mode
from rt2edge.models.policy import VLAPolicy


@dataclass(frozen=True)
class ParallelDecodingConfig:
    """rt2edge.json `decoding_config` of a parallel policy: the slot token ids, in action-dim order."""

    slot_token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        ids = self.slot_token_ids
        if (not isinstance(ids, (tuple, list)) or not ids
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
            raise ConfigError("decoding_config.slot_token_ids", f"must be a non-empty list of ids >= 0, got {ids!r}")
        if len(set(ids)) != len(ids):
            raise ConfigError("decoding_config.slot_token_ids", f"must be distinct, got {list(ids)}")
        object.__setattr__(self, "slot_token_ids", tuple(ids))

    def to_dict(self) -> dict[str, Any]:
        return {"slot_token_ids": list(self.slot_token_ids)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParallelDecodingConfig:
        unknown = sorted(set(data) - {"slot_token_ids"})
        if unknown:
            raise ConfigError("decoding_config", f"unknown keys {unknown}")
        if "slot_token_ids" not in data:
            raise ConfigError("decoding_config.slot_token_ids", "is missing")
        return cls(tuple(data["slot_token_ids"]))


def slot_attention_mask(padding_mask: torch.Tensor, slot_positions: torch.Tensor,
                        dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, T, T) mask of a right-padded prompt + slots batch. [Contract] key k is visible
    to query q iff k is not padding and (k <= q or both are slots of the row). HF takes a 4-D mask
    as is (eager and SDPA alike), so the model's own forward runs the parallel pass."""
    length = padding_mask.shape[1]
    pos = torch.arange(length, device=padding_mask.device)
    causal = pos[None, :] <= pos[:, None]
    is_slot = torch.zeros(padding_mask.shape, dtype=torch.bool, device=padding_mask.device)
    is_slot.scatter_(1, slot_positions.to(padding_mask.device), True)
    visible = (causal[None] | (is_slot[:, :, None] & is_slot[:, None, :])) & padding_mask.bool()[:, None, :]
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=padding_mask.device)
    return torch.where(visible, torch.zeros((), dtype=dtype, device=padding_mask.device), blocked)[:, None]


class ParallelVLAPolicy(VLAPolicy):
    """See the module docstring. Build with `from_autoregressive` or `build_preset(..., decoding=
    "parallel")`; `VLAPolicy.from_pretrained` returns this class for a parallel checkpoint."""

    decoding = "parallel"

    def __init__(self, model: PreTrainedModel, text_tokenizer: PreTrainedTokenizerFast, action_tokenizer,
                 prompt, image_preprocessing, family: str, dataset_statistics=None,
                 default_unnorm_key: str | None = None, *, slots: ParallelDecodingConfig):
        super().__init__(model, text_tokenizer, action_tokenizer, prompt, image_preprocessing, family,
                         dataset_statistics, default_unnorm_key)
        self.slots = slots
        self._check_slots()

    def _check_slots(self) -> None:
        _check_family(self._family, self.family)
        ids, steps = self.slots.slot_token_ids, self.action_tokenizer.tokens_per_action
        if len(ids) != steps:
            raise ConfigError("decoding_config.slot_token_ids", f"{len(ids)} slots for {steps} action tokens")
        rows = self.model.get_input_embeddings().num_embeddings
        if max(ids) >= rows:
            raise ConfigError("decoding_config.slot_token_ids", f"id {max(ids)} >= the {rows} embedding rows")
        if min(ids) < len(self.text_tokenizer):
            raise ConfigError("decoding_config.slot_token_ids",
                              f"id {min(ids)} is a text token: an instruction could spell a slot")
        clash = sorted(set(ids) & set(int(i) for i in self.action_tokenizer.token_ids))
        if clash:
            raise ConfigError("decoding_config.slot_token_ids", f"ids {clash} are action tokens")

    # --------------------------------------------------------------------------- construction
    @classmethod
    def from_autoregressive(cls, policy: VLAPolicy, seed: int = 0, copy_model: bool = True) -> ParallelVLAPolicy:
        """A parallel policy with `policy`'s weights and tokenizers plus tokens_per_action new slot
        rows, drawn from N(mean, diag(var)) of the existing rows (seeded by `seed`): in-distribution
        inputs, and distinct ones. HF's mean-resizing would not do: it samples with 1e-9 times the
        covariance, i.e. gives every slot the same mean row, and the slots, attending to each other
        bidirectionally, then differ only by their RoPE positions (measured: a tiny model trained on
        such slots predicts one marginal for every dim). copy_model=False grows `policy.model` itself."""
        if isinstance(policy, ParallelVLAPolicy):
            raise ConfigError("policy", "is already a parallel policy")
        _check_family(policy._family, policy.family)  # before any copy of a large model
        model = copy.deepcopy(policy.model) if copy_model else policy.model
        rows = model.get_input_embeddings().num_embeddings
        steps = policy.action_tokenizer.tokens_per_action
        # The LM head grows too (untied models): its slot rows are never read, the action head
        # holds only the action-token rows.
        model.resize_token_embeddings(rows + steps, mean_resizing=False)
        model.config.get_text_config().vocab_size = rows + steps
        with torch.no_grad():
            table = model.get_input_embeddings().weight
            old = table[:rows].float()
            noise = torch.randn(steps, table.shape[1], generator=torch.Generator().manual_seed(seed))
            table[rows:] = (old.mean(0) + old.std(0) * noise.to(old.device)).to(table.dtype)
        slots = ParallelDecodingConfig(tuple(range(rows, rows + steps)))
        return cls(model, policy.text_tokenizer, policy.action_tokenizer, policy.prompt, policy.image_preprocessing,
                   policy.family, policy.dataset_statistics, policy.default_unnorm_key, slots=slots)

    @classmethod
    def _from_checkpoint(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast,
                         meta: checkpoint.CheckpointMetadata) -> ParallelVLAPolicy:
        return cls(model, tokenizer, meta.action_tokenizer, meta.prompt, meta.image_preprocessing, meta.family,
                   meta.dataset_statistics, meta.default_unnorm_key,
                   slots=ParallelDecodingConfig.from_dict(meta.decoding_config))

    def metadata(self) -> checkpoint.CheckpointMetadata:
        return replace(super().metadata(), decoding=self.decoding, decoding_config=self.slots.to_dict())

    # --------------------------------------------------------------------------- batches
    def _slot_batch(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        prompts = prompt_ids(self.prompt, self.text_tokenizer, texts, self._special_ids)
        slots = np.asarray(self.slots.slot_token_ids, np.int64)
        # Right-padded like a training batch, so every row's positions start at 0 (as on the robot).
        batch = target_batch(prompts, [slots] * len(prompts), self.text_tokenizer.pad_token_id, prefix_lm=False)
        del batch["labels"]
        batch["action_positions"] = batch.pop("target_positions")
        return batch

    def slot_batch(self, images: Any, instructions: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Observations -> prompt + slots (no targets): what `predict_action_tokens` runs."""
        pixels, texts = self._observations(images, instructions, "instruction")
        return self._to_device(self._slot_batch(texts), pixels)

    def build_action_token_batch(self, images: Any, instructions: str | Sequence[str],
                                 action_ids: Any) -> dict[str, torch.Tensor]:
        """The slot batch of the observations, with `action_ids` (B, tokens_per_action) as
        `action_targets`. The targets are not model inputs: the logits do not depend on them."""
        pixels, texts = self._observations(images, instructions, "instruction")
        ids = np.asarray(action_ids)
        steps = self.action_tokenizer.tokens_per_action
        if ids.shape != (len(texts), steps):
            raise InputError("actions", f"expected {len(texts)} actions of {steps} tokens, got shape {ids.shape}")
        self.action_tokenizer.ids_to_bins(ids)  # refuses any id that is not an action token
        batch = self._slot_batch(texts)
        batch["action_targets"] = torch.from_numpy(ids.astype(np.int64))
        return self._to_device(batch, pixels)

    # --------------------------------------------------------------------------- forward
    def forward(self, batch: Mapping[str, torch.Tensor]):
        if "action_positions" in batch:
            raise InputError("batch", "is a slot batch: HF's forward would run it causally; use action_logits")
        return super().forward(batch)  # text (VQA) batches are ordinary next-token batches

    def action_logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, tokens_per_action, n_bins) action-bin logits of one pass; slot i gives action dim i."""
        if "action_positions" not in batch:
            raise InputError("batch", "has no action_positions; build it with build_training_batch")
        inputs = self.model_inputs(batch)
        inputs.pop("labels", None)
        positions = batch["action_positions"].to(inputs["input_ids"].device)
        slots = torch.as_tensor(self.slots.slot_token_ids, device=positions.device)
        if positions.min() < 0 or not torch.equal(inputs["input_ids"].gather(1, positions),
                                                  slots[None].expand_as(positions)):
            raise InputError("batch", "holds no action slots at action_positions; build it with this "
                                      "policy's build_training_batch (a VLAPolicy batch feeds action tokens)")
        inputs["attention_mask"] = slot_attention_mask(inputs["attention_mask"], positions, self.dtype)
        hidden = self._family.backbone(self.model)(**inputs, use_cache=False).last_hidden_state
        # No shift: slot i's own hidden state predicts action dim i.
        gathered = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
        return self._action_head(gathered)

    def predict_action_tokens(self, images: Any, instructions: str | Sequence[str]) -> np.ndarray:
        """Greedy constrained decode in one pass: (B, tokens_per_action) action-token ids."""
        batch = self.slot_batch(images, instructions)
        with torch.no_grad(), eval_mode(self.model):
            logits = self.action_logits(batch)
        bins = logits.argmax(-1).cpu().numpy()  # first index on ties, as the exported ArgMax
        return self.action_tokenizer.token_ids[bins].astype(np.int64)


def _check_family(family, name: str) -> None:
    if family.prefix_lm:
        raise ConfigError("family", f"parallel decoding supports causal decoders (family 'llava': llama, "
                                    f"qwen2); {name!r} is a prefix-LM and is not supported")
