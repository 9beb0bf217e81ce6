"""export.run on tiny LLaVA- and PaliGemma-style policies built from configs (no network).

Each export traces three graphs (~5-10 s on one core), so the artifacts are module fixtures and
each test reads what it needs from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

import export  # noqa: E402
from export import pipeline  # noqa: E402
from export.adapters import LlavaVision, adapter_for  # noqa: E402
from export.reference import OnnxDecodeRunner  # noqa: E402
from rt2edge.actions import ActionStatistics  # noqa: E402
from rt2edge.artifact import load_manifest  # noqa: E402
from rt2edge.errors import ConfigError, ExportValidationError  # noqa: E402
from rt2edge.models.families import VLMSize  # noqa: E402
from rt2edge.models.policy import VLAPolicy  # noqa: E402
from artifact_factory import CountingRunner  # noqa: E402
from tiny_policies import TINY, build_tiny_policy  # noqa: E402

torch.set_num_threads(1)

VARIANTS = {
    "llava": ("llava", VLMSize(**TINY)),
    "paligemma": ("paligemma", VLMSize(**TINY, decoder="gemma", tie_word_embeddings=True)),
    "llava-clip": ("llava", VLMSize(**TINY, vision_tower="clip")),
}


def tiny_policy(tokenizer, variant: str, statistics=None) -> VLAPolicy:
    return build_tiny_policy(tokenizer, *VARIANTS[variant], statistics=statistics)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer, tiny_llava_checkpoint) -> dict[str, Path]:
    """llava: the session's tiny checkpoint (no statistics); paligemma: with two datasets' statistics."""
    path = tmp_path_factory.mktemp("checkpoints") / "paligemma"
    lo, hi = -0.05 * np.ones(7), 0.05 * np.ones(7)
    two_datasets = {"sim": ActionStatistics(q01=lo, q99=hi, min=lo, max=hi),
                    "bridge": ActionStatistics(q01=2 * lo, q99=2 * hi, min=2 * lo, max=2 * hi)}
    tiny_policy(tokenizer, "paligemma", statistics=two_datasets).save_pretrained(path)
    return {"llava": tiny_llava_checkpoint, "paligemma": path}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, checkpoints, tiny_llava_artifact) -> dict[str, Path]:
    """Both exported for the default target and validated on 4 observations (llava: the session's)."""
    out = tmp_path_factory.mktemp("artifacts") / "paligemma"
    paligemma = export.run(export.ExportConfig(checkpoint=checkpoints["paligemma"], out=out, validate_frames=4))
    return {"llava": tiny_llava_artifact, "paligemma": paligemma}


def _report(artifact: Path) -> dict:
    return json.loads((artifact / "export_report.json").read_text())


# ------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("variant", ["llava", "paligemma"])
def test_round_trip_fp32_agrees_with_torch(artifacts, variant):
    validation = _report(artifacts[variant])["validation"]
    assert validation["passed"], validation["failures"]
    agreement = validation["token_agreement"]
    # Random weights give near-ties (logits ~1e-2 apart at most) that thread count can flip; the
    # tie-aware figure is the gate export itself applies, the strict ones are reported.
    assert agreement["tie_aware"] == 1.0 and agreement["runtime"] == agreement["onnx_reference"] >= 0.9
    diffs = validation["max_abs_diff"]
    assert diffs["image_embeds"] < 1e-4 and diffs["prefill_logits"] < 1e-4 and diffs["logits"] < 1e-4
    assert len(diffs["step_logits"]) == 8  # 7 dims + terminate
    assert validation["batch"]["groups"] >= 1 and validation["batch"]["bins_match_unbatched"]


@pytest.mark.parametrize("variant", ["llava", "paligemma"])
def test_artifact_follows_the_contract(artifacts, variant):
    folder = artifacts[variant]
    manifest = load_manifest(folder, verify=True)
    assert manifest.model.prefix_lm == (variant == "paligemma")
    datasets = manifest.extra["dataset_statistics"]  # every dataset travels, for unnorm_key
    assert sorted(datasets) == ([] if variant == "llava" else ["bridge", "sim"])
    if variant == "paligemma":
        assert manifest.extra["default_unnorm_key"] == "sim"
        high = manifest.action_tokenizer("bridge").action_high
        np.testing.assert_allclose(high[:6], 2 * manifest.action_tokenizer().action_high[:6])
    assert {f.name for f in folder.iterdir()} >= {"manifest.json", "tokenizer.json", "vision.onnx", "embed.onnx",
                                                  "decoder.onnx", "export_report.json", "export_config.json"}
    decoder = manifest.graphs["decoder"]
    assert [t.name for t in decoder.inputs[:3]] == ["inputs_embeds", "past_length", "prefix_length"]
    assert [t.name for t in decoder.outputs[:2]] == ["action_logits", "action_bin"]
    assert decoder.output("action_logits").shape == ("batch", 256)
    # the ONNX file says the same as the manifest, dim names included
    proto = onnx.load(str(folder / "decoder.onnx"))
    io = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
          for v in list(proto.graph.input) + list(proto.graph.output)}
    for spec in decoder.inputs + decoder.outputs:
        assert io[spec.name] == list(spec.shape)
    config = json.loads((folder / "export_config.json").read_text())
    assert config["precision"] == "fp32" and config["tolerance_in_force"]["atol"] == 1e-3


