"""torch -> ONNX for the three artifact graphs (torch.onnx dynamo exporter), with their IO specs.

The decoder is `DecoderGraph` (plain ONNX) or, for the onnxruntime target, `FusedDecoderGraph`
(ONNX Runtime contrib ops); both have the same IO.

Each graph is exported from its own wrapper (export/graphs.py) with dynamic batch / sequence /
past dims, renamed to the symbolic names of docs/artifact-format.md so that the manifest, the ONNX
files and TensorRT optimization profiles all speak of the same "batch", "seq", "past" and
"total" (= past + seq).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx
import torch
from torch import nn
from torch.export import Dim

from export.adapters import ExportAdapter
from export.fused_decoder import FusedDecoderGraph
from export.graphs import DecoderGraph, EmbedGraph, VisionGraph, eager_attention
from rt2edge.artifact import GraphSpec, TensorSpec, cache_names

PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# protobuf cannot hold more than 2 GiB: bigger graphs keep their weights in "<file>.data".
EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass(frozen=True)
class ModelDims:
    """The sizes the graph contracts are written in."""

    image_size: int
    num_image_tokens: int
    hidden_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    n_bins: int


@dataclass
class ExportedGraph:
    spec: GraphSpec
    data_file: str | None  # external weights file next to the graph, if any


def model_dims(model: nn.Module, adapter: ExportAdapter, n_bins: int, num_image_tokens: int) -> ModelDims:
    text = adapter.text_config(model)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelDims(
        image_size=int(model.config.vision_config.image_size),
        num_image_tokens=int(num_image_tokens),
        hidden_size=int(text.hidden_size),
        num_layers=int(text.num_hidden_layers),
        num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=int(head_dim),
        vocab_size=int(adapter.language_model(model).embed_tokens.num_embeddings),
        n_bins=int(n_bins),
    )


def graph_io(dims: ModelDims) -> dict[str, tuple[list[TensorSpec], list[TensorSpec]]]:
    """[Contract] docs/artifact-format.md, "Graphs": names, dtypes and (symbolic) shapes."""
    d, kv, hd, s = dims.hidden_size, dims.num_kv_heads, dims.head_dim, dims.image_size
    past = [TensorSpec(n, "float32", ("batch", kv, "past", hd)) for n in cache_names(dims.num_layers, "past")]
    present = [TensorSpec(n, "float32", ("batch", kv, "total", hd))
               for n in cache_names(dims.num_layers, "present")]
    return {
        "vision": ([TensorSpec("pixel_values", "float32", ("batch", 3, s, s))],
                   [TensorSpec("image_embeds", "float32", ("batch", dims.num_image_tokens, d))]),
        "embed": ([TensorSpec("input_ids", "int64", ("batch", "seq"))],
                  [TensorSpec("inputs_embeds", "float32", ("batch", "seq", d))]),
        "decoder": ([TensorSpec("inputs_embeds", "float32", ("batch", "seq", d)),
                     TensorSpec("past_length", "int64", (1,)),
                     TensorSpec("prefix_length", "int64", (1,))] + past,
                    [TensorSpec("action_logits", "float32", ("batch", dims.n_bins)),
                     TensorSpec("action_bin", "int64", ("batch",))] + present),
    }


def _example_inputs(name: str, dims: ModelDims) -> tuple[tuple[Any, ...], Any]:
    """Example inputs and dynamic shapes. Sizes are >= 2 and pairwise distinct so torch.export
    specializes none of the dynamic dims (it pins dims of size 0/1 and merges equal ones)."""
    batch, seq, past = Dim("batch"), Dim("seq"), Dim("past")
    b, t, p = 2, 5, 3
    if name == "vision":
        return (torch.zeros(b, 3, dims.image_size, dims.image_size),), {"pixel_values": {0: batch}}
    if name == "embed":
        ids = torch.arange(b * t, dtype=torch.long).reshape(b, t) % dims.vocab_size
        return (ids,), {"input_ids": {0: batch, 1: seq}}
    cache = tuple(torch.zeros(b, dims.num_kv_heads, p, dims.head_dim) for _ in range(2 * dims.num_layers))
    args = (torch.zeros(b, t, dims.hidden_size), torch.tensor([p]), torch.tensor([0])) + cache
    shapes = {"inputs_embeds": {0: batch, 1: seq}, "past_length": None, "prefix_length": None,
              "past": tuple({0: batch, 2: past} for _ in cache)}
    return args, shapes


def _rename_dims(proto: onnx.ModelProto, specs: Sequence[TensorSpec], values) -> None:
    """Write the contract's symbolic names into the ONNX IO (the exporter writes e.g. "s0 + s1")."""
    by_name = {v.name: v for v in values}
    for spec in specs:
        value = by_name[spec.name]
        dims = value.type.tensor_type.shape.dim
        for dim, want in zip(dims, spec.shape):
            if isinstance(want, str):
                dim.ClearField("dim_value")
                dim.dim_param = want


