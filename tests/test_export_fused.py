"""The onnxruntime target's fused decoder (export/fused_decoder.py) against the plain one.

Both decoders of tiny LLaVA- (causal) and PaliGemma-style (prefix-LM, MQA) policies are exported
on their own (~2 s each, no validation run) and driven with the same inputs through ONNX Runtime:
the fused one must launch fewer kernels and give the same action bins, logits and KV cache.
One full `export.run` (the session's `tiny_llava_artifact`, conftest.py) checks what the target
writes into the artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

from export.adapters import adapter_for  # noqa: E402
from export.config import ExportConfig  # noqa: E402
from export.fused_decoder import check_fusable  # noqa: E402
from export.onnx_export import build_wrappers, export_graph, model_dims  # noqa: E402
from export.trt_check import check_tensorrt_compatibility  # noqa: E402
from rt2edge.artifact import cache_names, load_manifest  # noqa: E402
from rt2edge.errors import ConfigError  # noqa: E402
from rt2edge.models.families import VLMSize  # noqa: E402
from rt2edge.models.policy import VLAPolicy  # noqa: E402
from tiny_policies import TINY, build_tiny_policy  # noqa: E402

torch.set_num_threads(1)

VARIANTS = {
    "llava": ("llava", VLMSize(**TINY)),
    "paligemma": ("paligemma", VLMSize(**{**TINY, "num_kv_heads": 1}, decoder="gemma", tie_word_embeddings=True)),
}
PROMPT = 21  # prompt tokens of the driven decode
POSITIONS = 64  # rotary rows of the fused graph: >= PROMPT + tokens_per_action


def tiny_policy(tokenizer, variant: str) -> VLAPolicy:
    return build_tiny_policy(tokenizer, *VARIANTS[variant])


@pytest.fixture(scope="module")
def decoders(tokenizer, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """{variant: {"plain": decoder.onnx, "fused": decoder.onnx}}."""
    out = {}
    for variant in VARIANTS:
        policy = tiny_policy(tokenizer, variant)
        adapter = adapter_for(policy.family)
        model, ids = policy.model, policy.action_tokenizer.token_ids.tolist()
        text = adapter.text_config(model)
        dims = model_dims(model, adapter, policy.action_tokenizer.n_bins, policy.prompt.num_image_tokens)
        modules = {"plain": build_wrappers(model, adapter, ids)["decoder"],
                   "fused": build_wrappers(model, adapter, ids, POSITIONS)["decoder"]}
        out[variant] = {}
        for kind, module in modules.items():
            folder = tmp_path_factory.mktemp(f"{variant}-{kind}")
            out[variant][kind] = folder / export_graph("decoder", module, dims, folder, 18, "fp32", text).spec.file
    return out


def session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def kernels(path: Path, tmp_path: Path) -> int:
    """Nodes of ONNX Runtime's optimized graph (ORT_ENABLE_ALL, as the runtime): kernels per run."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / f"{path.parent.name}-optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return len(onnx.load(options.optimized_model_filepath).graph.node)


def drive(sess, steps: int, prefix: int, forced: np.ndarray | None = None) -> dict[str, list[np.ndarray]]:
    """Prefill on PROMPT random embeddings + (steps - 1) decode runs, as the runtime calls the
    decoder (docs/artifact-format.md); step k feeds row `bins[k - 1]` of a fixed random table,
    or of `forced` bins (so two graphs decode the same context)."""
    inputs = {i.name: i for i in sess.get_inputs()}
    layers = sum(name.startswith("past.") for name in inputs) // 2
    _, kv, _, head_dim = inputs["past.0.key"].shape
    hidden = inputs["inputs_embeds"].shape[2]
    rng = np.random.default_rng(0)
    table = rng.standard_normal((256, hidden)).astype(np.float32)
    embeds = rng.standard_normal((2, PROMPT, hidden)).astype(np.float32)  # batch 2
    past = [np.zeros((2, kv, 0, head_dim), np.float32) for _ in range(2 * layers)]
    length, out = 0, {"logits": [], "bins": [], "present": []}
    for step in range(steps):
        feed = {"inputs_embeds": embeds, "past_length": np.array([length], np.int64),
                "prefix_length": np.array([prefix], np.int64), **dict(zip(cache_names(layers, "past"), past))}
        logits, bins, *past = sess.run(None, feed)
        length += embeds.shape[1]
        out["logits"].append(logits)
        out["bins"].append(bins)
        out["present"].append(past)
        chosen = bins if forced is None else forced[:, step]
        embeds = table[chosen][:, None, :]
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_decoder_runs_fewer_kernels(decoders, variant, tmp_path):
    plain, fused = decoders[variant]["plain"], decoders[variant]["fused"]
    assert len(onnx.load(str(fused)).graph.node) < len(onnx.load(str(plain)).graph.node)
    assert kernels(fused, tmp_path) * 2 < kernels(plain, tmp_path)
    ops = {(n.domain, n.op_type) for n in onnx.load(str(fused)).graph.node}
    assert {("com.microsoft", "GroupQueryAttention"), ("com.microsoft", "SkipSimplifiedLayerNormalization")} <= ops


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_decoder_gives_the_plain_decoders_actions(decoders, variant):
    """Same bins, logits and KV cache at the prefill and every decode step, the fused graph fed the
    plain graph's bins (teacher forcing), with the prefix-LM mask for PaliGemma."""
    prefix = PROMPT if variant == "paligemma" else 0
    plain = drive(session(decoders[variant]["plain"]), 8, prefix)
    forced = np.stack(plain["bins"], axis=1)
    fused = drive(session(decoders[variant]["fused"]), 8, prefix, forced=forced)
    for step in range(8):
        np.testing.assert_allclose(fused["logits"][step], plain["logits"][step], atol=1e-5, rtol=0)
        for a, b in zip(fused["present"][step], plain["present"][step]):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(fused["bins"][step], plain["bins"][step])