@pytest.mark.parametrize("variant", ["llava", "paligemma"])
def test_decoder_has_only_the_action_head(artifacts, checkpoints, variant):
    policy = VLAPolicy.from_pretrained(checkpoints[variant])
    vocab = policy.model.get_input_embeddings().num_embeddings
    hidden = policy.model.config.get_text_config().hidden_size

    def shapes(name):
        return [tuple(t.dims) for t in onnx.load(str(artifacts[variant] / name)).graph.initializer]

    decoder = shapes("decoder.onnx")
    assert not [s for s in decoder if vocab in s], "a vocab-sized tensor is in decoder.onnx"
    assert (hidden, 256) in decoder or (256, hidden) in decoder  # the n_bins action rows
    assert (vocab, hidden) in shapes("embed.onnx")  # the full table lives in embed.onnx only


def test_action_head_rows_are_the_lm_head_rows_in_bin_order(artifacts, checkpoints):
    policy = VLAPolicy.from_pretrained(checkpoints["llava"])
    head = policy.model.get_output_embeddings().weight.detach().numpy()
    rows = head[policy.action_tokenizer.token_ids]
    initializers = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(artifacts["llava"] / "decoder.onnx")).graph.initializer]
    found = [a for a in initializers if a.shape in (rows.shape, rows.T.shape)]
    assert any(np.array_equal(a if a.shape == rows.shape else a.T, rows) for a in found)


def test_prefix_length_changes_paligemma_prefill(artifacts, checkpoints):
    """The bidirectional prefix is really in the graph (validation passing needs it too)."""
    policy = VLAPolicy.from_pretrained(checkpoints["paligemma"])
    manifest = load_manifest(artifacts["paligemma"])
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    inputs = policy.encode_observations(image[None], ["open the drawer"])
    logits = {}
    for prefix_lm in (True, False):
        runner = OnnxDecodeRunner(artifacts["paligemma"], num_layers=manifest.model.num_layers,
                                  num_kv_heads=manifest.model.num_kv_heads, head_dim=manifest.model.head_dim,
                                  prefix_lm=prefix_lm, image_token_id=policy.prompt.image_token_id,
                                  action_token_ids=policy.action_tokenizer.token_ids)
        logits[prefix_lm] = runner.decode(inputs["pixel_values"].numpy(), inputs["input_ids"].numpy(), 1).step_logits[0]
    # random weights give small logits (~4e-3); the fp32 graph error is ~1e-8, so 1e-6 is decisive
    assert np.abs(logits[True] - logits[False]).max() > 1e-6


# ------------------------------------------------------------------------------------ failures
def _corrupting_export(real):
    """export_graphs that negates the decoder's action head after writing it."""
    def corrupt(*args, **kwargs):
        graphs = real(*args, **kwargs)
        folder = args[4]
        model = onnx.load(str(folder / "decoder.onnx"))
        for tensor in model.graph.initializer:
            if 256 in tuple(tensor.dims) and len(tensor.dims) == 2:
                tensor.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(tensor), tensor.name))
        onnx.save(model, str(folder / "decoder.onnx"))
        return graphs
    return corrupt


def test_corrupted_graph_fails_validation_and_leaves_nothing(checkpoints, tmp_path, monkeypatch):
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "keep.txt").write_text("the previous artifact")
    monkeypatch.setattr(pipeline, "export_graphs", _corrupting_export(pipeline.export_graphs))
    with pytest.raises(ExportValidationError, match="action logits max abs diff") as info:
        export.run(export.ExportConfig(checkpoint=checkpoints["llava"], out=out, overwrite=True, validate_frames=2))
    assert not info.value.report.passed
    # the old artifact is untouched and no temp folder is left behind
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_existing_output_is_refused_without_overwrite(checkpoints, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError) as info:
        export.run(export.ExportConfig(checkpoint=checkpoints["llava"], out=tmp_path / "out"))
    assert info.value.field == "out"


