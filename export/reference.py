"""A numpy + ONNX Runtime reference of the artifact's constrained decode loop, for validation.

It runs the loop exactly as docs/artifact-format.md states it ("Constrained decode in the
runtime"), and additionally exposes what the robot runtime has no use for: the image embeddings,
the action logits of every step, and teacher forcing (feed given bins instead of the argmax),
so that export validation can compare every step against torch on the same context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rt2edge.artifact import cache_names
from rt2edge.optional import require


@dataclass
class DecodeTrace:
    """One constrained decode of a batch: what validation compares."""

    image_embeds: np.ndarray        # (B, N, D)
    step_logits: list[np.ndarray]   # tokens_per_action arrays of (B, n_bins); [0] is the prefill
    bins: np.ndarray                # (B, tokens_per_action) chosen bins (argmax or forced)
    graph_bins: np.ndarray          # (B, tokens_per_action) the graph's own `action_bin` output


class OnnxDecodeRunner:
    """Sessions on vision/embed/decoder.onnx of one artifact folder (CPU EP by default)."""

    def __init__(self, folder: str | Path, *, num_layers: int, num_kv_heads: int, head_dim: int,
                 prefix_lm: bool, image_token_id: int, action_token_ids: Sequence[int],
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        ort = require("onnxruntime", extra="cpu", purpose="validating exported graphs")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        folder = Path(folder)
        self.sessions = {name: ort.InferenceSession(str(folder / f"{name}.onnx"), options,
                                                    providers=list(providers))
                         for name in ("vision", "embed", "decoder")}
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.prefix_lm = prefix_lm
        self.image_token_id = int(image_token_id)
        self.token_ids = np.asarray(action_token_ids, dtype=np.int64)
        # [Contract] the embedding fed after an action step is `embed(token_ids[bin])`; computed
        # once for all bins (the runtime caches it at load).
        self.bin_embeds = self.embed(self.token_ids[None])[0]

    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.sessions["vision"].run(None, {"pixel_values": pixel_values.astype(np.float32)})[0]

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        return self.sessions["embed"].run(None, {"input_ids": input_ids.astype(np.int64)})[0]

    def prompt_embeds(self, prompt_ids: np.ndarray, image_embeds: np.ndarray) -> np.ndarray:
        """Image embeddings at the image-token positions, text embeddings elsewhere."""
        is_image = prompt_ids == self.image_token_id
        counts = is_image.sum(axis=1)
        if not np.all(counts == image_embeds.shape[1]):
            raise ValueError(f"prompts hold {counts.tolist()} image tokens, the vision graph gives "
                             f"{image_embeds.shape[1]} embeddings per image")
        # The image id's own row is never used; 0 keeps the gather in range for any id.
        embeds = self.embed(np.where(is_image, 0, prompt_ids))
        embeds[is_image] = image_embeds.reshape(-1, image_embeds.shape[-1])
        return embeds

    def step(self, inputs_embeds: np.ndarray, past: list[np.ndarray], past_length: int,
             prefix_length: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        feed = {"inputs_embeds": inputs_embeds.astype(np.float32),
                "past_length": np.array([past_length], np.int64),
                "prefix_length": np.array([prefix_length], np.int64)}
        feed.update(zip(cache_names(self.num_layers, "past"), past))
        logits, bins, *present = self.sessions["decoder"].run(None, feed)
        return logits, bins, present

    def decode(self, pixel_values: np.ndarray, prompt_ids: np.ndarray, steps: int,
               forced_bins: np.ndarray | None = None) -> DecodeTrace:
        """Prefill + (steps - 1) decode runs. prompt_ids: (B, L) of equal-length prompts (the
        graphs take no padding mask). forced_bins (B, steps): teacher forcing."""
        prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
        batch, length = prompt_ids.shape
        image_embeds = self.vision(pixel_values)
        hidden = self.prompt_embeds(prompt_ids, image_embeds)
        past = [np.zeros((batch, self.num_kv_heads, 0, self.head_dim), np.float32)
                for _ in range(2 * self.num_layers)]
        # [Contract] prefix_length = the prompt length for a prefix-LM (the whole prompt attends
        # bidirectionally, HF PaliGemma's token_type_ids == 0), 0 for causal models.
        prefix = length if self.prefix_lm else 0
        past_length = 0
        logits_per_step, chosen, graph_bins = [], [], []
        for i in range(steps):
            logits, bins, past = self.step(hidden, past, past_length, prefix)
            past_length += hidden.shape[1]
            pick = bins if forced_bins is None else np.asarray(forced_bins)[:, i]
            logits_per_step.append(logits)
            chosen.append(pick)
            graph_bins.append(bins)
            hidden = self.bin_embeds[pick][:, None, :]
        return DecodeTrace(image_embeds, logits_per_step, np.stack(chosen, 1), np.stack(graph_bins, 1))
