"""The decoder graph of a parallel-decoding policy (rt2edge.models.parallel): one run per action.

    ParallelDecoderGraph  inputs_embeds (B, L, D): the prompt (image + text embeddings)
                          -> action_logits (B, S, n_bins), action_bins (B, S)   S = tokens_per_action

The S slot embeddings are constants of the graph (the slot token ids' rows, taken through
embed_tokens so a family's embedding scale is included): the graph appends them to the prompt and
runs HF's decoder layers once with the slot mask. No KV cache goes in or out, so the runtime feeds
one tensor and reads every action token of the step. Vision and embed graphs are the
autoregressive artifact's, unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.export import Dim

from export.adapters import ExportAdapter
from export.graphs import EmbedGraph, VisionGraph, action_head_rows, head_outputs
from export.onnx_export import PRECISION_DTYPES, ExportedGraph, ModelDims, export_graph
from rt2edge.artifact import TensorSpec


class ParallelDecoderGraph(nn.Module):
    def __init__(self, language_model: nn.Module, lm_head: nn.Linear, token_ids: Sequence[int],
                 slot_ids: Sequence[int], text_config, position_offset: int):
        super().__init__()
        # Layers, norm and rotary only: the [vocab, hidden] embedding table stays in embed.onnx.
        self.layers = language_model.layers
        self.norm = language_model.norm
        self.rotary_emb = language_model.rotary_emb
        index = torch.as_tensor(list(slot_ids), dtype=torch.long, device=lm_head.weight.device)
        with torch.no_grad():
            slots = language_model.embed_tokens(index[None])[0].detach().clone()
        self.slots = nn.Parameter(slots, requires_grad=False)
        weight, bias = action_head_rows(lm_head, token_ids)
        self.action_head = nn.Parameter(weight, requires_grad=False)
        self.action_bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.softcap = getattr(text_config, "final_logit_softcapping", None)
        self.position_offset = int(position_offset)

    def attention_mask(self, length: torch.SymInt | int, total: torch.SymInt | int, batch: int,
                       dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Additive (B, 1, L+S, L+S) mask. [Contract] key k is visible to query q iff k <= q or both
        are slots (positions >= L): rt2edge.models.parallel.slot_attention_mask without padding."""
        pos = torch.arange(total, device=device)
        is_slot = pos >= length
        visible = (pos[None, :] <= pos[:, None]) | (is_slot[None, :] & is_slot[:, None])
        blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=device)
        mask = torch.where(visible, torch.zeros((), dtype=dtype, device=device), blocked)
        return mask[None, None].expand(batch, 1, mask.shape[0], mask.shape[1])

    def forward(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.action_head.dtype
        batch, length = inputs_embeds.shape[0], inputs_embeds.shape[1]
        steps = self.slots.shape[0]
        hidden = torch.cat([inputs_embeds.to(dtype), self.slots[None].expand(batch, steps, -1)], dim=1)
        total = length + steps
        # [Contract] positions 0..L+S-1 (+ the family offset), as HF's forward on prompt + slots.
        position_ids = (torch.arange(total, device=hidden.device) + self.position_offset)[None].expand(batch, total)
        mask = self.attention_mask(length, total, batch, dtype, hidden.device)
        rope = self.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, past_key_values=None,
                           use_cache=False, position_embeddings=rope)
        return head_outputs(self.norm(hidden[:, length:]), self.action_head, self.action_bias, self.softcap)


def parallel_decoder_io(dims: ModelDims, steps: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """[Contract] docs/artifact-format.md, "Parallel decoding": the decoder's names and shapes."""
    return ([TensorSpec("inputs_embeds", "float32", ("batch", "seq", dims.hidden_size))],
            [TensorSpec("action_logits", "float32", ("batch", steps, dims.n_bins)),
             TensorSpec("action_bins", "int64", ("batch", steps))])


def _example_inputs(dims: ModelDims) -> tuple[tuple[Any, ...], Any]:
    # batch 2, seq 5: >= 2 and distinct from each other and from S, so neither dim is specialized.
    return (torch.zeros(2, 5, dims.hidden_size),), {"inputs_embeds": {0: Dim("batch"), 1: Dim("seq")}}


def export_parallel_graphs(model: nn.Module, adapter: ExportAdapter, token_ids: Sequence[int],
                           slot_ids: Sequence[int], dims: ModelDims, folder: Path, opset: int,
                           precision: str) -> dict[str, ExportedGraph]:
    """vision.onnx and embed.onnx as for an autoregressive policy, decoder.onnx one pass per action."""
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision must be one of {sorted(PRECISION_DTYPES)}, got {precision!r}")
    language = adapter.language_model(model)
    text_config = adapter.text_config(model)
    decoder = ParallelDecoderGraph(language, adapter.lm_head(model), token_ids, slot_ids, text_config,
                                   adapter.position_offset)
    return {
        "vision": export_graph("vision", VisionGraph(adapter.vision_module(model)), dims, folder, opset,
                               precision, text_config),
        "embed": export_graph("embed", EmbedGraph(language.embed_tokens), dims, folder, opset, precision,
                              text_config),
        "decoder": export_graph("decoder", decoder, dims, folder, opset, precision, text_config,
                                io=parallel_decoder_io(dims, len(slot_ids)), example=_example_inputs(dims)),
    }
