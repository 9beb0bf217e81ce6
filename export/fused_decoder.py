"""The decoder graph with ONNX Runtime's fused ops: what `--target onnxruntime` exports.

Same inputs, outputs and calling convention as `export.graphs.DecoderGraph` (the artifact
contract does not change), different insides per layer:

    SkipSimplifiedLayerNormalization   residual add + RMSNorm            (plain graph: 8 ops)
    MatMul on packed q|k|v             one weight [D, (H + 2 KV) Hd]      (3 MatMuls)
    GroupQueryAttention                rotary + KV append + GQA attention (~35 ops: Slice/Neg/Concat
                                       rotary, Concat cache, Expand/Reshape repeat_kv, mask, softmax)
    o_proj, MLP                        Hugging Face's own modules, unchanged

ONNX Runtime then folds the MLP's x * sigmoid(x) into one kernel itself. A decode step of
student-s goes from 274 ONNX Runtime kernels to 53 (docs/artifact-format.md, "Targets").

The contrib ops have no eager torch implementation here (export/ort_ops.py): this module exists
to be exported, and the graph it gives is validated against HF's model like any other.
Decoders it cannot express exactly are refused with a ConfigError naming the reason, never
approximated: export them with `--target onnx`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from export.graphs import FLOAT, action_head_rows, head_outputs, prefix_attention_mask
from export.ort_ops import group_query_attention, skip_rms_norm
from rt2edge.errors import ConfigError

# [Contract] RMSNorm weight offset per decoder family: Llama/Qwen2 scale by w, Gemma by (1 + w)
# (HF GemmaRMSNorm); baked into the fused op's gamma.
NORM_WEIGHT_OFFSET = {"llama": 0.0, "qwen2": 0.0, "gemma": 1.0}
LAYER_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
ATTENTION_CHILDREN = {"q_proj", "k_proj", "v_proj", "o_proj"}
# RoPE whose frequencies depend on the current sequence length cannot be a fixed cos/sin cache.
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _refuse(reason: str) -> ConfigError:
    return ConfigError("target", f"the onnxruntime target cannot fuse this decoder: {reason}; "
                                 "export it with --target onnx")


def _norm_eps(norm: nn.Module) -> float:
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        eps = getattr(norm, "eps", None)
    if eps is None:
        raise _refuse(f"{type(norm).__name__} has no epsilon attribute")
    return float(eps)


def check_fusable(language_model: nn.Module, text_config) -> None:
    """Raise ConfigError unless every layer is the pre-norm block the fused graph computes."""
    if text_config.model_type not in NORM_WEIGHT_OFFSET:
        raise _refuse(f"decoder {text_config.model_type!r} (fusable: {sorted(NORM_WEIGHT_OFFSET)})")
    # Sliding-window attention (Gemma 2/3 patterns, Qwen2's use_sliding_window / layer_types) is
    # not what the fused op computes past the window: refuse rather than differ on long prompts.
    for name in ("attn_logit_softcapping", "sliding_window_pattern", "use_sliding_window"):
        if getattr(text_config, name, None):
            raise _refuse(f"text config sets {name}")
    if "sliding_attention" in (getattr(text_config, "layer_types", None) or ()):
        raise _refuse("text config has sliding_attention layers")
    for i, layer in enumerate(language_model.layers):
        children = {n for n, _ in layer.named_children()}
        if children != LAYER_CHILDREN:
            raise _refuse(f"layer {i} has modules {sorted(children)}, expected {sorted(LAYER_CHILDREN)}")
        attn = {n for n, _ in layer.self_attn.named_children()}
        if attn != ATTENTION_CHILDREN:
            raise _refuse(f"layer {i} attention has modules {sorted(attn)} (q/k norms or others are "
                          "not fused)")
        if layer.self_attn.o_proj.bias is not None:
            raise _refuse(f"layer {i} o_proj has a bias")
    rope_type = getattr(language_model.rotary_emb, "rope_type", "default")
    if rope_type in LENGTH_DEPENDENT_ROPE:
        raise _refuse(f"rope_type {rope_type!r} changes with the sequence length")


def packed_qkv(attention: nn.Module) -> nn.Linear:
    """q_proj, k_proj and v_proj as one Linear with output rows q | k | v (GroupQueryAttention's
    packed layout); a copy, the model's own projections are untouched."""
    projections = [attention.q_proj, attention.k_proj, attention.v_proj]
    weight = torch.cat([p.weight.detach() for p in projections])
    has_bias = any(p.bias is not None for p in projections)
    packed = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device=weight.device, dtype=weight.dtype)
    packed.weight = nn.Parameter(weight.clone(), requires_grad=False)
    if has_bias:
        biases = [p.bias.detach() if p.bias is not None else torch.zeros(p.out_features, dtype=weight.dtype,
                                                                         device=weight.device) for p in projections]
        packed.bias = nn.Parameter(torch.cat(biases).clone(), requires_grad=False)
    return packed


def rotary_cache(rotary_emb: nn.Module, positions: int, offset: int, head_dim: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (positions, head_dim / 2) from HF's own rotary module (its scaling included).
    [Contract] row p holds RoPE position p + offset, so GroupQueryAttention's position p (the
    absolute prompt position, 0-based) gets the family's offset as HF does."""
    weight = next(rotary_emb.buffers(), None)
    device = weight.device if weight is not None else torch.device("cpu")
    position_ids = (torch.arange(positions, device=device) + offset)[None]
    probe = torch.zeros(1, dtype=torch.float32, device=device)
    with torch.no_grad():
        cos, sin = rotary_emb(probe, position_ids=position_ids)
    cos, sin = cos[0].float(), sin[0].float()
    if cos.shape[-1] != head_dim:
        raise _refuse(f"rotary dim {cos.shape[-1]} != head_dim {head_dim} (partial rotary)")
    half = head_dim // 2
    # HF's rotate_half layout repeats the frequencies: emb = cat(freqs, freqs).
    if not (torch.equal(cos[:, :half], cos[:, half:]) and torch.equal(sin[:, :half], sin[:, half:])):
        raise _refuse("the rotary embedding is not in rotate-half layout")
    return cos[:, :half].contiguous(), sin[:, :half].contiguous()