def _save(proto: onnx.ModelProto, path: Path) -> str | None:
    if proto.ByteSize() < EXTERNAL_DATA_BYTES:
        onnx.save_model(proto, str(path))
        return None
    data = f"{path.name}.data"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data, size_threshold=1024)
    return data


def build_wrappers(model: nn.Module, adapter: ExportAdapter, token_ids: Sequence[int],
                   fused_positions: int | None = None) -> dict[str, nn.Module]:
    """The three graph modules; they share the model's parameters (no copy in fp32, except the
    fused decoder's packed q|k|v weights). fused_positions: None for the plain decoder, else the
    rotary positions the fused decoder must cover (export/fused_decoder.py)."""
    language = adapter.language_model(model)
    text_config = adapter.text_config(model)
    if fused_positions is None:
        decoder = DecoderGraph(language, adapter.lm_head(model), token_ids, text_config, adapter.position_offset)
    else:
        decoder = FusedDecoderGraph(language, adapter.lm_head(model), token_ids, text_config,
                                    adapter.position_offset, fused_positions, adapter.prefix_lm)
    return {
        "vision": VisionGraph(adapter.vision_module(model)),
        "embed": EmbedGraph(language.embed_tokens),
        "decoder": decoder,
    }


def export_graph(name: str, module: nn.Module, dims: ModelDims, folder: Path, opset: int,
                 precision: str, text_config, io: tuple[list[TensorSpec], list[TensorSpec]] | None = None,
                 example: tuple[tuple[Any, ...], Any] | None = None) -> ExportedGraph:
    """Export one wrapper to `folder/<name>.onnx`. fp16 exports a half copy, so the caller's
    fp32 model (the validation reference) is never touched. io / example: the graph's IO specs and
    example inputs + dynamic shapes when they are not `graph_io` / `_example_inputs`' (another
    decoder, export/parallel_graph.py)."""
    inputs, outputs = io or graph_io(dims)[name]
    if precision != "fp32":
        module = copy.deepcopy(module).to(PRECISION_DTYPES[precision])
    module.eval()
    args, shapes = example or _example_inputs(name, dims)
    with torch.no_grad(), eager_attention(text_config), _quiet_exporter():
        program = torch.onnx.export(
            module, args, None, dynamo=True, opset_version=opset, optimize=True, verbose=False,
            input_names=[t.name for t in inputs], output_names=[t.name for t in outputs],
            dynamic_shapes=shapes, external_data=False)
    proto = program.model_proto
    _rename_dims(proto, inputs, proto.graph.input)
    _rename_dims(proto, outputs, proto.graph.output)
    proto.producer_name = "rt2edge.export"
    path = folder / f"{name}.onnx"
    data_file = _save(proto, path)
    return ExportedGraph(GraphSpec(path.name, tuple(inputs), tuple(outputs)), data_file)


def export_graphs(model: nn.Module, adapter: ExportAdapter, token_ids: Sequence[int], dims: ModelDims,
                  folder: Path, opset: int, precision: str, fused_positions: int | None = None
                  ) -> dict[str, ExportedGraph]:
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision must be one of {sorted(PRECISION_DTYPES)}, got {precision!r}")
    wrappers = build_wrappers(model, adapter, token_ids, fused_positions)
    text_config = adapter.text_config(model)
    return {name: export_graph(name, module, dims, folder, opset, precision, text_config)
            for name, module in wrappers.items()}


class _quiet_exporter:
    """The dynamo exporter and its onnxscript/onnx_ir passes log progress lines and deprecation
    warnings from their own internals on every call; an export of three graphs would bury the
    caller's log. Errors still raise."""

    LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir", "torch.export", "torch._dynamo")

    def __enter__(self):
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        self._levels = {}
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        return self._warnings.__exit__(*exc)
