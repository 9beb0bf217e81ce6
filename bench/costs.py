"""Roofline cost model of one action: FLOPs and bytes moved per stage, from a VLASpec.

Stages follow the deploy artifact's calling convention (docs/artifact-format.md), so that a cost
lines up with the runtime's `Action.timing` keys:

  vision     the tower(s) + projector on one image -> num_image_tokens embeddings
  embed      the text-token embedding rows gathered for the prompt
  prefill    the decoder over the whole prompt (image + text tokens), KV cache written
  decode.k   decoder run k = 1 .. tokens_per_action - 1: one token, KV cache of the prompt + k - 1

Conventions (the same in bench/onnx_costs.py, so the two counts can be compared):
- FLOPs = 2 x multiply-accumulates of matmuls (linear layers, attention scores and values, the
  patch-embedding conv). Norms, activations, softmax, RoPE are elementwise and left out (< 1 %).
- Attention counts only the (query, key) pairs a mask lets through: causal t attends past + t + 1
  keys; ViT and a prefix-LM prefill attend the whole sequence.
- The LM head runs on the last position only (the exported graph and HF generate both do), but
  all of its rows are read: n_bins rows for the action-only head, the full vocabulary otherwise.
- Weight bytes: every matmul weight in the stage's precision (scales included), biases and norm
  weights in the activation dtype. Each decoder run reads them all once (no cache reuse at batch 1).
- KV bytes: the past keys/values read plus the new ones written. Activation bytes: the inputs and
  outputs of every matmul (an unfused upper bound; fused kernels move less).
- Kernels: one launch per op of an unfused implementation (the per-layer lists below); the
  projection multiplies them by a device's launch overhead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from bench.architecture import DecoderSpec, ProjectorSpec, ViTSpec, VLASpec
from bench.precision import Precision, get_precision
from rt2edge.errors import ConfigError

# ln1, q, k, v, scores, softmax, values, o, residual, ln2, fc1, gelu, fc2, residual
VIT_LAYER_KERNELS = 14
# rmsnorm, q, k, v, rope(q), rope(k), kv-cache write, attention (fused), o, residual, rmsnorm,
# gate, up, silu*mul, down, residual
DECODER_LAYER_KERNELS = 16
HEADS = ("action", "full")


@dataclass
class StageCost:
    stage: str
    tokens: int  # new positions processed
    context: int  # keys the last new position attends to (decoder stages); tower length for vision
    flops: float
    weight_bytes: float
    kv_bytes: float
    activation_bytes: float
    kernels: int
    compute: str  # which peak of a device applies: "fp32" | "fp16" | "int8"

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes + self.activation_bytes

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved; below a device's peak_flops / bandwidth the stage is memory-bound."""
        return self.flops / self.bytes if self.bytes else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes": self.bytes}

    @classmethod
    def merge(cls, stage: str, parts: Iterable[StageCost]) -> StageCost:
        parts = list(parts)
        if not parts:
            raise ConfigError("stages", f"nothing to merge into {stage!r}")
        computes = {p.compute for p in parts}
        return cls(stage=stage, tokens=sum(p.tokens for p in parts), context=max(p.context for p in parts),
                   flops=sum(p.flops for p in parts), weight_bytes=sum(p.weight_bytes for p in parts),
                   kv_bytes=sum(p.kv_bytes for p in parts),
                   activation_bytes=sum(p.activation_bytes for p in parts),
                   kernels=sum(p.kernels for p in parts),
                   compute=computes.pop() if len(computes) == 1 else "mixed")


