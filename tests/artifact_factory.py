"""Tiny but valid deploy artifacts for the runtime tests, built with `onnx.helper` (no torch).

The decoder is a real causal model with an explicit KV cache: per layer, keys and values are
projections of the hidden state, the "attention" is the running mean of key*value over all
positions <= t (cumulative, so cached decoding equals a full recompute), and the head has only the
n_bins action rows. `TinyModel.reference_bins` recomputes the whole sequence in numpy without a
cache: agreement with `Policy.act` checks the runtime's prefill/decode loop, the KV-cache plumbing
and the per-bin embedding cache together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rt2edge.actions import ActionStatistics, ActionTokenizer
from rt2edge.artifact import (ArtifactManifest, FileSpec, GraphSpec, ModelSpec, TensorSpec,
                              write_manifest)
from rt2edge.observation import ImagePreprocessing, PromptFormat

OPSET = 18
WORDS = ["what", "action", "should", "the", "robot", "take", "to", "?", "pick", "up", "red", "blue",
         "block", "put", "it", "in", "bowl", "open", "drawer", "close", "move", "left", "right"]
SPECIALS = ["[UNK]", "[BOS]", "<image>"]
WO_SCALE = 8.0


@dataclass
class TinyModel:
    """The weights of a tiny artifact, and a cache-free numpy reference of its policy."""

    vision_w: np.ndarray  # [3*S*S, N*D]
    embed_table: np.ndarray  # [V, D]
    wk: list[np.ndarray]  # per layer [D, KV*Hd]
    wv: list[np.ndarray]
    wo: list[np.ndarray]  # per layer [KV*Hd, D]
    w_past: np.ndarray  # [D]
    w_prefix: np.ndarray  # [D]
    head: np.ndarray  # [D, n_bins]
    num_kv_heads: int
    head_dim: int
    num_image_tokens: int

    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        b = pixel_values.shape[0]
        return np.tanh(pixel_values.reshape(b, -1) @ self.vision_w).reshape(
            b, self.num_image_tokens, -1).astype(np.float32)

    def decoder_last_logits(self, embeds: np.ndarray, prefix_length: int, past_length: int) -> np.ndarray:
        """Full-sequence forward of [1, L, D] embeddings; logits of the last position.
        `past_length` is what the cached graph would have been told for that last position."""
        h = embeds.astype(np.float64)
        length = h.shape[1]
        counts = np.arange(1, length + 1, dtype=np.float64)[None, None, :, None]
        for wk, wv, wo in zip(self.wk, self.wv, self.wo):
            k = (h @ wk).reshape(1, length, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
            v = (h @ wv).reshape(1, length, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
            ctx = np.cumsum(k * v, axis=2) / counts
            h = h + np.tanh(ctx.transpose(0, 2, 1, 3).reshape(1, length, -1) @ wo)
        last = h[:, -1] + past_length * self.w_past + prefix_length * self.w_prefix
        return last @ self.head

    def reference_bins(self, pixel_values: np.ndarray, text_ids: np.ndarray, tokens_per_action: int,
                       prefix_lm: bool) -> np.ndarray:
        seq = np.concatenate([self.vision(pixel_values)[0], self.embed_table[text_ids]], axis=0)
        prompt_len = seq.shape[0]
        prefix = prompt_len if prefix_lm else 0
        bins = []
        for step in range(tokens_per_action):
            past = 0 if step == 0 else prompt_len + step - 1
            b = int(np.argmax(self.decoder_last_logits(seq[None], prefix, past)[0]))
            bins.append(b)
            seq = np.concatenate([seq, self.embed_table[self.head_token_ids[b]][None]], axis=0)
        return np.asarray(bins)

    head_token_ids: np.ndarray = None  # set by make_artifact: bin -> token id


class CountingRunner:
    """Wraps a runtime GraphRunner and records the shapes of every run's feeds."""

    def __init__(self, inner):
        self.inner, self.input_names, self.calls = inner, inner.input_names, []

    def run(self, feeds, outputs):
        self.calls.append({k: np.asarray(v).shape for k, v in feeds.items()})
        return self.inner.run(feeds, outputs)


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="rt2edge-tests")
    model.ir_version = 9  # readable by every onnxruntime >= 1.16
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _vision_graph(m: TinyModel, size: int, hidden: int) -> onnx.GraphProto:
    nodes = [
        helper.make_node("Reshape", ["pixel_values", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "vision_w"], ["proj"]),
        helper.make_node("Tanh", ["proj"], ["act"]),
        helper.make_node("Reshape", ["act", "out_shape"], ["image_embeds"]),
    ]
    inits = [_init("vision_w", m.vision_w), _init("flat_shape", np.array([0, -1], np.int64)),
             _init("out_shape", np.array([0, m.num_image_tokens, hidden], np.int64))]
    return helper.make_graph(
        nodes, "vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT,
                                       ["batch", m.num_image_tokens, hidden])], inits)


