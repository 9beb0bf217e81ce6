"""quantize.run with the bitsandbytes methods on tiny checkpoints (CPU), and what run() refuses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
bnb = pytest.importorskip("bitsandbytes")

import quantize  # noqa: E402
from rt2edge.errors import ArtifactError, ConfigError  # noqa: E402
from rt2edge.models.families import SpecialTokenIds, VLMSize, build_model, get_family  # noqa: E402
from rt2edge.models.policy import VLAPolicy  # noqa: E402
from rt2edge.models.presets import default_corpus  # noqa: E402
from rt2edge.models.text_tokenizer import train_text_tokenizer  # noqa: E402
from quantize import QuantizeConfig  # noqa: E402
from quantize.bnb import bnb_config, disable_cpu_repack, load_quantized_policy, module_prefixes  # noqa: E402
from quantize.calibration import calibration_observations, sim_observations  # noqa: E402
from quantize.registry import _METHODS, MethodOutput, register_method  # noqa: E402

torch.set_num_threads(1)

TINY = dict(vision_hidden_size=64, vision_layers=1, vision_heads=2, vision_intermediate_size=128,
            hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
            image_size=32, patch_size=8)
FRAMES = 6


def save_tiny(folder: Path, family="llava", **size) -> Path:
    tokenizer = train_text_tokenizer(default_corpus(), vocab_size=512)
    tokens = SpecialTokenIds(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                             tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<image>"))
    model = build_model(get_family(family), VLMSize(**{**TINY, **size}), tokens, seed=0)
    VLAPolicy.from_model(model, tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("src") / "tiny")


@pytest.fixture(scope="module")
def observations():
    return sim_observations(FRAMES, image_size=32, seed=0)


@pytest.fixture(scope="module", params=["bnb-int8", "bnb-nf4"])
def quantized(request, source, observations, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "q"
    cfg = QuantizeConfig(source=source, out=out, method=request.param, calibration_frames=FRAMES,
                         holdout_frames=FRAMES)
    assert quantize.run(cfg) == out
    return cfg


def leftovers(folder: Path) -> list[str]:
    return [p for p in os.listdir(folder) if p.startswith(".")]


def test_run_writes_a_reloadable_checkpoint_with_a_report(quantized):
    out = quantized.out
    assert {"model.safetensors", "config.json", "rt2edge.json", "tokenizer.json", "quantize_config.json",
            "quantize_report.json", "quantize_report.md"} <= set(os.listdir(out))
    assert not leftovers(out.parent)
    report = json.loads((out / "quantize_report.json").read_text())
    fid = report["fidelity"]
    assert fid["n_observations"] == FRAMES and 0.0 <= fid["token_agreement"] <= 1.0
    assert len(fid["mean_abs_error"]) == 8 and fid["invalid_candidate"] == 0
    logits = report["action_logits"]  # the head is kept: teacher-forced logits are comparable
    assert logits["n_steps"] == FRAMES * 8 and logits["kl_mean"] >= 0 and 0 < logits["rel_l2"] < 1
    before, after = report["weight_bytes"]["before"], report["weight_bytes"]["after"]
    limit = 0.35 if quantized.bits == 8 else 0.25  # codes + per-row / per-64 scales
    assert after["language"] < limit * before["language"]
    for kept in ("vision", "projector", "head", "embeddings"):
        assert after[kept] == before[kept]
    assert after["total"] < before["total"]
    record = json.loads((out / "rt2edge.json").read_text())["quantization"]
    assert record["method"] == quantized.method and record["kept_groups"] == ["vision", "projector", "head"]
    assert record["quantized_linear_layers"] == 2 * 7  # q k v o gate up down per layer
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "bitsandbytes"
    assert QuantizeConfig.from_dict(json.loads((out / "quantize_config.json").read_text())) == quantized
    assert "token agreement" in (out / "quantize_report.md").read_text()


def test_reloaded_policy_acts_on_cpu_with_only_the_language_model_quantized(quantized, observations):
    policy = load_quantized_policy(quantized.out)
    kind = bnb.nn.Linear8bitLt if quantized.bits == 8 else bnb.nn.Linear4bit
    prefixes = module_prefixes(policy)
    for name, module in policy.model.named_modules():
        if isinstance(module, torch.nn.Linear):
            quantized_layer = isinstance(module, kind)
            assert quantized_layer == name.startswith(prefixes["language"] + "."), name
    images = np.stack([img for img, _ in observations])
    actions = policy.predict_action(images, [text for _, text in observations])
    tok = policy.action_tokenizer
    assert actions.shape == (FRAMES, tok.action_dim)
    assert np.all(actions[:, :7] >= tok.action_low) and np.all(actions[:, :7] <= tok.action_high)
    assert set(np.unique(actions[:, 7])) <= {0.0, 1.0}


def test_saved_weights_equal_a_fresh_on_load_quantization(quantized, source, observations):
    """The checkpoint holds exactly what bitsandbytes made, and acting does not corrupt it
    (bitsandbytes 0.50 repacks 4-bit weights on the first CPU forward; see quantize.bnb)."""
    images = np.stack([img for img, _ in observations])
    texts = [text for _, text in observations]
    reloaded = load_quantized_policy(quantized.out)
    fresh_ref = VLAPolicy.from_pretrained(source)
    skip = [module_prefixes(fresh_ref)[g] for g in quantized.keep_groups]
    quant_type = {"bnb-int8": "int8", "bnb-nf4": "nf4"}[quantized.method]
    config = bnb_config(quantized, quant_type, skip, torch.float32)
    fresh = VLAPolicy.from_pretrained(source, quantization_config=config, dtype=torch.float32, device_map="cpu")
    disable_cpu_repack(fresh.model)
    tokens = reloaded.predict_action_tokens(images, texts)
    assert np.array_equal(tokens, fresh.predict_action_tokens(images, texts))
    batch = reloaded.encode_observations(images, texts)
    with torch.no_grad():
        before = reloaded.model(**batch).logits
        reloaded.model.state_dict()  # what save_pretrained / export do after a policy has acted
        after = reloaded.model(**batch).logits
    assert torch.equal(before, after)


def test_an_already_quantized_source_is_refused_and_nothing_is_written(quantized, tmp_path):
    out = tmp_path / "again"
    with pytest.raises(ConfigError, match="already quantized") as err:
        quantize.run(QuantizeConfig(source=quantized.out, out=out, method="bnb-nf4", calibration_frames=2))
    assert err.value.field == "source" and not out.exists() and not leftovers(tmp_path)


def test_keep_nothing_quantizes_vision_and_head_too(source, observations, tmp_path):
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "stale.bin").write_bytes(b"old")  # overwrite replaces the folder whole
    cfg = QuantizeConfig(source=source, out=tmp_path / "all", method="bnb-int8", keep_groups=[], overwrite=True,
                         holdout_frames=2)
    out = quantize.run(cfg, observations=observations[:2], holdout=observations[2:4])
    assert not (out / "stale.bin").exists() and not leftovers(tmp_path)
    policy = load_quantized_policy(out)
    assert isinstance(policy.model.lm_head, bnb.nn.Linear8bitLt)
    vision = [m for n, m in policy.model.named_modules() if n.startswith(module_prefixes(policy)["vision"] + ".")]
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in vision)
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["fidelity"]["n_observations"] == 2
    assert report["action_logits"]["n_steps"] == 2 * 8  # action_logits runs the quantized head's forward


def test_a_tied_head_is_always_kept(tmp_path):
    src = save_tiny(tmp_path / "pali", family="paligemma", decoder="gemma", tie_word_embeddings=True)
    obs = sim_observations(2, image_size=32)
    out = quantize.run(QuantizeConfig(source=src, out=tmp_path / "q", method="bnb-int8", keep_groups=["vision"],
                                      holdout_frames=2), observations=obs, holdout=obs)
    record = json.loads((out / "rt2edge.json").read_text())["quantization"]
    assert "head" in record["kept_groups"] and "tied" in record["forced_keep"]["head"]
    policy = load_quantized_policy(out)
    assert type(policy.model.lm_head) is torch.nn.Linear
    assert policy.predict_action(obs[0][0], obs[0][1]).shape == (8,)


@pytest.mark.parametrize("quant_type", ["int8", "nf4"])
def test_action_logits_of_a_quantized_head_are_the_full_heads_action_rows(source, observations, quant_type):
    """VLAPolicy.action_logits on a bitsandbytes head: equal to the full LM head's logits at the
    action ids (it used to index the int8/4-bit codes as if they were weight rows)."""
    cfg = QuantizeConfig(source=source, out=source.parent / "unused", method=f"bnb-{quant_type}", keep_groups=[])
    policy = VLAPolicy.from_pretrained(source, quantization_config=bnb_config(cfg, quant_type, [], torch.float32),
                                       dtype=torch.float32, device_map="cpu")
    disable_cpu_repack(policy.model)
    assert isinstance(policy.model.lm_head, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))
    images = np.stack([img for img, _ in observations[:3]])
    texts = [text for _, text in observations[:3]]
    tokens = policy.predict_action_tokens(images, texts)
    batch = policy.build_action_token_batch(images, texts, tokens)
    with torch.no_grad():
        constrained = policy.action_logits(batch).float()
        full = policy(batch).logits.float()
    positions = batch["action_positions"] - 1  # the token at p is predicted at p - 1
    ids = torch.as_tensor(policy.action_tokenizer.allowed_ids)
    expected = full.gather(1, positions[..., None].expand(-1, -1, full.shape[-1]))[..., ids]
    assert constrained.shape == (3, 8, policy.action_tokenizer.n_bins)
    torch.testing.assert_close(constrained, expected, atol=1e-3, rtol=1e-3)
    # Teacher-forced on its own greedy tokens, the constrained head picks those same tokens.
    assert np.array_equal(policy.action_tokenizer.allowed_ids[constrained.argmax(-1).numpy()], tokens)


# ------------------------------------------------------------------------------------ refusals
def test_missing_or_foreign_source_and_existing_out_are_refused(source, tmp_path):
    with pytest.raises(ConfigError) as err:
        quantize.run(QuantizeConfig(source=tmp_path / "nope", out=tmp_path / "o"))
    assert err.value.field == "source"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="rt2edge.json"):
        quantize.run(QuantizeConfig(source=tmp_path / "empty", out=tmp_path / "o"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError) as err:
        quantize.run(QuantizeConfig(source=source, out=tmp_path / "taken"))
    assert err.value.field == "out"
    with pytest.raises(ConfigError) as err:
        quantize.run(QuantizeConfig(source=source, out=source / "inside"))
    assert err.value.field == "out"
    assert sorted(os.listdir(tmp_path)) == ["empty", "taken"]


def test_a_checkpoint_quantized_elsewhere_is_refused(source, tmp_path):
    copy = tmp_path / "hf-quantized"
    copy.mkdir()
    for name in os.listdir(source):
        (copy / name).write_bytes((source / name).read_bytes())
    config = json.loads((copy / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="already quantized.*gptq"):
        quantize.run(QuantizeConfig(source=copy, out=tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_a_failing_method_leaves_nothing_behind(source, observations, tmp_path):
    def half_then_fail(cfg, work_dir, obs) -> MethodOutput:
        (work_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("out of memory")

    register_method("test-failing", bits=4)(half_then_fail)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            quantize.run(QuantizeConfig(source=source, out=tmp_path / "q", method="test-failing"),
                         observations=observations, holdout=observations)
    finally:
        _METHODS.pop("test-failing", None)
    assert os.listdir(tmp_path) == []


def test_calibration_observations(tmp_path):
    a = calibration_observations("sim", 3, image_size=32, seed=5)
    b = calibration_observations("sim", 3, image_size=32, seed=5)
    assert len(a) == 3 and all(img.shape == (32, 32, 3) and img.dtype == np.uint8 for img, _ in a)
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    with pytest.raises(ConfigError) as err:
        calibration_observations(str(tmp_path / "missing"), 3)
    assert err.value.field == "calibration"