@dataclass
class CostBreakdown:
    """Per-stage costs of one action (batch 1) and what they were computed for."""

    model: str
    precision: str
    vision_precision: str
    text_tokens: int
    prompt_tokens: int
    head: str
    head_rows: int
    resident_bytes: float  # weights + a full KV cache: what must fit in memory
    stages: list[StageCost] = field(default_factory=list)

    def by_runtime_stage(self) -> dict[str, StageCost]:
        """Stages keyed like `Action.timing`: the decode.k runs merged into "decode"."""
        out: dict[str, StageCost] = {}
        decode = [s for s in self.stages if s.stage.startswith("decode.")]
        for s in self.stages:
            if not s.stage.startswith("decode."):
                out[s.stage] = s
        if decode:
            out["decode"] = StageCost.merge("decode", decode)
        return out

    def total(self) -> StageCost:
        return StageCost.merge("total", self.stages)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "stages"}
        data["stages"] = [s.to_dict() for s in self.stages]
        data["total"] = self.total().to_dict()
        return data


# ------------------------------------------------------------------------------ building blocks
def _linear(p: Precision, tokens: int, out_f: int, in_f: int, bias: bool) -> tuple[float, float, float]:
    """(flops, weight bytes, activation bytes) of one linear layer over `tokens` rows."""
    flops = 2.0 * tokens * out_f * in_f
    weights = p.matrix_bytes(out_f, in_f) + (out_f * p.activation_bytes if bias else 0)
    return flops, weights, float(tokens * (in_f + out_f) * p.activation_bytes)


def vit_cost(tower: ViTSpec, p: Precision) -> StageCost:
    t, h, a = tower.tokens, tower.hidden, p.activation_bytes
    flops = weights = acts = 0.0
    for out_f, in_f in ((h, h), (h, h), (h, h), (h, h), (tower.intermediate, h), (h, tower.intermediate)):
        f, w, x = _linear(p, t, out_f, in_f, True)
        flops, weights, acts = flops + f, weights + w, acts + x
    flops += 2.0 * 2 * t * t * h  # scores Q.K^T and values P.V, every head, bidirectional
    acts += 4.0 * t * h * a  # attention reads Q, K, V and writes its output
    weights += (4 * h + (2 * h if tower.layer_scale else 0)) * a  # two LayerNorms (+ LayerScale)
    patch_in = tower.channels * tower.patch_size ** 2
    f, w, x = _linear(p, tower.num_patches, h, patch_in, tower.patch_bias)
    embed_weights = (2 * tower.prefix_tokens + tower.num_patches) * h * a  # positions + CLS/registers
    final_norms = 2 * h * (int(tower.pre_norm) + int(tower.post_norm)) * a
    return StageCost(stage=tower.name, tokens=t, context=t, flops=tower.layers * flops + f,
                     weight_bytes=tower.layers * weights + w + embed_weights + final_norms,
                     kv_bytes=0.0, activation_bytes=tower.layers * acts + x,
                     kernels=tower.layers * VIT_LAYER_KERNELS + 3, compute=p.compute)


def projector_cost(projector: ProjectorSpec, tokens: int, p: Precision) -> StageCost:
    flops = weights = acts = 0.0
    for in_f, out_f in zip(projector.dims[:-1], projector.dims[1:]):
        f, w, x = _linear(p, tokens, out_f, in_f, projector.bias)
        flops, weights, acts = flops + f, weights + w, acts + x
    layers = len(projector.dims) - 1
    return StageCost(stage="projector", tokens=tokens, context=tokens, flops=flops, weight_bytes=weights,
                     kv_bytes=0.0, activation_bytes=acts, kernels=2 * layers - 1, compute=p.compute)


def attention_pairs(new: int, past: int, bidirectional: bool) -> int:
    """(query, key) pairs of `new` positions after `past` cached ones."""
    if bidirectional:
        return new * (past + new)
    return new * past + new * (new + 1) // 2


