"""The three artifact graphs as thin torch modules around a Hugging Face VLM's own submodules.

    VisionGraph   pixel_values (B, 3, S, S)            -> image_embeds (B, N, D)
    EmbedGraph    input_ids (B, T)                     -> inputs_embeds (B, T, D)
    DecoderGraph  inputs_embeds, past_length, prefix_length, past.{i}.key/value
                  -> action_logits (B, n_bins), action_bin (B), present.{i}.key/value

Interfaces are float32 whatever the weights are: an fp16 graph casts at its entry and exit
(docs/artifact-format.md), so the runtime never changes with the precision.

The decoder runs HF's decoder layers unchanged; only the KV cache (plain tensors instead of a
`DynamicCache`, which torch.export cannot take as an input), the attention mask and the head are
ours. The head holds only the n_bins LM-head rows of the action token ids, in bin order.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

FLOAT = torch.float32


class ExplicitKVCache:
    """The one cache method HF attention calls, `update(k, v, layer_idx)`, over plain tensors.

    It appends the new keys/values to the given past ones and remembers the result as the layer's
    `present` output. Built inside `DecoderGraph.forward`, so torch.export only sees tensors.
    """

    def __init__(self, past: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        self.past = list(past)
        self.present: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.past)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        past_key, past_value = self.past[layer_idx]
        key = torch.cat([past_key.to(key.dtype), key], dim=2)
        value = torch.cat([past_value.to(value.dtype), value], dim=2)
        self.present[layer_idx] = (key, value)
        return key, value


@contextlib.contextmanager
def eager_attention(config) -> Iterator[None]:
    """Trace HF's eager attention (matmul + additive mask + softmax): it lowers to plain ONNX ops
    that every runtime and TensorRT accept, where SDPA/flash kernels lower to fused or opset-23
    ops. Restored afterwards so the torch model the caller keeps is unchanged."""
    saved = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = saved


class VisionGraph(nn.Module):
    def __init__(self, vision: nn.Module):
        super().__init__()
        self.vision = vision  # ExportAdapter.vision_module: tower + projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vision.parameters()).dtype
        return self.vision(pixel_values.to(dtype)).to(FLOAT)


class EmbedGraph(nn.Module):
    """The full text embedding table: prompts are text, only the head is action-only."""

    def __init__(self, embed_tokens: nn.Module):
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids).to(FLOAT)


def action_head_rows(lm_head: nn.Linear, token_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[Contract] row b of the action head = LM-head row of `token_ids[b]` (bin order), so
    argmax over the head is the bin index and `token_ids[argmax]` the token HF would emit."""
    index = torch.as_tensor(list(token_ids), dtype=torch.long, device=lm_head.weight.device)
    weight = lm_head.weight.detach()[index].clone()
    bias = None if lm_head.bias is None else lm_head.bias.detach()[index].clone()
    return weight, bias


def prefix_attention_mask(query_pos: torch.Tensor, key_len: torch.SymInt | int, prefix_length: torch.Tensor,
                          batch: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, T, P+T) mask. [Contract] key k is visible to query q iff k <= q (causal)
    or both lie in the bidirectional prefix (k, q < prefix_length): HF PaliGemma's
    token_type_ids == 0 block; prefix_length = 0 gives LLaVA's plain causal mask."""
    key_pos = torch.arange(key_len, device=query_pos.device)
    causal = key_pos[None, :] <= query_pos[:, None]
    in_prefix = (key_pos[None, :] < prefix_length) & (query_pos[:, None] < prefix_length)
    visible = causal | in_prefix
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=query_pos.device)
    mask = torch.where(visible, torch.zeros((), dtype=dtype, device=query_pos.device), blocked)
    return mask[None, None].expand(batch, 1, mask.shape[0], mask.shape[1])


def head_outputs(last: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 softcap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(action_logits float32 (B, n_bins), action_bin (B,)) from the last position's normed state.
    [Contract] action_bin = argmax, first index on ties (as numpy/torch)."""
    logits = last @ weight.T
    if bias is not None:
        logits = logits + bias
    if softcap is not None:  # Gemma-2 style final soft-capping, as HF applies it
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.to(FLOAT)
    return logits, torch.argmax(logits, dim=-1)


class DecoderGraph(nn.Module):
    """One graph for prefill (T = prompt length, P = 0) and decode (T = 1, P > 0)."""

    def __init__(self, language_model: nn.Module, lm_head: nn.Linear, token_ids: Sequence[int],
                 text_config, position_offset: int):
        super().__init__()
        # Hold the layers, not the language model: its embed_tokens (the [vocab, hidden] table)
        # must not end up in decoder.onnx — that table lives only in embed.onnx.
        self.layers = language_model.layers
        self.norm = language_model.norm
        self.rotary_emb = language_model.rotary_emb
        weight, bias = action_head_rows(lm_head, token_ids)
        self.action_head = nn.Parameter(weight, requires_grad=False)
        self.action_bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.softcap = getattr(text_config, "final_logit_softcapping", None)
        self.position_offset = int(position_offset)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, inputs_embeds: torch.Tensor, past_length: torch.Tensor,
                prefix_length: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = self.action_head.dtype
        batch, seq = inputs_embeds.shape[0], inputs_embeds.shape[1]
        cache = ExplicitKVCache([(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)])
        # [Contract] past_length = P, the number of cached positions; new tokens sit at P..P+T-1.
        query_pos = torch.arange(seq, device=inputs_embeds.device) + past_length
        position_ids = (query_pos + self.position_offset)[None].expand(batch, seq)
        mask = prefix_attention_mask(query_pos, past[0].shape[2] + seq, prefix_length, batch, dtype)

        hidden = inputs_embeds.to(dtype)
        rope = self.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids,
                           past_key_values=cache, use_cache=True, position_embeddings=rope)
        last = self.norm(hidden[:, -1])
        outputs = list(head_outputs(last, self.action_head, self.action_bias, self.softcap))
        for key, value in cache.present:
            outputs += [key.to(FLOAT), value.to(FLOAT)]
        return tuple(outputs)
