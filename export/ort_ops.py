"""ONNX Runtime contrib ops (domain com.microsoft) as symbolic torch ops, for the fused decoder.

Each function emits exactly one ONNX node when traced by `torch.onnx.export(dynamo=True)`
(`torch.onnx.ops.symbolic_multi_out`): the exporter writes the node as given and only needs the
output dtypes and shapes. Called eagerly they return placeholder tensors, so a module built on
them is meaningful only as an export wrapper: its numbers come from ONNX Runtime and are checked
against Hugging Face's torch model by the export's own validation (export/validate.py).

Why these two: a decode step of the plain graph runs ~270 kernels, ~240 of them tiny ones
(RMSNorm pieces, rotary, attention reshapes, KV concat); these ops fold each family into one
kernel. Op contracts: onnxruntime docs/ContribOperators.md.
"""

from __future__ import annotations

from typing import Sequence

import torch

DOMAIN = "com.microsoft"
VERSION = 1


def skip_rms_norm(hidden: torch.Tensor, residual: torch.Tensor, gamma: torch.Tensor,
                  epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SkipSimplifiedLayerNormalization: s = hidden + residual; (rms_norm(s) * gamma, s).

    The sum is the next residual, so one kernel replaces the residual Add and the 6 RMSNorm ops.
    Outputs 1 and 2 (mean, inverse std) are training outputs; they are declared because the
    symbolic op names every output, and cost one float per token.
    """
    stats = (*hidden.shape[:-1], 1)
    out, _, _, total = torch.onnx.ops.symbolic_multi_out(
        f"{DOMAIN}::SkipSimplifiedLayerNormalization", (hidden, residual, gamma),
        {"epsilon": float(epsilon)},
        dtypes=(hidden.dtype, torch.float32, torch.float32, hidden.dtype),
        shapes=(hidden.shape, stats, stats, hidden.shape), version=VERSION)
    return out, total


def group_query_attention(qkv: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor,
                          seqlens_k: torch.Tensor, total_length: torch.Tensor, cos_cache: torch.Tensor,
                          sin_cache: torch.Tensor, *, num_heads: int, kv_heads: int, head_dim: int,
                          scale: float, attention_bias: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GroupQueryAttention on packed q|k|v (B, T, (H + 2 KV) * Hd): rotary on q and k from the
    cos/sin caches at positions past..past+T-1, k/v appended to the (B, KV, P, Hd) past, attention
    over the shared kv heads, causal, or (with `attention_bias`, the additive (B|1, 1, T, P+T)
    mask) bidirectional plus that mask. Returns the output (B, T, H * Hd) and present k, v.

    [Contract] seqlens_k = P + T - 1 per batch row (int32), total_length = P + T (int32 scalar):
    ORT derives the rotary positions and the prompt/decode case from them."""
    batch, seq = qkv.shape[0], qkv.shape[1]
    total = past_key.shape[2] + seq
    attrs = {"num_heads": int(num_heads), "kv_num_heads": int(kv_heads), "scale": float(scale),
             "do_rotary": 1, "rotary_interleaved": 0}
    inputs: Sequence[torch.Tensor | None] = (qkv, None, None, past_key, past_value, seqlens_k, total_length,
                                             cos_cache, sin_cache)
    if attention_bias is not None:
        # causal=0 switches the built-in causal mask off; the bias then carries the whole mask.
        attrs["causal"] = 0
        inputs = (*inputs, None, attention_bias)
    present = (batch, kv_heads, total, head_dim)
    out, key, value = torch.onnx.ops.symbolic_multi_out(
        f"{DOMAIN}::GroupQueryAttention", inputs, attrs,
        dtypes=(qkv.dtype, past_key.dtype, past_value.dtype),
        shapes=((batch, seq, num_heads * head_dim), present, present), version=VERSION)
    return out, key, value
