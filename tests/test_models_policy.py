"""VLAPolicy on tiny LLaVA- and PaliGemma-style models built from configs (no network)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rt2edge.actions import ActionStatistics  # noqa: E402
from rt2edge.errors import ActionValueError, ArtifactError, ConfigError, InputError  # noqa: E402
from rt2edge.models.action_vocab import ActionVocabConfig  # noqa: E402
from rt2edge.models.batching import IGNORE_INDEX  # noqa: E402
from rt2edge.models.families import VLMSize, build_model, get_family  # noqa: E402
from rt2edge.models.policy import VLAPolicy  # noqa: E402
from rt2edge.models.presets import default_corpus  # noqa: E402
from tiny_policies import build_tiny_policy, special_tokens, text_tokenizer  # noqa: E402

torch.set_num_threads(1)

TINY = dict(vision_hidden_size=64, vision_layers=1, vision_heads=2, vision_intermediate_size=128,
            hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
            image_size=32, patch_size=8)
VARIANTS = {
    "llava": ("llava", VLMSize(**TINY)),
    "llava-clip-qwen2": ("llava", VLMSize(**TINY, vision_tower="clip", decoder="qwen2")),
    "paligemma": ("paligemma", VLMSize(**TINY, decoder="gemma", tie_word_embeddings=True)),
}
INSTRUCTIONS = ["pick up the red block", "open the drawer",
                "move the blue cube near the green ball and then lift the yellow cup"]


@pytest.fixture(scope="module")
def tokenizer():
    """A larger vocabulary than conftest's shared one."""
    return text_tokenizer(vocab_size=512)


def tiny_policy(tokenizer, variant="llava", seed=0, **kwargs) -> VLAPolicy:
    return build_tiny_policy(tokenizer, *VARIANTS[variant], seed=seed, **kwargs)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def policy(request, tokenizer):
    return tiny_policy(tokenizer, request.param)


def images(n, seed=0, size=48):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def stats(scale):
    lo, hi = -scale * np.ones(7), scale * np.ones(7)
    return ActionStatistics(q01=lo, q99=hi, min=lo * 1.1, max=hi * 1.1)


# ------------------------------------------------------------------------------ predict / save / load
def test_predict_in_range_save_reload_same_tokens(policy, tmp_path):
    tok = policy.action_tokenizer
    one = policy.predict_action(images(1)[0], "pick up the red block")
    assert one.shape == (tok.action_dim,)
    batch = policy.predict_action(images(3), INSTRUCTIONS)
    assert batch.shape == (3, tok.action_dim)
    assert np.all(batch[:, :7] >= tok.action_low) and np.all(batch[:, :7] <= tok.action_high)
    assert set(np.unique(batch[:, 7])) <= {0.0, 1.0}

    tokens = policy.predict_action_tokens(images(3), INSTRUCTIONS)
    policy.save_pretrained(tmp_path / "ckpt")
    assert "model.safetensors" in os.listdir(tmp_path / "ckpt")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ckpt")]  # no temp folder left
    meta = json.loads((tmp_path / "ckpt" / "rt2edge.json").read_text())
    assert meta["format_version"] == 1 and meta["family"] == policy.family

    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert loaded.family == policy.family
    np.testing.assert_array_equal(loaded.predict_action_tokens(images(3), INSTRUCTIONS), tokens)
    assert loaded.action_tokenizer.to_dict() == tok.to_dict()
    assert loaded.prompt == policy.prompt and loaded.image_preprocessing == policy.image_preprocessing


