"""Per-stage roofline of a benched variant on this machine: how far each stage is from its bound.

Per runtime stage (vision, prefill, decode = all decoder runs after the prefill):

  bound_s     = max(flops / peak GEMM rate of the stage's math unit (fp32, or int8 where its graph
                is quantized), bytes / bandwidth at the stage's working-set size)
  overhead_s  = kernels x per-op cost  (+ session.run fixed and per-tensor cost, ONNX Runtime)
  fraction               = bound_s / measured median           (1.0 = at the roofline)
  fraction_with_overhead = (bound_s + overhead_s) / measured   (what is left once the dispatch
                                                                cost of the graph as exported is
                                                                accepted as unavoidable)

Costs come from the ONNX graphs of an artifact (bench/onnx_costs.py; kernels = nodes of ONNX
Runtime's optimized graph, what it really launches) or from a checkpoint's config.json
(bench/costs.py; kernels = the cost model's unfused per-layer count, an estimate). Bytes are a
lower bound: weights + KV cache read/written + the graph's IO, no intermediate activations (a
fused kernel keeps them in registers/cache). The bandwidth is measured at each stage's own byte
count (bench/overheads.py): a few-MB policy lives in the last-level cache, and bounding it by
DRAM bandwidth would flatter the fraction.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from bench.costs import CostBreakdown, StageCost, vla_costs
from bench.overheads import RunOverhead
from bench.precision import get_precision
from rt2edge.optional import require

ROOFLINE_STAGES = ("vision", "prefill", "decode")


@dataclass
class StageBound:
    stage: str
    runs: int
    flops: float
    bytes: float
    kernels: int
    compute_s: float
    memory_s: float
    bound_s: float  # sum over runs of max(compute, memory): each run has its own limit
    overhead_s: float
    bandwidth_gbs: float
    peak_gflops: float
    measured_s: float | None = None

    @property
    def limit(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"

    @property
    def fraction(self) -> float | None:
        return self.bound_s / self.measured_s if self.measured_s else None

    @property
    def fraction_with_overhead(self) -> float | None:
        return (self.bound_s + self.overhead_s) / self.measured_s if self.measured_s else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "limit": self.limit, "fraction": self.fraction,
                "fraction_with_overhead": self.fraction_with_overhead}


@dataclass(frozen=True)
class OverheadModel:
    per_op_us: float
    run: RunOverhead | None  # ONNX Runtime session.run cost; None for torch
    kernels_source: str

    def seconds(self, kernels: int, runs: int, tensors: int) -> float:
        run = self.run.seconds(runs, tensors) if self.run is not None else 0.0
        return kernels * self.per_op_us * 1e-6 + run


def compute_class(precision: str) -> str:
    """The rt2edge precision name whose math unit an artifact / checkpoint precision runs on."""
    name = precision.lower()
    for prefix, cls in (("fp16", "fp16"), ("float16", "fp16"), ("bf16", "bf16"), ("bfloat16", "bf16"),
                        ("int8", "int8"), ("int4", "int4")):
        if name.startswith(prefix):
            return cls
    return "fp32"


# ------------------------------------------------------------------------------ artifact (ONNX)
def ort_kernel_count(graph: Path, threads: int = 1) -> int:
    """Nodes of ONNX Runtime's optimized graph (CPU EP, ORT_ENABLE_ALL as the runtime): the
    kernels one run launches."""
    ort = require("onnxruntime", extra="cpu", purpose="counting the kernels of an optimized graph")
    onnx = require("onnx", extra="toolkit", purpose="counting the kernels of an optimized graph")
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # the "hardware specific optimizations" warning is expected
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        return len(onnx.load(opts.optimized_model_filepath, load_external_data=False).graph.node)


def graph_precision(manifest: Any, graph: str) -> str:
    """The rt2edge precision name (compute_class) of one graph of an artifact. A quantized
    artifact lists the graphs it quantized (manifest "quantization.graphs"); the others keep the
    source's precision (the deploy recipe keeps the vision tower fp32)."""
    extra = manifest.extra or {}
    quantized = (extra.get("quantization") or {}).get("graphs")
    if quantized is not None and graph not in quantized:
        return compute_class((extra.get("provenance") or {}).get("source_precision") or "fp32")
    return compute_class(manifest.precision)


