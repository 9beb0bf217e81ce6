"""Presets (sizes, action space), the family registry and `rt2edge info`."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from rt2edge.actions import ActionStatistics  # noqa: E402
from rt2edge.cli import app  # noqa: E402
from rt2edge.errors import ConfigError  # noqa: E402
from rt2edge.models import PRESETS, build_preset  # noqa: E402
from rt2edge.models.families import FAMILIES, SpecialTokenIds, VLMSize, get_family  # noqa: E402

torch.set_num_threads(1)

# (low, high) total parameters, as stated in presets.py
RANGES = {"teacher": (12e6, 18e6), "student-m": (5e6, 10e6), "student-s": (1e6, 3e6),
          "paligemma-tiny": (2e6, 5e6)}


@pytest.mark.parametrize("name", sorted(RANGES))
def test_preset_sizes_and_action_space(name):
    policy = build_preset(name)
    counts = policy.parameter_counts()
    low, high = RANGES[name]
    assert low <= counts["total"] <= high, counts
    assert counts["total"] == counts["vision"] + counts["projector"] + counts["language"] + counts["head"]
    tok = policy.action_tokenizer
    assert (tok.strategy, tok.n_bins, tok.num_dims) == ("append", 256, 7)
    assert tok.terminate and tok.normalization == "none"
    assert tok.tokens_per_action == 8 and policy.prompt.num_image_tokens == 64
    assert policy.image_preprocessing.size == 64
    text = policy.model.config.get_text_config()
    assert text.hidden_size // text.num_attention_heads in (32, 64)
    assert policy.family == PRESETS[name].family


def test_preset_with_statistics_and_corpus_is_deterministic():
    corpus = ["pick up the can", "put the can in the drawer", "close the drawer"] * 4
    stats = ActionStatistics.from_actions(np.random.default_rng(0).normal(size=(100, 7)))
    a = build_preset("student-s", corpus=corpus, statistics=stats, seed=1)
    b = build_preset("student-s", corpus=corpus, statistics={"default": stats}, seed=1)
    assert a.action_tokenizer.normalization == "q01_q99" and a.default_unnorm_key == "default"
    assert a.text_tokenizer.get_vocab() == b.text_tokenizer.get_vocab()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    image = np.zeros((64, 64, 3), np.uint8)
    np.testing.assert_array_equal(a.predict_action_tokens(image, "pick up the can"),
                                  b.predict_action_tokens(image, "pick up the can"))


def test_unknown_preset_and_family_name_the_field():
    with pytest.raises(ConfigError) as err:
        build_preset("giant")
    assert err.value.field == "preset"
    with pytest.raises(ConfigError) as err:
        get_family("flamingo")
    assert err.value.field == "family"
    assert {"llava", "paligemma"} <= set(FAMILIES)


@pytest.mark.parametrize("kwargs, field", [
    (dict(patch_size=7), "size.patch_size"),
    (dict(num_kv_heads=3), "size.num_kv_heads"),
    (dict(vision_tower="vit"), "size.vision_tower"),
    (dict(hidden_size=0), "size.hidden_size"),
])
def test_size_validation_names_the_field(kwargs, field):
    base = dict(vision_hidden_size=64, vision_layers=1, vision_heads=2, vision_intermediate_size=128,
                hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=128)
    with pytest.raises(ConfigError) as err:
        VLMSize(**{**base, **kwargs})
    assert err.value.field == field


def test_family_refuses_a_decoder_it_does_not_pair_with():
    size = VLMSize(vision_hidden_size=64, vision_layers=1, vision_heads=2, vision_intermediate_size=128,
                   hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=128,
                   decoder="llama")
    with pytest.raises(ConfigError, match="size.decoder"):
        get_family("paligemma").build_config(size, SpecialTokenIds(300, 0, 1, 2, 3))


@pytest.mark.parametrize("instruction_first", [False, True])
def test_info_command(tmp_path, monkeypatch, instruction_first):
    import dataclasses

    monkeypatch.setitem(PRESETS, "student-s", dataclasses.replace(PRESETS["student-s"],
                                                                  instruction_first=instruction_first))
    built = build_preset("student-s")
    assert built.prompt.instruction_first is instruction_first  # the preset's layout reaches the prompt
    built.save_pretrained(tmp_path / "ckpt")
    runner = CliRunner()
    result = runner.invoke(app, ["info", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    for text in ("llava", "siglip vision, llama decoder", "strategy append", "256 bins",
                 "7 dims", "terminate yes", "normalization none", "vision 0.43M",
                 f"prompt:      {'instruction, image' if instruction_first else 'image, instruction'}"):
        assert text in result.output, result.output

    result = runner.invoke(app, ["info", "--json", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["parameters"]["total"] == build_preset("student-s").parameter_counts()["total"]
    assert info["vocab_size"] == info["action"]["token_id_range"][1] + 1

    result = runner.invoke(app, ["info", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "error" in result.output