# ------------------------------------------------------------------------------------ tensorrt / fp16
def test_tensorrt_fp16_export_passes_the_graph_check(checkpoints, tmp_path, monkeypatch):
    # Every graph with its weights in "<graph>.onnx.data", as graphs over 2 GiB must be.
    monkeypatch.setattr("export.onnx_export.EXTERNAL_DATA_BYTES", 0)
    out = export.run(export.ExportConfig(checkpoint=checkpoints["llava"], out=tmp_path / "trt", target="tensorrt",
                                         precision="fp16", validate_frames=2))
    report = _report(out)
    assert report["validation"]["passed"]
    assert report["validation"]["max_abs_diff"]["logits"] < 1e-2
    for graph in ("vision", "embed", "decoder"):
        assert report["target_checks"][graph]["tensorrt"]["ok"]
    manifest = load_manifest(out, verify=True)
    assert manifest.target == "tensorrt" and manifest.precision == "fp16"
    assert manifest.files["decoder.data"].file == "decoder.onnx.data" and (out / "decoder.onnx.data").is_file()
    profile = manifest.extra["tensorrt"]["profiles"]["decoder"]["past.0.key"]
    assert profile["min"][2] == 0 and profile["max"][2] > profile["opt"][2] > 0
    from rt2edge.runtime.backends import trt_profile_options  # what the TensorRT EP is given
    ep = trt_profile_options(manifest, "decoder")
    assert "past.0.key:1x" in ep["trt_profile_max_shapes"] and ep["trt_profile_min_shapes"].count(":") == len(
        [t for t in decoder_inputs(manifest) if not all(isinstance(d, int) for d in t.shape)])
    weights = [t for t in onnx.load(str(out / "decoder.onnx")).graph.initializer if len(t.dims) >= 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    decoder = manifest.graphs["decoder"]  # fp16 graphs keep float32 IO
    assert {t.dtype for t in decoder.inputs + decoder.outputs} == {"float32", "int64"}

    from rt2edge.errors import MissingDependencyError
    from rt2edge.optional import is_available
    if not is_available("tensorrt"):
        with pytest.raises(MissingDependencyError, match="tensorrt"):
            export.build_engine(out)


# ------------------------------------------------------------------------------------ adapters
@pytest.mark.parametrize("variant", ["llava", "llava-clip"])
def test_llava_vision_module_matches_hf_image_features(tokenizer, variant):
    policy = tiny_policy(tokenizer, variant)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = LlavaVision(policy.model)(pixels)
        theirs = torch.stack(list(policy.model.model.get_image_features(pixel_values=pixels).pooler_output))
    assert torch.equal(ours, theirs)


def test_unsupported_decoder_is_refused(tokenizer):
    policy = tiny_policy(tokenizer, "llava")
    policy.model.config.get_text_config().model_type = "gemma2"
    with pytest.raises(ConfigError, match="gemma2"):
        adapter_for("llava").check(policy.model)


def decoder_inputs(manifest):
    return manifest.graphs["decoder"].inputs


def test_instruction_first_prompt_round_trips_through_the_runtime(tokenizer, tmp_path):
    import dataclasses

    from rt2edge.runtime import Policy

    policy = tiny_policy(tokenizer, "llava")
    policy.prompt = dataclasses.replace(policy.prompt, instruction_first=True)
    policy.save_pretrained(tmp_path / "ckpt")
    art = export.run(export.ExportConfig(checkpoint=tmp_path / "ckpt", out=tmp_path / "art", validate_frames=4))
    validation = _report(art)["validation"]
    assert validation["passed"], validation["failures"]
    # validation ran the robot runtime against torch's generate() (tie-aware: random weights)
    assert validation["token_agreement"]["tie_aware"] == 1.0
    assert load_manifest(art).format_version == 3  # a reader that knows only image-first prompts refuses it
    runtime = Policy.load(art, num_threads=1)
    assert runtime.prompt.instruction_first
    before, after = runtime._text.embeds("open the drawer")
    assert before.shape[1] > 1 and after.shape[1] == 0  # [bos + text] [image] [no suffix]
    action = runtime.act(np.zeros((32, 32, 3), np.uint8), "open the drawer")
    assert not action.safe_fallback, action.reason
    # The text before the image is prefilled once per instruction (checked at load against the
    # whole prefill): later frames prefill only the image tokens, and act exactly as without it.
    assert runtime.prefix_cache_size == 2
    whole = Policy.load(art, num_threads=1, prefix_cache_size=0)
    runtime._decoder = decoder = CountingRunner(runtime._decoder)
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.integers(0, 256, (32, 32, 3), np.uint8)
        text = ("open the drawer", "pick up the red block")[i % 2]
        np.testing.assert_array_equal(runtime.act(image, text).bins, whole.act(image, text).bins)
    image_tokens = runtime.prompt.num_image_tokens
    prefills = [call["inputs_embeds"][1] for call in decoder.calls[::runtime.action_tokenizer.tokens_per_action]]
    assert prefills[1] > image_tokens and prefills[:1] + prefills[2:] == [image_tokens] * 5