def graph_compute(manifest: Any, graph: str) -> str:
    """The math unit (fp32 / fp16 / int8) one graph's matmuls run on. A quantized graph with a few
    layers kept in float is bounded by its quantized unit: the faster rate keeps the bound a
    lower bound."""
    return get_precision(graph_precision(manifest, graph)).compute


def _io(spec: Any) -> tuple[int, list]:
    return len(spec.inputs) + len(spec.outputs), spec.outputs


def artifact_stage_costs(folder: Path, manifest: Any, prompt_tokens: int, threads: int = 1,
                         cached_prefix_tokens: int = 0) -> tuple[list[StageCost], dict[str, int]]:
    """StageCosts of one action of an artifact (vision, prefill, decode.k) from its ONNX graphs,
    and the IO tensor count of each stage's graph. The embed graph is left out: the runtime runs
    it once per instruction and caches the result, so it costs nothing per action. Likewise, with
    `cached_prefix_tokens` (the runtime's prefix cache on), the prefill is the prompt after them,
    with them as its past: what most acts of a control loop run."""
    from bench.onnx_costs import onnx_graph_cost

    model = manifest.model
    act_bytes = 4  # graph IO is float32 at every precision (docs/artifact-format.md)
    kv_row = model.num_layers * 2 * model.num_kv_heads * model.head_dim * act_bytes
    hidden = model.hidden_size
    tensors = {"vision": _io(manifest.graphs["vision"])[0], "decoder": _io(manifest.graphs["decoder"])[0]}
    vision_graph = folder / manifest.graphs["vision"].file
    decoder_graph = folder / manifest.graphs["decoder"].file
    vision = onnx_graph_cost(vision_graph, dims={"batch": 1}, name="vision")
    size = manifest.image_preprocessing().size
    n_image = manifest.prompt_format().num_image_tokens
    costs = [StageCost("vision", n_image, n_image, vision.flops, vision.weight_bytes, 0.0,
                       float((3 * size * size + n_image * hidden) * act_bytes),
                       ort_kernel_count(vision_graph, threads), graph_compute(manifest, "vision"))]
    decoder_kernels = ort_kernel_count(decoder_graph, threads)
    prefix = prompt_tokens if model.prefix_lm else 0
    runs = [("prefill", prompt_tokens - cached_prefix_tokens, cached_prefix_tokens)]
    if manifest.decoding == "autoregressive":
        steps = manifest.action_tokenizer().tokens_per_action - 1
        runs += [(f"decode.{k}", 1, prompt_tokens + k - 1) for k in range(1, steps + 1)]
    n_bins = manifest.action_tokenizer().n_bins
    # A parallel decoder ("decoding": "parallel") takes the prompt alone: no cache, no lengths.
    inputs = {t.name for t in manifest.graphs["decoder"].inputs}
    cached = "past.0.key" in inputs
    heads = 1 if cached else manifest.action_tokenizer().tokens_per_action
    for stage, new, past in runs:
        dims = {"batch": 1, "seq": new, "past": past, "total": past + new, "past_length": past,
                "total_length": past + new}
        values = {k: v for k, v in (("past_length", [past]), ("prefix_length", [prefix])) if k in inputs}
        cost = onnx_graph_cost(decoder_graph, dims=dims, name=stage, values=values)
        io = (new * hidden + heads * n_bins) * act_bytes
        # The graph reads the cached keys/values and writes present = past + new (a Concat).
        kv = kv_row * (past + past + new) if cached else 0
        costs.append(StageCost(stage, new, past + new, cost.flops, cost.weight_bytes, float(kv), float(io),
                               decoder_kernels, graph_compute(manifest, "decoder")))
    return costs, tensors