def test_robot_side_tokenizer_gives_the_same_ids(policy, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    policy.text_tokenizer.save_pretrained(tmp_path)
    robot = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for instruction in INSTRUCTIONS + ["Wipe  the TABLE, then café ☕"]:
        text = policy.prompt.text(instruction)
        hf = policy.text_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert robot.encode(text, add_special_tokens=False).ids == hf


def test_generate_matches_teacher_forced_action_logits(policy):
    """Left-padded cached generation and right-padded teacher forcing see the same positions and
    masks (PaliGemma: bidirectional prefix), so greedy tokens are the argmax of action_logits."""
    tokens = policy.predict_action_tokens(images(3, seed=1), INSTRUCTIONS)
    batch = policy.build_action_token_batch(images(3, seed=1), INSTRUCTIONS, tokens)
    with torch.no_grad():
        logits = policy.action_logits(batch)
    assert logits.shape == (3, policy.action_tokenizer.tokens_per_action, policy.action_tokenizer.n_bins)
    np.testing.assert_array_equal(logits.argmax(-1).numpy(), policy.action_tokenizer.ids_to_bins(tokens))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constrained_decode_never_yields_a_non_action_token(tokenizer, seed):
    variant = sorted(VARIANTS)[seed % len(VARIANTS)]
    policy = tiny_policy(tokenizer, variant, seed=seed)
    allowed = policy.action_tokenizer.allowed_ids
    # Make text tokens the runaway favourites: unconstrained greedy decoding picks them.
    with torch.no_grad():
        head = policy.model.get_output_embeddings().weight
        text_rows = torch.ones(head.shape[0], dtype=torch.bool)
        text_rows[torch.from_numpy(allowed)] = False
        head[text_rows] *= 20.0
    inputs = policy.encode_observations(images(2, seed=seed), INSTRUCTIONS[0])
    free = policy.model.generate(**inputs, max_new_tokens=8, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    assert not np.isin(free.numpy(), allowed).all()
    for batch_size in (1, 4):
        tokens = policy.predict_action_tokens(images(batch_size, seed=seed), INSTRUCTIONS[0])
        assert tokens.shape == (batch_size, policy.action_tokenizer.tokens_per_action)
        assert np.isin(tokens, allowed).all()


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("image, instruction, field", [
    (np.zeros((64, 64), np.uint8), "pick up the block", "image"),
    (np.zeros((64, 64, 4), np.uint8), "pick up the block", "image"),
    (np.zeros((64, 64, 3), np.float32), "pick up the block", "image"),
    (np.zeros((64, 64, 3), np.uint8), "", "instruction"),
    (np.zeros((64, 64, 3), np.uint8), "   ", "instruction"),
    (np.zeros((64, 64, 3), np.uint8), "pick up the <image> block", "instruction"),
    (np.zeros((2, 64, 64, 3), np.uint8), ["one instruction for two images"], "instruction"),
])
def test_bad_inputs_raise_input_error(policy, image, instruction, field):
    with pytest.raises(InputError) as err:
        policy.predict_action(image, instruction)
    assert err.value.field == field


def test_dataset_statistics_select_by_unnorm_key(tokenizer, tmp_path):
    policy = tiny_policy(tokenizer, statistics={"bridge": stats(0.1), "fractal": stats(2.0)})
    assert policy.default_unnorm_key == "bridge" and policy.action_tokenizer.normalization == "q01_q99"
    with pytest.raises(InputError) as err:
        policy.predict_action(images(1)[0], "open the drawer", unnorm_key="droid")
    assert err.value.field == "unnorm_key" and "fractal" in str(err.value)
    tokens = policy.predict_action_tokens(images(1), "open the drawer")
    fractal = policy.predict_action(images(1)[0], "open the drawer", unnorm_key="fractal")
    np.testing.assert_allclose(fractal, policy.tokenizer_for("fractal").decode(tokens)[0])
    bridge = policy.predict_action(images(1)[0], "open the drawer")
    assert np.abs(fractal[:7]).max() <= 2.0 and np.abs(bridge[:7]).max() <= 0.1

    policy.save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert sorted(loaded.dataset_statistics) == ["bridge", "fractal"] and loaded.default_unnorm_key == "bridge"
    np.testing.assert_allclose(loaded.predict_action(images(1)[0], "open the drawer", unnorm_key="fractal"), fractal)


def test_unnorm_key_without_statistics_is_refused(tokenizer):
    with pytest.raises(InputError, match="unnorm_key"):
        tiny_policy(tokenizer).predict_action(images(1)[0], "open the drawer", unnorm_key="bridge")


# ------------------------------------------------------------------------------ training batches
def test_training_batch_labels_only_on_action_tokens(policy):
    actions = np.random.default_rng(0).uniform(-1, 1, (3, 8))
    actions[:, 7] = [0, 1, 0]
    batch = policy.build_training_batch(images(3), INSTRUCTIONS, actions)
    labels, positions = batch["labels"], batch["action_positions"]
    expected = torch.full_like(labels, IGNORE_INDEX)
    expected.scatter_(1, positions, torch.from_numpy(policy.action_tokenizer.encode(actions)))
    assert torch.equal(labels, expected)
    assert torch.equal(batch["input_ids"].gather(1, positions), labels.gather(1, positions))
    if policy.family == "paligemma":  # the action tokens are the causal suffix, the rest prefix
        assert torch.equal(batch["token_type_ids"].bool() & batch["attention_mask"].bool(), labels != IGNORE_INDEX)
    assert policy.action_logits(batch).shape == (3, 8, 256)


def test_text_batch_labels_on_answer_and_eos(policy):
    batch = policy.build_text_batch(images(2), ["what color is the block?", "how many cups?"], ["red", "two cups"])
    labels = batch["labels"]
    tok = policy.text_tokenizer
    for row, answer in zip(labels, ["red", "two cups"]):
        target = row[row != IGNORE_INDEX].tolist()
        assert target == tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with pytest.raises(InputError):
        policy.action_logits(batch)  # no action positions in a VQA batch
    assert torch.isfinite(policy(batch).loss)


def test_a_few_optimizer_steps_lower_the_loss(tokenizer):
    policy = tiny_policy(tokenizer, "paligemma", seed=3).train()
    actions = np.random.default_rng(1).uniform(-1, 1, (4, 8))
    actions[:, 7] = 0
    batch = policy.build_training_batch(images(4), INSTRUCTIONS[:2] * 2, actions)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = policy(batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


# ------------------------------------------------------------------------------ action strategies
@pytest.mark.parametrize("strategy", ["last", "least_frequent", "append"])
def test_action_token_strategies(tokenizer, strategy):
    policy = tiny_policy(tokenizer, corpus=default_corpus(), action=ActionVocabConfig(strategy=strategy))
    tok = policy.action_tokenizer
    rows = policy.model.get_input_embeddings().num_embeddings
    assert rows == tok.total_vocab_size == len(tokenizer) + (256 if strategy == "append" else 0)
    assert not set(tokenizer.all_special_ids) & set(tok.allowed_ids.tolist())
    if strategy == "least_frequent":  # the ids the corpus never uses come first
        counts = np.bincount(np.concatenate(tokenizer(default_corpus(), add_special_tokens=False)["input_ids"]),
                             minlength=rows)
        assert counts[tok.allowed_ids].max() <= np.sort(counts[sorted(set(range(rows)) - set(tok.allowed_ids.tolist())
                                                                      - set(tokenizer.all_special_ids))]).min()
    assert np.isin(policy.predict_action_tokens(images(2), "lift the red cup"), tok.allowed_ids).all()


def test_least_frequent_needs_a_corpus(tokenizer):
    with pytest.raises(ConfigError, match="corpus"):
        tiny_policy(tokenizer, action=ActionVocabConfig(strategy="least_frequent"))


# ------------------------------------------------------------------------------ checkpoints
def test_from_pretrained_refuses_bad_checkpoints(tokenizer, tmp_path):
    policy = tiny_policy(tokenizer)
    ckpt = tmp_path / "ckpt"
    policy.save_pretrained(ckpt)
    policy.save_pretrained(ckpt)  # overwriting an existing checkpoint is atomic too
    meta_path = ckpt / "rt2edge.json"
    good = meta_path.read_text()

    with pytest.raises(ArtifactError, match="not a folder"):
        VLAPolicy.from_pretrained(tmp_path / "nowhere")
    for broken in ["{not json", json.dumps({**json.loads(good), "format_version": 99}),
                   json.dumps({k: v for k, v in json.loads(good).items() if k != "prompt"}),
                   json.dumps({**json.loads(good), "family": "paligemma"})]:
        meta_path.write_text(broken)
        with pytest.raises(ArtifactError):
            VLAPolicy.from_pretrained(ckpt)
    meta_path.unlink()
    with pytest.raises(ArtifactError, match="rt2edge.json"):
        VLAPolicy.from_pretrained(ckpt)

    # Weights only from safetensors: a pickle-only folder is refused, never unpickled.
    meta_path.write_text(good)
    (ckpt / "model.safetensors").unlink()
    torch.save(policy.model.state_dict(), ckpt / "pytorch_model.bin")
    with pytest.raises(ArtifactError):
        VLAPolicy.from_pretrained(ckpt)


def test_inconsistent_components_are_refused(tokenizer):
    policy = tiny_policy(tokenizer)
    from dataclasses import replace
    with pytest.raises(ConfigError, match="prompt.num_image_tokens"):
        VLAPolicy(policy.model, tokenizer, policy.action_tokenizer, replace(policy.prompt, num_image_tokens=5),
                  policy.image_preprocessing, "llava")
    with pytest.raises(ActionValueError):
        policy.build_action_token_batch(images(1), "lift the cup", np.zeros((1, 8), np.int64))


@pytest.mark.parametrize("variant", ["llava", "paligemma"])
def test_prefix_lm_attends_bidirectionally_over_the_prompt_only(tokenizer, variant):
    policy = tiny_policy(tokenizer, variant)
    batch = policy.build_training_batch(images(1), "pick up the red block", np.zeros((1, 8)))
    first_action = int(batch["action_positions"][0, 0])
    bos = policy.prompt.num_image_tokens  # an early prompt position

    def early_hidden(input_ids):
        with torch.no_grad():
            out = policy.model(**{**policy.model_inputs(batch), "input_ids": input_ids}, output_hidden_states=True)
        return out.hidden_states[-1][0, bos]

    base = early_hidden(batch["input_ids"])
    later_prompt, later_action = batch["input_ids"].clone(), batch["input_ids"].clone()
    later_prompt[0, first_action - 1] = tokenizer.convert_tokens_to_ids("a")
    later_action[0, first_action + 1] = int(policy.action_tokenizer.allowed_ids[7])
    sees_later_prompt = not torch.allclose(base, early_hidden(later_prompt))
    assert sees_later_prompt == (variant == "paligemma")  # the prefix is bidirectional
    assert torch.allclose(base, early_hidden(later_action))  # targets are causal for both


def test_last_strategy_on_a_padded_table_uses_the_base_vocab_like_openvla(tokenizer, tmp_path):
    # OpenVLA: Llama tokenizer of 32000 ids, embedding table padded to 32064 rows, action ids
    # 32000 - 1 - bin. Same shape here: the table has 64 padding rows past the text vocabulary.
    family, size = VARIANTS["llava"]
    model = build_model(get_family(family), size, special_tokens(tokenizer, len(tokenizer) + 64), seed=0)
    policy = VLAPolicy.from_model(model, tokenizer,
                                  action=ActionVocabConfig(strategy="last", vocab_size=len(tokenizer)))
    tok = policy.action_tokenizer
    assert tok.allowed_ids[0] == len(tokenizer) - 1 and tok.allowed_ids[-1] == len(tokenizer) - 256
    assert policy.model.get_input_embeddings().num_embeddings == len(tokenizer) + 64  # not resized
    predicted = policy.predict_action_tokens(images(2), "lift the red cup")
    assert np.isin(predicted, tok.allowed_ids).all()
    policy.save_pretrained(tmp_path / "ckpt")
    again = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert again.action_tokenizer.vocab_size == len(tokenizer)
    np.testing.assert_array_equal(again.predict_action_tokens(images(2), "lift the red cup"), predicted)
    with pytest.raises(ConfigError, match="action.vocab_size"):
        VLAPolicy.from_model(model, tokenizer, action=ActionVocabConfig(strategy="last",
                                                                        vocab_size=len(tokenizer) + 65))


def test_instruction_first_puts_the_image_after_the_text_where_it_sees_the_instruction(tokenizer, tmp_path):
    from dataclasses import replace

    policy = tiny_policy(tokenizer)
    policy.prompt = replace(policy.prompt, instruction_first=True)
    n_image = policy.prompt.num_image_tokens
    ids = policy.prompt.build_input_ids([11, 12, 13])
    assert list(ids[:4]) == [policy.prompt.bos_token_id, 11, 12, 13]
    assert (ids[4:4 + n_image] == policy.prompt.image_token_id).all() and len(ids) == 4 + n_image

    def first_image_hidden(instruction):
        batch = policy.build_training_batch(images(1), instruction, np.zeros((1, 8)))
        start = int((batch["input_ids"][0] == policy.prompt.image_token_id).nonzero()[0])
        with torch.no_grad():
            out = policy.model(**policy.model_inputs(batch), output_hidden_states=True)
        return out.hidden_states[-1][0, start]

    # causal LLaVA: the image tokens now attend to the instruction before them
    assert not torch.allclose(first_image_hidden("pick up the red block"), first_image_hidden("open the drawer"))
    policy.save_pretrained(tmp_path / "ckpt")
    reloaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert reloaded.prompt.instruction_first
    # older readers ignore the key and would build image-first prompts: version 3 makes them refuse
    meta_path = tmp_path / "ckpt" / "rt2edge.json"
    meta = json.loads(meta_path.read_text())
    assert meta["format_version"] == 3
    meta_path.write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(ArtifactError, match=r"'prompt.instruction_first' needs format_version >= 3"):
        VLAPolicy.from_pretrained(tmp_path / "ckpt")
    meta_path.write_text(json.dumps(meta))
    np.testing.assert_array_equal(reloaded.predict_action_tokens(images(2), "lift the cup"),
                                  policy.predict_action_tokens(images(2), "lift the cup"))
    with pytest.raises(InputError, match="instruction_first"):
        replace(policy.prompt, instruction_first="yes")
    legacy = {k: v for k, v in policy.prompt.to_dict().items() if k != "instruction_first"}
    assert not type(policy.prompt).from_dict(legacy).instruction_first  # older checkpoints: image first