def decoder_run_cost(d: DecoderSpec, stage: str, new: int, past: int, p: Precision, head_rows: int,
                     bidirectional: bool = False) -> StageCost:
    """One decoder run: `new` tokens after `past` cached positions, logits of the last position."""
    a = p.activation_bytes
    flops = weights = acts = 0.0
    for _, out_f, in_f, bias in d.linear_shapes():
        f, w, x = _linear(p, new, out_f, in_f, bias)
        flops, weights, acts = flops + f, weights + w, acts + x
    pairs = attention_pairs(new, past, bidirectional)
    flops += 2.0 * 2 * pairs * d.q_dim  # scores and values over every head (GQA shares K/V, not FLOPs)
    acts += 2.0 * new * d.q_dim * a  # attention reads Q and writes its output
    weights += 2 * d.hidden * a  # two RMSNorm weights
    kv = 2.0 * d.kv_dim * (past + new) * a  # read the cached keys/values, write the new ones
    head_f, head_w, head_x = _linear(p, 1, head_rows, d.hidden, False)
    return StageCost(stage=stage, tokens=new, context=past + new,
                     flops=d.layers * flops + head_f,
                     weight_bytes=d.layers * weights + head_w + d.hidden * a,  # + final norm
                     kv_bytes=d.layers * kv, activation_bytes=d.layers * acts + head_x,
                     kernels=d.layers * DECODER_LAYER_KERNELS + 3, compute=p.compute)


# ------------------------------------------------------------------------------ one action
def vla_costs(spec: VLASpec, precision: str | Precision = "fp16", vision_precision: str | Precision | None = None,
              text_tokens: int = 24, head: str = "action") -> CostBreakdown:
    """Costs of one action: vision, embed, prefill and tokens_per_action - 1 decode runs.

    text_tokens: prompt tokens after the image tokens (BOS, instruction, template, suffix).
    head: "action" (n_bins rows, rt2edge's exported decoder) or "full" (the whole vocabulary, as
    a plain HF model or the published OpenVLA runs compute it).
    vision_precision: the towers' precision (default: `precision`; edge stacks often keep the
    vision encoder in fp16 while quantizing the LLM).
    """
    if head not in HEADS:
        raise ConfigError("head", f"must be one of {HEADS}, got {head!r}")
    if text_tokens < 1:
        raise ConfigError("text_tokens", f"must be >= 1, got {text_tokens}")
    p = get_precision(precision)
    pv = get_precision(vision_precision) if vision_precision is not None else p
    d = spec.decoder
    head_rows = spec.n_bins if head == "action" else d.vocab_size

    towers = [vit_cost(t, pv) for t in spec.vision]
    towers.append(projector_cost(spec.projector, spec.num_image_tokens, pv))
    vision = StageCost.merge("vision", towers)
    embed = StageCost(stage="embed", tokens=text_tokens, context=text_tokens, flops=0.0, weight_bytes=0.0,
                      kv_bytes=0.0, activation_bytes=2.0 * text_tokens * d.hidden * p.activation_bytes,
                      kernels=1, compute=p.compute)
    prompt = spec.num_image_tokens + text_tokens
    stages = [vision, embed,
              decoder_run_cost(d, "prefill", prompt, 0, p, head_rows, bidirectional=spec.prefix_lm)]
    for k in range(1, spec.tokens_per_action):
        stages.append(decoder_run_cost(d, f"decode.{k}", 1, prompt + k - 1, p, head_rows))

    layer_weights = sum(p.matrix_bytes(o, i) for _, o, i, _ in d.linear_shapes())
    full_kv = d.layers * 2 * d.kv_dim * (prompt + spec.tokens_per_action) * p.activation_bytes
    # A tied full-vocabulary head is the embedding table itself: stored once.
    head_weights = 0.0 if d.tie_embeddings and head == "full" else p.matrix_bytes(head_rows, d.hidden)
    resident = (vision.weight_bytes + d.layers * layer_weights + head_weights
                + d.vocab_size * d.hidden * p.activation_bytes + full_kv)  # + the embedding table
    return CostBreakdown(model=spec.name, precision=p.name, vision_precision=pv.name,
                         text_tokens=text_tokens, prompt_tokens=prompt, head=head, head_rows=head_rows,
                         resident_bytes=resident, stages=stages)
