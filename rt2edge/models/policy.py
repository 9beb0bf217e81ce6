"""VLAPolicy: an RT-2-style vision-language-action policy on a Hugging Face VLM.

It owns the model and everything that turns observations into model inputs and action tokens
back into actions: the text tokenizer, the prompt format, the image preprocessing and the action
tokenizer. Training, distillation, quantization and export all go through it, so they share one
definition of "the prompt", "the action positions" and "the action logits".
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForImageTextToText, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from rt2edge.actions import ActionStatistics, ActionTokenizer
from rt2edge.errors import ArtifactError, ConfigError, InputError
from rt2edge.models import checkpoint
from rt2edge.models.action_vocab import (
    ActionVocabConfig,
    as_dataset_statistics,
    fit_embeddings,
    make_action_tokenizer,
)
from rt2edge.models.batching import generation_batch, prompt_ids, target_batch, tokenize_texts
from rt2edge.models.decoding import generate_action_ids
from rt2edge.models.families import count_parameters, family_for_config, get_family
from rt2edge.models.text_tokenizer import image_token_id
from rt2edge.observation import RT2_PROMPT_TEMPLATE, ImagePreprocessing, PromptFormat, validate_images

# Co-training (RT-2) asks VQA questions as they are, without the action template.
QUESTION_TEMPLATE = "{instruction}"


class VLAPolicy(nn.Module):
    """See the module docstring. Build with `from_model` (or a preset), load with `from_pretrained`."""

    # One decoder pass per action token (rt2edge.models.parallel: one pass per action).
    decoding = "autoregressive"

    def __init__(self, model: PreTrainedModel, text_tokenizer: PreTrainedTokenizerFast,
                 action_tokenizer: ActionTokenizer, prompt: PromptFormat,
                 image_preprocessing: ImagePreprocessing, family: str,
                 dataset_statistics: Mapping[str, ActionStatistics] | None = None,
                 default_unnorm_key: str | None = None):
        super().__init__()
        self.model = model
        self.text_tokenizer = text_tokenizer
        self.action_tokenizer = action_tokenizer
        self.prompt = prompt
        self.image_preprocessing = image_preprocessing
        self.family = family
        self.dataset_statistics = dict(dataset_statistics or {})
        self.default_unnorm_key = default_unnorm_key
        self._family = get_family(family)
        self._special_ids = set(int(i) for i in text_tokenizer.all_special_ids)
        self._check_consistent()

    def _check_consistent(self) -> None:
        """Every component must describe the same model; a mismatch here would otherwise surface
        as a shape error deep inside HF, or worse as silently wrong actions."""
        config = self.model.config
        if config.model_type != self._family.model_type:
            raise ConfigError("family", f"{self.family!r} expects model_type {self._family.model_type!r}, "
                                        f"the model is {config.model_type!r}")
        if self.prompt.image_token_id != config.image_token_id:
            raise ConfigError("prompt.image_token_id",
                              f"{self.prompt.image_token_id} != model image_token_id {config.image_token_id}")
        n_image = self._family.num_image_tokens(config)
        if self.prompt.num_image_tokens != n_image:
            raise ConfigError("prompt.num_image_tokens",
                              f"{self.prompt.num_image_tokens} != the {n_image} the vision tower makes")
        if self.image_preprocessing.size != self._family.image_size(config):
            raise ConfigError("image_preprocessing.size",
                              f"{self.image_preprocessing.size} != vision image_size {self._family.image_size(config)}")
        rows = self.model.get_input_embeddings().num_embeddings
        if self.action_tokenizer.total_vocab_size > rows:
            raise ConfigError("action_tokenizer", f"needs {self.action_tokenizer.total_vocab_size} embedding "
                                                  f"rows, the model has {rows}")
        if self.default_unnorm_key is not None and self.default_unnorm_key not in self.dataset_statistics:
            raise ConfigError("default_unnorm_key", f"{self.default_unnorm_key!r} is not one of "
                                                    f"{sorted(self.dataset_statistics)}")

    # --------------------------------------------------------------------------- construction
    @classmethod
    def from_model(cls, model: PreTrainedModel, text_tokenizer: PreTrainedTokenizerFast,
                   action: ActionVocabConfig = ActionVocabConfig(),
                   corpus: Iterable[str] | None = None, statistics: Any = None,
                   image_preprocessing: ImagePreprocessing | None = None,
                   template: str = RT2_PROMPT_TEMPLATE, instruction_first: bool = False) -> VLAPolicy:
        """Turn a HF VLM (random or pretrained) + its text tokenizer into a VLA policy.

        statistics: None, one ActionStatistics, or {dataset name: ActionStatistics}; the first
        dataset is the default `unnorm_key`. corpus: the text whose token counts choose the ids
        for the `least_frequent` strategy (ignored otherwise). instruction_first: the prompt's
        layout (see PromptFormat).
        """
        family = family_for_config(model.config)
        datasets = as_dataset_statistics(statistics)
        default_key = next(iter(datasets), None)
        action_tokenizer = make_action_tokenizer(
            action, model.get_input_embeddings().num_embeddings, text_tokenizer, corpus,
            datasets.get(default_key) if default_key else None)
        fit_embeddings(model, action_tokenizer)
        suffix = text_tokenizer(family.prompt_suffix, add_special_tokens=False)["input_ids"]
        prompt = PromptFormat(
            image_token_id=image_token_id(text_tokenizer),
            num_image_tokens=family.num_image_tokens(model.config),
            bos_token_id=text_tokenizer.bos_token_id,
            template=template,
            suffix_ids=tuple(suffix),
            instruction_first=instruction_first,
        )
        preprocessing = image_preprocessing or ImagePreprocessing(size=family.image_size(model.config))
        return cls(model, text_tokenizer, action_tokenizer, prompt, preprocessing, family.name,
                   datasets, default_key)

    # --------------------------------------------------------------------------- batches
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _observations(self, images: Any, texts: str | Sequence[str], field: str) -> tuple[torch.Tensor, list[str]]:
        batch = validate_images(images)
        if isinstance(texts, str):
            texts = [texts] * batch.shape[0]  # one instruction for the whole batch
        elif not isinstance(texts, Sequence) or len(texts) != batch.shape[0]:
            n = len(texts) if isinstance(texts, Sequence) else type(texts).__name__
            raise InputError(field, f"expected a str or {batch.shape[0]} strings (one per image), got {n}")
        pixels = torch.from_numpy(self.image_preprocessing(batch))
        return pixels, list(texts)

    def _to_device(self, batch: dict[str, torch.Tensor], pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        batch["pixel_values"] = pixels.to(dtype=self.dtype)
        return {k: v.to(self.device) for k, v in batch.items()}

    def encode_observations(self, images: Any, instructions: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Images ((H,W,3) or (B,H,W,3) uint8) + instructions -> left-padded generation inputs."""
        pixels, texts = self._observations(images, instructions, "instruction")
        prompts = prompt_ids(self.prompt, self.text_tokenizer, texts, self._special_ids)
        batch = generation_batch(prompts, self.text_tokenizer.pad_token_id, self._family.prefix_lm)
        return self._to_device(batch, pixels)

    def build_training_batch(self, images: Any, instructions: str | Sequence[str],
                             actions: Any) -> dict[str, torch.Tensor]:
        """Prompt + the action tokens of `actions` (B, action_dim), real units (teacher forcing).

        labels are -100 except at the action tokens; action_positions (B, tokens_per_action) says
        where they are (for `action_logits`); a prefix-LM family gets token_type_ids with the
        action tokens as the causal suffix.
        """
        arr = np.asarray(actions, dtype=np.float64)
        arr = arr[None] if arr.ndim == 1 else arr
        if arr.ndim != 2:
            raise InputError("actions", f"expected shape (B, {self.action_tokenizer.action_dim}), "
                                        f"got {np.shape(actions)}")
        targets = self.action_tokenizer.encode(arr)  # checks the action dim and finiteness
        return self.build_action_token_batch(images, instructions, targets)

    def build_action_token_batch(self, images: Any, instructions: str | Sequence[str],
                                 action_ids: Any) -> dict[str, torch.Tensor]:
        """`build_training_batch` with the action tokens given as ids (B, tokens_per_action), e.g. a
        model's own greedy tokens (teacher forcing on them reproduces its decode step by step)."""
        pixels, texts = self._observations(images, instructions, "instruction")
        ids = np.asarray(action_ids)
        if ids.shape != (len(texts), self.action_tokenizer.tokens_per_action):
            raise InputError("actions", f"expected {len(texts)} actions of "
                                        f"{self.action_tokenizer.tokens_per_action} tokens, got shape {ids.shape}")
        self.action_tokenizer.ids_to_bins(ids)  # refuses any id that is not an action token
        prompts = prompt_ids(self.prompt, self.text_tokenizer, texts, self._special_ids)
        batch = target_batch(prompts, list(ids.astype(np.int64)), self.text_tokenizer.pad_token_id,
                             self._family.prefix_lm)
        batch["action_positions"] = batch.pop("target_positions")
        return self._to_device(batch, pixels)

    def build_text_batch(self, images: Any, questions: str | Sequence[str],
                         answers: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Co-training (RT-2): image + question -> answer text (+ eos), labels on the answer.

        Questions use the bare "{instruction}" template instead of the action prompt.
        """
        pixels, texts = self._observations(images, questions, "question")
        answers = [answers] * len(texts) if isinstance(answers, str) else list(answers)
        if len(answers) != len(texts):
            raise InputError("answers", f"expected {len(texts)} answers, got {len(answers)}")
        if not all(isinstance(a, str) and a.strip() for a in answers):
            raise InputError("answers", "every answer must be a non-empty string")
        question_prompt = replace(self.prompt, template=QUESTION_TEMPLATE)
        prompts = prompt_ids(question_prompt, self.text_tokenizer, texts, self._special_ids, "question")
        answer_ids = tokenize_texts(self.text_tokenizer, answers, self._special_ids, "answers")
        targets = [np.asarray(ids + [self.text_tokenizer.eos_token_id], np.int64) for ids in answer_ids]
        batch = target_batch(prompts, targets, self.text_tokenizer.pad_token_id, self._family.prefix_lm)
        del batch["target_positions"]  # answers vary in length: no fixed action positions here
        return self._to_device(batch, pixels)

    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keys of `batch` the HF model reads (labels included when present)."""
        missing = [k for k in self._family.batch_keys if k not in batch]
        if missing:
            raise InputError("batch", f"lacks {missing} (family {self.family!r} needs {self._family.batch_keys})")
        keys = self._family.batch_keys + (("labels",) if "labels" in batch else ())
        return {k: batch[k] for k in keys}

    # --------------------------------------------------------------------------- forward
    def forward(self, batch: Mapping[str, torch.Tensor]):
        """The HF model's output on a batch; `.loss` is the next-token loss on the labels."""
        return self.model(**self.model_inputs(batch), use_cache=False)

    def action_logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, tokens_per_action, n_bins) logits over the action bins, in bin order, at the action
        positions of a `build_training_batch` batch (teacher forcing).

        Only the n_bins action rows of the LM head are applied: the same "constrained action
        head" the exported decoder carries, and what distillation matches between models.
        """
        if "action_positions" not in batch:
            raise InputError("batch", "has no action_positions; build it with build_training_batch")
        inputs = self.model_inputs(batch)
        inputs.pop("labels", None)
        hidden = self._family.backbone(self.model)(**inputs, use_cache=False).last_hidden_state
        # The token at position p is predicted from the hidden state at p - 1.
        source = batch["action_positions"].to(hidden.device) - 1
        gathered = hidden.gather(1, source[..., None].expand(-1, -1, hidden.shape[-1]))
        return self._action_head(gathered)

    def _action_head(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.get_output_embeddings()
        ids = torch.as_tensor(self.action_tokenizer.allowed_ids, device=hidden.device)
        if type(head.weight) is torch.nn.Parameter and head.weight.is_floating_point():
            logits = hidden @ head.weight[ids].T
            if head.bias is not None:
                logits = logits + head.bias[ids]
        else:
            # A quantized head (bitsandbytes Int8Params / Params4bit) stores codes, not rows:
            # indexing them would give garbage. Its own forward dequantizes; then keep the action rows.
            logits = head(hidden)[..., ids].to(hidden.dtype)
        softcap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        if softcap:  # Gemma-2-style decoders squash logits; the full head does the same
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    # --------------------------------------------------------------------------- prediction
    def predict_action_tokens(self, images: Any, instructions: str | Sequence[str]) -> np.ndarray:
        """Greedy constrained decode: (B, tokens_per_action) action-token ids, never anything else."""
        inputs = self.encode_observations(images, instructions)
        ids = generate_action_ids(self.model, inputs, self.action_tokenizer, self.text_tokenizer.pad_token_id)
        return ids.cpu().numpy().astype(np.int64)

    def tokenizer_for(self, unnorm_key: str | None = None) -> ActionTokenizer:
        """The action tokenizer that unnormalizes with dataset `unnorm_key`'s statistics (None:
        the default dataset). Token ids and bins are shared; only the statistics differ."""
        if unnorm_key is None or unnorm_key == self.default_unnorm_key:
            return self.action_tokenizer
        if not isinstance(unnorm_key, str) or unnorm_key not in self.dataset_statistics:
            known = sorted(self.dataset_statistics) or "none (actions are not normalized)"
            raise InputError("unnorm_key",
                             f"unknown dataset {unnorm_key!r}; this checkpoint has statistics for {known}")
        return replace(self.action_tokenizer, statistics=self.dataset_statistics[unnorm_key])

    def predict_action(self, image: Any, instruction: str | Sequence[str],
                       unnorm_key: str | None = None) -> np.ndarray:
        """Continuous action(s) in real units: (action_dim,) for one (H,W,3) image, else (B, action_dim)."""
        action_tokenizer = self.tokenizer_for(unnorm_key)  # fail before running the model
        tokens = self.predict_action_tokens(image, instruction)
        actions = action_tokenizer.decode(tokens)
        single = isinstance(image, np.ndarray) and image.ndim == 3
        return actions[0] if single else actions

    # --------------------------------------------------------------------------- introspection
    def parameter_counts(self) -> dict[str, int]:
        """vision / projector / language / head / total (a tied head counts 0: it is the embedding)."""
        return count_parameters(self._family, self.model)

    def metadata(self) -> checkpoint.CheckpointMetadata:
        return checkpoint.CheckpointMetadata(
            family=self.family, action_tokenizer=self.action_tokenizer,
            dataset_statistics=self.dataset_statistics, default_unnorm_key=self.default_unnorm_key,
            prompt=self.prompt, image_preprocessing=self.image_preprocessing)

    # --------------------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the checkpoint atomically (temp folder + rename); rt2edge.json last."""
        with checkpoint.atomic_directory(directory) as tmp:
            self.model.save_pretrained(tmp)  # safetensors: transformers 5 never pickles weights
            self.text_tokenizer.save_pretrained(tmp)
            checkpoint.write_metadata(tmp, self.metadata())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, trust_remote_code: bool = False,
                        **model_kwargs: Any) -> VLAPolicy:
        """Load a checkpoint; weights only from safetensors (never unpickled). `trust_remote_code`
        is passed to transformers unchanged (keep it False unless you trust the folder)."""
        meta = checkpoint.read_metadata(directory)
        if meta.decoding != cls.decoding:
            if cls is not VLAPolicy:
                raise ArtifactError(f"{directory}: holds a {meta.decoding!r} policy, not a {cls.decoding!r} one; "
                                    "load it with VLAPolicy.from_pretrained (ParallelVLAPolicy.from_autoregressive "
                                    "turns an autoregressive policy into a parallel one)")
            cls = _policy_class(meta.decoding)  # the class the checkpoint was saved from
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                directory, use_safetensors=True, trust_remote_code=trust_remote_code, **model_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{directory}: cannot load the model or tokenizer: {exc}") from exc
        try:
            return cls._from_checkpoint(model.eval(), tokenizer, meta)
        except ConfigError as exc:
            raise ArtifactError(f"{directory}: rt2edge.json disagrees with the model: {exc}") from exc

    @classmethod
    def _from_checkpoint(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast,
                         meta: checkpoint.CheckpointMetadata) -> VLAPolicy:
        return cls(model, tokenizer, meta.action_tokenizer, meta.prompt, meta.image_preprocessing,
                   meta.family, meta.dataset_statistics, meta.default_unnorm_key)


def _policy_class(decoding: str) -> type[VLAPolicy]:
    if decoding == "parallel":
        from rt2edge.models.parallel import ParallelVLAPolicy  # imports this module: resolved late

        return ParallelVLAPolicy
    return VLAPolicy