class FusedDecoderGraph(nn.Module):
    """DecoderGraph's contract with fused ops. `max_positions`: rows of the rotary cache, at least
    the longest prompt + tokens_per_action (the runtime never goes further)."""

    def __init__(self, language_model: nn.Module, lm_head: nn.Linear, token_ids: Sequence[int],
                 text_config, position_offset: int, max_positions: int, prefix_lm: bool):
        super().__init__()
        check_fusable(language_model, text_config)
        first = language_model.layers[0].self_attn
        self.head_dim = int(first.head_dim)
        self.num_heads = int(first.q_proj.out_features // self.head_dim)
        self.kv_heads = int(first.k_proj.out_features // self.head_dim)
        self.scale = float(first.scaling)
        self.prefix_lm = bool(prefix_lm)
        offset = NORM_WEIGHT_OFFSET[text_config.model_type]
        self.layers = language_model.layers  # o_proj and mlp run as HF's modules
        self.eps = _norm_eps(language_model.norm)  # one epsilon attribute serves every fused norm
        for i, layer in enumerate(self.layers):
            eps = (_norm_eps(layer.input_layernorm), _norm_eps(layer.post_attention_layernorm))
            if eps != (self.eps, self.eps):
                raise _refuse(f"layer {i} norms use epsilon {eps}, the final norm {self.eps}")
        with torch.no_grad():
            self.input_gamma = nn.ParameterList(
                [self._gamma(layer.input_layernorm, offset) for layer in self.layers])
            self.post_gamma = nn.ParameterList(
                [self._gamma(layer.post_attention_layernorm, offset) for layer in self.layers])
            self.final_gamma = self._gamma(language_model.norm, offset)
            # One Linear per layer: a single MatMul feeds GroupQueryAttention's packed q|k|v
            # input instead of three. A submodule, so the graph names it "qkv_proj.<layer>".
            self.qkv_proj = nn.ModuleList([packed_qkv(layer.self_attn) for layer in self.layers])
        cos, sin = rotary_cache(language_model.rotary_emb, max_positions, position_offset, self.head_dim)
        self.register_buffer("cos_cache", cos.to(self.final_gamma.dtype))
        self.register_buffer("sin_cache", sin.to(self.final_gamma.dtype))
        weight, bias = action_head_rows(lm_head, token_ids)
        self.action_head = nn.Parameter(weight, requires_grad=False)
        self.action_bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.softcap = getattr(text_config, "final_logit_softcapping", None)

    @staticmethod
    def _gamma(norm: nn.Module, offset: float) -> nn.Parameter:
        return nn.Parameter((norm.weight.detach().float() + offset).to(norm.weight.dtype).clone(),
                            requires_grad=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _first_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The first layer's RMSNorm has no residual to fuse with. Written as x / sqrt(mean + eps),
        the pattern ONNX Runtime's own SimplifiedLayerNormFusion turns into one kernel at load
        (HF's x * rsqrt(...) is not matched); a default-domain SimplifiedLayerNormalization node
        would fail the ONNX checker, which knows no such op."""
        variance = hidden.float().pow(2).mean(-1, keepdim=True)
        normed = hidden.float() / torch.sqrt(variance + self.eps)
        return normed.to(hidden.dtype) * self.input_gamma[0]

    def forward(self, inputs_embeds: torch.Tensor, past_length: torch.Tensor,
                prefix_length: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = self.action_head.dtype
        batch, seq = inputs_embeds.shape[0], inputs_embeds.shape[1]
        # [Contract] past_length = P; GroupQueryAttention reads P + T (and P + T - 1 per row) and
        # places the new tokens at rotary positions P..P+T-1.
        total = (past_length + seq).to(torch.int32)
        seqlens_k = (total - 1).expand(batch)
        total_length = total.reshape(())
        bias = None
        if self.prefix_lm:
            query_pos = torch.arange(seq, device=inputs_embeds.device) + past_length
            bias = prefix_attention_mask(query_pos, past[0].shape[2] + seq, prefix_length, batch, dtype)
        hidden = inputs_embeds.to(dtype)
        residual = hidden
        normed = self._first_norm(hidden)
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            if i > 0:
                normed, residual = skip_rms_norm(hidden, residual, self.input_gamma[i], self.eps)
            qkv = self.qkv_proj[i](normed)
            attn, key, value = group_query_attention(
                qkv, past[2 * i].to(dtype), past[2 * i + 1].to(dtype), seqlens_k, total_length,
                self.cos_cache, self.sin_cache, num_heads=self.num_heads, kv_heads=self.kv_heads,
                head_dim=self.head_dim, scale=self.scale, attention_bias=bias)
            normed, residual = skip_rms_norm(layer.self_attn.o_proj(attn), residual, self.post_gamma[i],
                                             self.eps)
            hidden = layer.mlp(normed)
            presents += [key.to(FLOAT), value.to(FLOAT)]
        last, _ = skip_rms_norm(hidden[:, -1], residual[:, -1], self.final_gamma, self.eps)
        return (*head_outputs(last, self.action_head, self.action_bias, self.softcap), *presents)
