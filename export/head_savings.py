"""What the constrained action-vocab head saves: LM-head bytes and FLOPs, computed from configs.

At an action step only the n_bins action-token logits are eligible (DESIGN.md), so decoder.onnx
carries n_bins rows of the LM head instead of vocab_size rows. Per decoder run the head is one
(hidden x rows) matmul on the last position:

    full head    2 * vocab_size * hidden FLOPs,  vocab_size * hidden weights
    action head  2 * n_bins * hidden FLOPs,      n_bins * hidden weights

and an action takes `tokens_per_action` decoder runs (prefill + decode steps), each computing the
head once: the prefill computes logits for the last position only, as HF generate does.

The head's share of a decoder run is taken against the matmul FLOPs of the transformer layers on
one position (2 x layer weights: q/k/v/o projections and a gated MLP); attention-score FLOPs,
which grow with the context, are left out, so the share is an upper bound for long prompts.

    python -m export.head_savings            # the presets and the OpenVLA-7B-sized config
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1, "int4": 0.5}


@dataclass(frozen=True)
class DecoderShape:
    """The numbers of a decoder config the head and layer costs depend on."""

    name: str
    hidden_size: int
    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    n_bins: int = 256
    tokens_per_action: int = 8
    tied_embeddings: bool = False

    @classmethod
    def from_text_config(cls, name: str, config: Any, n_bins: int, tokens_per_action: int) -> DecoderShape:
        heads = config.num_attention_heads
        return cls(
            name=name, hidden_size=config.hidden_size, vocab_size=config.vocab_size,
            num_layers=config.num_hidden_layers, num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate_size=config.intermediate_size, n_bins=n_bins,
            tokens_per_action=tokens_per_action,
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)))


# OpenVLA-7B: Llama-2-7B (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000) with 7 action
# tokens (6-DoF delta + gripper, no terminate token), 256 bins.
OPENVLA_7B = DecoderShape(name="openvla-7b (llama-2-7b)", hidden_size=4096, vocab_size=32000,
                          num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                          intermediate_size=11008, n_bins=256, tokens_per_action=7)


@dataclass(frozen=True)
class HeadSavings:
    name: str
    hidden_size: int
    vocab_size: int
    n_bins: int
    tokens_per_action: int
    full_head_params: int
    action_head_params: int
    removed_params: int
    removed_fraction: float
    bytes_removed: dict[str, float]          # per precision
    full_head_bytes: dict[str, float]
    action_head_bytes: dict[str, float]
    full_head_flops_per_step: int
    action_head_flops_per_step: int
    flops_removed_per_action: int
    layer_flops_per_step: int
    head_share_full: float                   # head / (layers + head) FLOPs of one decoder run
    head_share_action: float
    tied_embeddings: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_params(shape: DecoderShape) -> int:
    """Weights of the transformer layers (projections + gated MLP; norms are negligible)."""
    q_o = 2 * shape.hidden_size * shape.num_heads * shape.head_dim
    k_v = 2 * shape.hidden_size * shape.num_kv_heads * shape.head_dim
    mlp = 3 * shape.hidden_size * shape.intermediate_size
    return shape.num_layers * (q_o + k_v + mlp)


def head_savings(shape: DecoderShape) -> HeadSavings:
    full = shape.vocab_size * shape.hidden_size
    action = shape.n_bins * shape.hidden_size
    layers = 2 * layer_params(shape)
    # A tied head shares the embedding table, which the artifact keeps (embed.onnx) anyway: the
    # action head adds its 256 rows to the decoder and saves compute, not bytes.
    removed_bytes = 0 if shape.tied_embeddings else full - action
    return HeadSavings(
        name=shape.name, hidden_size=shape.hidden_size, vocab_size=shape.vocab_size,
        n_bins=shape.n_bins, tokens_per_action=shape.tokens_per_action,
        full_head_params=full, action_head_params=action, removed_params=full - action,
        removed_fraction=(full - action) / full,
        bytes_removed={p: removed_bytes * b for p, b in BYTES_PER_PARAM.items()},
        full_head_bytes={p: full * b for p, b in BYTES_PER_PARAM.items()},
        action_head_bytes={p: action * b for p, b in BYTES_PER_PARAM.items()},
        full_head_flops_per_step=2 * full, action_head_flops_per_step=2 * action,
        flops_removed_per_action=2 * (full - action) * shape.tokens_per_action,
        layer_flops_per_step=layers,
        head_share_full=2 * full / (layers + 2 * full),
        head_share_action=2 * action / (layers + 2 * action),
        tied_embeddings=shape.tied_embeddings,
    )


def preset_shapes() -> list[DecoderShape]:
    """Decoder shapes of the rt2edge presets, read from the configs of the built presets: the
    vocabulary is only known once the preset's tokenizer is trained and the bins appended."""
    from rt2edge.models.presets import PRESETS, build_preset

    shapes = []
    for name in PRESETS:
        policy = build_preset(name)
        config = policy.model.config.get_text_config()
        tokenizer = policy.action_tokenizer
        shapes.append(DecoderShape.from_text_config(name, config, tokenizer.n_bins, tokenizer.tokens_per_action))
    return shapes


def format_table(rows: list[HeadSavings], precision: str = "fp16") -> str:
    header = (f"{'config':<26}{'hidden':>7}{'vocab':>8}{'bins':>6}  {'full head':>10}"
              f"{'action head':>12}{'removed':>10}  {'MFLOP/action removed':>21}{'head share':>18}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.name:<26}{r.hidden_size:>7}{r.vocab_size:>8}{r.n_bins:>6}  "
            f"{_mb(r.full_head_bytes[precision]):>10}{_mb(r.action_head_bytes[precision]):>12}"
            f"{_mb(r.bytes_removed[precision]):>10}  {r.flops_removed_per_action / 1e6:>21.2f}"
            f"{f'{100 * r.head_share_full:.1f}% -> {100 * r.head_share_action:.2f}%':>18}")
    lines.append(f"(bytes at {precision}; FLOPs are matmul FLOPs of the head over one action's "
                 "decoder runs; head share = head / (layers + head) FLOPs of one decoder run)")
    return "\n".join(lines)


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def savings_report(shapes: list[DecoderShape]) -> dict[str, Any]:
    return {s.name: head_savings(s).to_dict() for s in shapes}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="fp16", choices=sorted(BYTES_PER_PARAM))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--no-presets", action="store_true", help="only the OpenVLA-7B config")
    args = parser.parse_args(argv)
    shapes = ([] if args.no_presets else preset_shapes()) + [OPENVLA_7B]
    if args.json:
        print(json.dumps(savings_report(shapes), indent=2))
    else:
        print(format_table([head_savings(s) for s in shapes], args.precision))


if __name__ == "__main__":
    main()