def convention_kernels(folder: Path, manifest: Any) -> dict[str, int | None]:
    """Kernels per run of an optimized stack (TensorRT, MLC), by bench/costs.py's per-layer
    convention, the one the projection's efficiency was fitted with: decoder layers from the
    manifest; ViT layers = Softmax nodes of the vision graph (one attention per layer). None
    where the graph has no Softmax (not a ViT): the caller keeps its own count."""
    from bench.costs import DECODER_LAYER_KERNELS, VIT_LAYER_KERNELS

    onnx = require("onnx", extra="toolkit", purpose="counting the layers of a vision graph")
    graph = onnx.load(str(folder / manifest.graphs["vision"].file), load_external_data=False).graph
    vit_layers = sum(node.op_type == "Softmax" for node in graph.node)
    return {"vision": vit_layers * VIT_LAYER_KERNELS + 3 if vit_layers else None,
            "decoder": manifest.model.num_layers * DECODER_LAYER_KERNELS + 3}


# ------------------------------------------------------------------------------ checkpoint (config)
def checkpoint_stage_costs(hf_config: Mapping[str, Any], tokens_per_action: int, n_bins: int,
                           text_tokens: int, precision: str, head: str = "full") -> CostBreakdown:
    """StageCosts from config.json (bench/costs.py). HF generate() applies the full-vocabulary LM
    head at every run, hence head="full" for the eager and hf-generate backends."""
    from bench.architecture import spec_from_config

    spec = spec_from_config(dict(hf_config), tokens_per_action=tokens_per_action, n_bins=n_bins)
    return vla_costs(spec, compute_class(precision), text_tokens=text_tokens, head=head)


# ------------------------------------------------------------------------------ bounds
def stage_bounds(costs: list[StageCost], measured: Mapping[str, float | None],
                 peak_flops: Callable[[str], float], bandwidth_at: Callable[[float], float],
                 overhead: OverheadModel, tensors: Mapping[str, int] | None = None,
                 include_activations: bool = False) -> dict[str, StageBound]:
    """Bounds per runtime stage (decode.k summed into decode, each run with its own bandwidth).
    `peak_flops(compute)`: the machine's rate of a math unit (DeviceProfile.peak_flops), taken per
    stage, so an fp32 vision tower next to an int8 decoder gets each its own bound.
    `include_activations` False: bytes = weights + KV (+ IO, in activation_bytes of ONNX costs)."""
    tensors = tensors or {}
    out: dict[str, StageBound] = {}
    for cost in costs:
        stage = "decode" if cost.stage.startswith("decode.") else cost.stage
        if stage not in ROOFLINE_STAGES:
            continue
        moved = cost.weight_bytes + cost.kv_bytes + (cost.activation_bytes if include_activations else 0.0)
        bw = bandwidth_at(moved)
        graph = "vision" if stage == "vision" else "decoder"
        extra = overhead.seconds(cost.kernels, 1, tensors.get(graph, 0))
        peak = peak_flops(cost.compute)
        b = out.setdefault(stage, StageBound(stage, 0, 0.0, 0.0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, peak / 1e9,
                                             measured.get(stage)))
        compute_s, memory_s = cost.flops / peak, moved / bw
        b.runs += 1
        b.flops += cost.flops
        b.bytes += moved
        b.kernels += cost.kernels
        b.compute_s += compute_s
        b.memory_s += memory_s
        b.bound_s += max(compute_s, memory_s)
        b.overhead_s += extra
        b.bandwidth_gbs = b.bytes / b.memory_s / 1e9 if b.memory_s else bw / 1e9  # run-weighted
    return out


def roofline_summary(bounds: Mapping[str, StageBound]) -> dict[str, Any]:
    """All roofline stages together: sum of bounds / sum of measured medians."""
    measured = [b for b in bounds.values() if b.measured_s]
    if not measured:
        return {}
    total_measured = sum(b.measured_s for b in measured)
    bound = sum(b.bound_s for b in measured)
    with_overhead = sum(b.bound_s + b.overhead_s for b in measured)
    return {"stages": [b.stage for b in measured], "measured_s": total_measured, "bound_s": bound,
            "overhead_s": with_overhead - bound, "fraction": bound / total_measured,
            "fraction_with_overhead": with_overhead / total_measured}

