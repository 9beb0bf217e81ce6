"""Per-layer sensitivity: quantize one weight layer at a time and measure what the actions lose.

For every candidate layer the method's own GraphQuantizer writes a copy of that layer's graph
with only that layer quantized (int8 ranges come from the one shared calibration, int4 GPTQ
from the one set of recorded layer inputs), and the runtime runs it with the source's other
graphs on the first `sensitivity_frames` calibration frames, teacher-forced on the source's own
action tokens, so every step of every layer is compared on the same context:
  top1_agreement  fraction of action tokens whose argmax is unchanged (action-token agreement)
  kl_mean         KL(source || variant) of the n_bins-way action distribution, nats per token
Layers are ranked by KL (highest first), then by agreement (lowest first). Agreement is what an
action sees, but one layer at a time it rarely moves and only by near-tie flips: on the built-in
teacher (42 int4 layers, 16 frames = 128 tokens) it took two values, 127/128 and 128/128, so it
cannot order the layers; KL is continuous, the top 4 layers held 32% of the summed KL. Both are
reported. `keep_sensitive` K keeps the first K of the ranking in fp32. Cost: one graph rewrite
and session per layer plus a teacher-forced pass over the frames.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from quantize.fidelity import compare_logits
from quantize.onnx_graph import WeightLayer
from quantize.onnx_probe import ArtifactProbe

if TYPE_CHECKING:
    from quantize.onnx_flow import GraphQuantizer, QuantContext


@dataclass(frozen=True)
class LayerSensitivity:
    layer: WeightLayer
    top1_agreement: float
    kl_mean: float
    kl_max: float
    seconds: float


def layer_sensitivity(ctx: QuantContext, quantize_graph: GraphQuantizer,
                      candidates: list[WeightLayer]) -> list[LayerSensitivity]:
    """The candidates, most sensitive first."""
    frames = ctx.observations[:ctx.cfg.sensitivity_frames]
    images = [image for image, _ in frames]
    texts = [text for _, text in frames]
    reference = ctx.reference
    ref_tokens = reference.tokens(images, texts)
    ref_logits = reference.logits(images, texts, ref_tokens)
    folder = ctx.scratch / "sensitivity"
    folder.mkdir(exist_ok=True)
    results = []
    for layer in candidates:
        start = time.perf_counter()
        variant = folder / f"{layer.graph}.onnx"
        quantize_graph(ctx, layer.graph, ctx.models[layer.graph], [layer], variant)
        probe = ArtifactProbe(ctx.source, ctx.manifest, {layer.graph: variant}, threads=ctx.cfg.threads)
        fid = compare_logits(ref_logits, probe.logits(images, texts, ref_tokens))
        results.append(LayerSensitivity(layer, fid.top1_agreement, fid.kl_mean, fid.kl_max,
                                        time.perf_counter() - start))
        variant.unlink()
    return sorted(results, key=lambda r: (-r.kl_mean, r.top1_agreement))


def sensitivity_record(ranking: list[LayerSensitivity], keep: int) -> dict[str, Any] | None:
    """JSON for the report: the ranking and which layers were kept."""
    if not ranking:
        return None
    return {
        "metric": "teacher-forced on the source's tokens; ranked by KL, then top-1 agreement",
        "kept": keep,
        "seconds": round(float(np.sum([r.seconds for r in ranking])), 3),
        "layers": [{"rank": i + 1, "label": r.layer.label, "graph": r.layer.graph, "node": r.layer.node,
                    "group": r.layer.group, "shape": [r.layer.k, r.layer.n],
                    "top1_agreement": r.top1_agreement, "kl_mean": r.kl_mean, "kl_max": r.kl_max,
                    "kept_fp32": i < keep} for i, r in enumerate(ranking)],
    }