def _embed_graph(m: TinyModel) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["inputs_embeds"], axis=0)], "embed",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT,
                                       ["batch", "seq", m.embed_table.shape[1]])],
        [_init("table", m.embed_table)])


def _decoder_graph(m: TinyModel, hidden: int, n_bins: int) -> onnx.GraphProto:
    kv, hd = m.num_kv_heads, m.head_dim
    nodes, inits = [], [
        _init("kv_shape", np.array([0, 0, kv, hd], np.int64)),
        _init("ctx_shape", np.array([0, 0, kv * hd], np.int64)),
        _init("one", np.array([1], np.int64)), _init("two", np.array([2], np.int64)),
        _init("axis1", np.array([1], np.int64)), _init("end", np.array([2**62], np.int64)),
        _init("minus1", np.array([-1], np.int64)), _init("last_shape", np.array([0, hidden], np.int64)),
        _init("count_shape", np.array([1, 1, -1, 1], np.int64)),
        _init("w_past", m.w_past), _init("w_prefix", m.w_prefix), _init("head", m.head),
    ]
    n = helper.make_node
    # counts[t] = past_length + 1 + t: the number of positions position t attends to.
    nodes += [
        n("Shape", ["inputs_embeds"], ["emb_shape"]),
        n("Gather", ["emb_shape", "one"], ["seq_len"], axis=0),
        n("Add", ["past_length", "one"], ["count_start"]),
        n("Add", ["count_start", "seq_len"], ["count_end"]),
        n("Squeeze", ["count_start"], ["count_start_s"]), n("Squeeze", ["count_end"], ["count_end_s"]),
        n("Squeeze", ["one"], ["one_s"]),
        n("Range", ["count_start_s", "count_end_s", "one_s"], ["count_range"]),
        n("Cast", ["count_range"], ["count_f"], to=TensorProto.FLOAT),
        n("Reshape", ["count_f", "count_shape"], ["counts"]),
    ]
    h = "inputs_embeds"
    inputs = [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", hidden]),
              helper.make_tensor_value_info("past_length", TensorProto.INT64, [1]),
              helper.make_tensor_value_info("prefix_length", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("action_logits", TensorProto.FLOAT, ["batch", n_bins]),
               helper.make_tensor_value_info("action_bin", TensorProto.INT64, ["batch"])]
    for i in range(len(m.wk)):
        inits += [_init(f"wk{i}", m.wk[i]), _init(f"wv{i}", m.wv[i]), _init(f"wo{i}", m.wo[i])]
        for kind, w in (("key", f"wk{i}"), ("value", f"wv{i}")):
            nodes += [n("MatMul", [h, w], [f"{kind}{i}_flat"]),
                      n("Reshape", [f"{kind}{i}_flat", "kv_shape"], [f"{kind}{i}_4d"]),
                      n("Transpose", [f"{kind}{i}_4d"], [f"{kind}{i}_new"], perm=[0, 2, 1, 3]),
                      n("Concat", [f"past.{i}.{kind}", f"{kind}{i}_new"], [f"present.{i}.{kind}"], axis=2)]
            inputs.append(helper.make_tensor_value_info(f"past.{i}.{kind}", TensorProto.FLOAT,
                                                        ["batch", kv, "past_length", hd]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT,
                                                         ["batch", kv, "total_length", hd]))
        nodes += [
            n("Mul", [f"present.{i}.key", f"present.{i}.value"], [f"kv{i}"]),
            n("CumSum", [f"kv{i}", "two"], [f"kv{i}_cum"]),
            n("Slice", [f"kv{i}_cum", "past_length", "end", "two"], [f"kv{i}_new"]),
            n("Div", [f"kv{i}_new", "counts"], [f"ctx{i}"]),
            n("Transpose", [f"ctx{i}"], [f"ctx{i}_t"], perm=[0, 2, 1, 3]),
            n("Reshape", [f"ctx{i}_t", "ctx_shape"], [f"ctx{i}_flat"]),
            n("MatMul", [f"ctx{i}_flat", f"wo{i}"], [f"upd{i}"]),
            n("Tanh", [f"upd{i}"], [f"upd{i}_t"]),
            n("Add", [h, f"upd{i}_t"], [f"h{i}"]),
        ]
        h = f"h{i}"
    nodes += [
        n("Slice", [h, "minus1", "end", "axis1"], ["last3"]),
        n("Reshape", ["last3", "last_shape"], ["last"]),
        n("Cast", ["past_length"], ["past_f"], to=TensorProto.FLOAT),
        n("Cast", ["prefix_length"], ["prefix_f"], to=TensorProto.FLOAT),
        n("Mul", ["past_f", "w_past"], ["past_bias"]), n("Mul", ["prefix_f", "w_prefix"], ["prefix_bias"]),
        n("Add", ["last", "past_bias"], ["last_b"]), n("Add", ["last_b", "prefix_bias"], ["last_bb"]),
        n("MatMul", ["last_bb", "head"], ["action_logits"]),
        n("ArgMax", ["action_logits"], ["action_bin"], axis=1, keepdims=0),
    ]
    return helper.make_graph(nodes, "decoder", inputs, outputs, inits)


def _specs(graph: onnx.GraphProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    names = {TensorProto.FLOAT: "float32", TensorProto.INT64: "int64"}

    def spec(vi: onnx.ValueInfoProto) -> TensorSpec:
        t = vi.type.tensor_type
        return TensorSpec(vi.name, names[t.elem_type],
                          [d.dim_param or d.dim_value for d in t.shape.dim])
    return [spec(v) for v in graph.input], [spec(v) for v in graph.output]


def _write_tokenizer(path: Path) -> dict[str, int]:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)  # as a trained tokenizer has them: "<image>" is one token
    tok.save(str(path))
    return vocab


def make_artifact(folder: str | Path, *, seed: int = 0, n_bins: int = 256, num_layers: int = 2,
                  num_kv_heads: int = 2, head_dim: int = 8, hidden: int = 32, image_size: int = 16,
                  num_image_tokens: int = 4, prefix_lm: bool = False, engines: bool = False,
                  instruction_first: bool = False, past_bias: bool = True, precision: str = "fp32",
                  ) -> tuple[Path, TinyModel]:
    """Write a complete, hash-verified artifact into `folder`; return it and its weights.
    `engines` also lists (fake) TensorRT engine files, to exercise the engine backend's checks.
    `instruction_first`: the prompt puts the text before the image (the reference does not follow).
    `past_bias=False` drops the past_length term from the last state: then a prefill that starts
    after cached positions equals the whole prefill, as in a real causal decoder."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    vocab = _write_tokenizer(root / "tokenizer.json")
    vocab_size = len(vocab) + n_bins  # action bins take the last n_bins ids ("last" strategy)
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale / np.sqrt(shape[0])).astype(np.float32)

    model = TinyModel(
        vision_w=w(3 * image_size * image_size, num_image_tokens * hidden, scale=2.0),
        embed_table=w(vocab_size, hidden, scale=np.sqrt(vocab_size)),
        wk=[w(hidden, num_kv_heads * head_dim) for _ in range(num_layers)],
        wv=[w(hidden, num_kv_heads * head_dim) for _ in range(num_layers)],
        wo=[w(num_kv_heads * head_dim, hidden, scale=WO_SCALE) for _ in range(num_layers)],
        w_past=w(hidden, scale=0.02 * np.sqrt(hidden) * past_bias), w_prefix=w(hidden, scale=0.02 * np.sqrt(hidden)),
        head=w(hidden, n_bins, scale=4.0), num_kv_heads=num_kv_heads, head_dim=head_dim,
        num_image_tokens=num_image_tokens)
    stats = ActionStatistics.from_actions(rng.uniform(-1, 1, (200, 7)) * [.05, .05, .05, .2, .2, .2, 1])
    tokenizer = ActionTokenizer(vocab_size=vocab_size, n_bins=n_bins, statistics=stats,
                                normalize_mask=np.array([1, 1, 1, 1, 1, 1, 0], bool))
    model.head_token_ids = tokenizer.token_ids
    prompt = PromptFormat(image_token_id=vocab["<image>"], num_image_tokens=num_image_tokens,
                          bos_token_id=vocab["[BOS]"], max_text_tokens=32, instruction_first=instruction_first)
    graphs = {"vision": _vision_graph(model, image_size, hidden), "embed": _embed_graph(model),
              "decoder": _decoder_graph(model, hidden, n_bins)}
    specs = {}
    for name, graph in graphs.items():
        _save(graph, root / f"{name}.onnx")
        inputs, outputs = _specs(graph)
        specs[name] = GraphSpec(f"{name}.onnx", inputs, outputs)
    engine_specs = {}
    if engines:
        for name in graphs:
            (root / f"{name}.engine").write_bytes(b"not a real TensorRT engine " + name.encode())
            engine_specs[name] = FileSpec(f"{name}.engine")
    manifest = ArtifactManifest(
        graphs=specs, engines=engine_specs, files={"tokenizer": FileSpec("tokenizer.json")},
        model=ModelSpec(family="tiny-test", num_layers=num_layers, num_kv_heads=num_kv_heads,
                        head_dim=head_dim, hidden_size=hidden, prefix_lm=prefix_lm),
        action_tokenizer=tokenizer, prompt=prompt, precision=precision,
        image_preprocessing=ImagePreprocessing(size=image_size),
        provenance={"source_checkpoint": "tests/artifact_factory.py", "rt2edge_version": "0.1.0",
                    "onnx_opset": OPSET})
    write_manifest(root, manifest)
    return root, model