def test_prefix_length_reaches_the_fused_attention(decoders):
    """The bidirectional prompt of a prefix-LM goes through GroupQueryAttention's bias."""
    sess = session(decoders["paligemma"]["fused"])
    causal, prefix = drive(sess, 1, 0)["logits"][0], drive(sess, 1, PROMPT)["logits"][0]
    assert np.abs(causal - prefix).max() > 1e-6


def test_fused_graphs_are_not_for_tensorrt(decoders):
    report = check_tensorrt_compatibility(decoders["llava"]["fused"])
    assert not report.ok and any("com.microsoft" in issue for issue in report.issues)
    assert check_tensorrt_compatibility(decoders["llava"]["plain"]).ok


# ------------------------------------------------------------------------------------ refusals
def test_default_target_is_onnxruntime(tmp_path):
    cfg = ExportConfig(checkpoint=tmp_path / "c", out=tmp_path / "o")
    assert cfg.target == "onnxruntime"
    with pytest.raises(ConfigError) as err:  # the fused graphs are never checked for TensorRT
        ExportConfig(checkpoint=tmp_path / "c", out=tmp_path / "o", build_engine=True)
    assert err.value.field == "build_engine"


def test_a_decoder_the_fused_graph_cannot_express_is_refused(tokenizer):
    policy = tiny_policy(tokenizer, "llava")
    language = policy.model.model.language_model
    text = policy.model.config.get_text_config()
    language.layers[0].self_attn.q_norm = torch.nn.Identity()  # Qwen3-style q/k norms
    with pytest.raises(ConfigError, match="--target onnx") as err:
        check_fusable(language, text)
    assert err.value.field == "target"
    del language.layers[0].self_attn.q_norm
    rope_type, language.rotary_emb.rope_type = language.rotary_emb.rope_type, "dynamic"
    with pytest.raises(ConfigError, match="sequence length"):
        check_fusable(language, text)
    language.rotary_emb.rope_type = rope_type
    check_fusable(language, text)  # back to the plain Llama block: fusable
    for name, value, reason in [("use_sliding_window", True, "use_sliding_window"),  # Qwen2
                                ("layer_types", ["sliding_attention", "full_attention"], "sliding_attention")]:
        original = getattr(text, name, None)
        setattr(text, name, value)
        with pytest.raises(ConfigError, match=reason):
            check_fusable(language, text)
        setattr(text, name, original)


# ------------------------------------------------------------------------------------ artifact
def test_export_run_records_the_fused_ops(tiny_llava_artifact):
    out = tiny_llava_artifact  # export.run of the tiny llava policy for the default target
    manifest = load_manifest(out, verify=True)
    assert manifest.target == "onnxruntime" and manifest.format_version == 1
    fused = manifest.extra["onnxruntime"]["fused_ops"]
    assert fused["decoder"] == {"com.microsoft::GroupQueryAttention": 2,
                                "com.microsoft::SkipSimplifiedLayerNormalization": 4}
    assert fused["vision"] == fused["embed"] == {}
    report = json.loads((out / "export_report.json").read_text())
    assert report["validation"]["passed"] and report["validation"]["token_agreement"]["tie_aware"] == 1.0
    assert report["target_checks"]["decoder"]["onnx_checker"] == "ok"


@pytest.mark.parametrize("seq, past", [(PROMPT, 0), (1, PROMPT)])
def test_bench_counts_the_same_work_in_both_decoders(decoders, seq, past):
    """bench's graph cost sees the attention matmuls inside GroupQueryAttention, so the roofline
    of a fused artifact is bounded by the same FLOPs and weight bytes as the plain one's."""
    from bench.onnx_costs import onnx_graph_cost

    dims, values = {"batch": 1, "seq": seq, "past": past}, {"past_length": [past], "prefix_length": [0]}
    plain = onnx_graph_cost(decoders["llava"]["plain"], dims, values)
    fused = onnx_graph_cost(decoders["llava"]["fused"], dims, values)
    assert not plain.unresolved and not fused.unresolved
    assert fused.macs == plain.macs and fused.weight_macs == plain.weight_macs
    assert fused.matmul_weight_bytes == plain.matmul_weight_bytes
