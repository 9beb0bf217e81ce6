"""Students: layer dropping copies the right tensors, presets bring their own tokenizer, and a
student whose action bins or dims differ from the teacher's is refused, naming the field."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill.kd.config import DistillConfig  # noqa: E402
from distill.kd.students import check_action_space, drop_layers, kept_layers, preset_student  # noqa: E402
from distill_factory import TINY_PRESETS  # noqa: E402
from rt2edge.actions import ActionStatistics  # noqa: E402
from rt2edge.errors import ConfigError  # noqa: E402
from rt2edge.models import ActionVocabConfig, presets  # noqa: E402

torch.set_num_threads(1)
IMAGE = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
STATS = ActionStatistics.from_actions(np.random.default_rng(1).normal(size=(50, 7)))


@pytest.fixture(autouse=True)
def tiny_presets(monkeypatch):
    for name, preset in TINY_PRESETS.items():
        monkeypatch.setitem(presets.PRESETS, name, preset)


@pytest.fixture(scope="module")
def teacher():
    presets.PRESETS.update(TINY_PRESETS)
    return presets.build_preset("kd-teacher", statistics={"tabletop": STATS}, seed=3)


def test_kept_layers():
    assert kept_layers(6, 2) == [0, 2, 4] and kept_layers(4, 3) == [0, 3] and kept_layers(2, 1) == [0, 1]


def test_layer_dropping_copies_the_right_layers(teacher):
    student = drop_layers(teacher, keep_every=2)
    t, s = teacher.model.state_dict(), student.model.state_dict()
    text, vision = student.model.config.get_text_config(), student.model.config.vision_config
    assert (text.num_hidden_layers, vision.num_hidden_layers) == (2, 1)
    lang = "model.language_model.layers"
    vis = "model.vision_tower.vision_model.encoder.layers"
    for new, old in enumerate([0, 2]):  # decoder layers 0 and 2 of 4 -> 0 and 1
        for key in [k for k in t if k.startswith(f"{lang}.{old}.")]:
            assert torch.equal(s[key.replace(f"{lang}.{old}.", f"{lang}.{new}.")], t[key]), key
    for key in [k for k in t if k.startswith(f"{vis}.0.")]:
        assert torch.equal(s[key], t[key])
    assert not any(k.startswith((f"{lang}.2.", f"{vis}.1.")) for k in s)
    shared = [k for k in t if ".layers." not in k]  # embeddings, vision embeddings, projector, norms, head
    assert len(shared) == len([k for k in s if ".layers." not in k]) > 8
    for key in shared:
        assert torch.equal(s[key], t[key]), key
    assert student.text_tokenizer is teacher.text_tokenizer and student.action_tokenizer is teacher.action_tokenizer
    assert student.parameter_counts()["total"] < teacher.parameter_counts()["total"]
    batch = student.build_training_batch(IMAGE, "pick up the red cube", np.zeros((2, 8)))
    assert student.action_logits(batch).shape == (2, 8, 256)


def test_keeping_every_layer_is_the_teacher(teacher):
    copy = drop_layers(teacher, keep_every=1)
    batch = teacher.build_training_batch(IMAGE, "pick up the red cube", np.zeros((2, 8)))
    with torch.no_grad():
        torch.testing.assert_close(copy.action_logits(batch), teacher.action_logits(batch), rtol=0, atol=0)


def test_layer_dropping_a_tied_prefix_lm():
    pali = presets.build_preset("paligemma-tiny", statistics=STATS)
    student = drop_layers(pali, keep_every=2)
    assert student.model.config.get_text_config().num_hidden_layers == 2
    assert student.model.get_output_embeddings().weight is student.model.get_input_embeddings().weight
    batch = student.build_training_batch(IMAGE, "pick up the red cube", np.zeros((2, 8)))
    assert student.action_logits(batch).shape == (2, 8, 256)


def test_preset_students_have_their_own_tokenizer_and_the_teachers_bins(teacher):
    for name, family in (("kd-student", "llava"), ("kd-pali", "paligemma")):
        student = preset_student(name, teacher.action_tokenizer, "tabletop", seed=0)
        assert student.family == family
        check_action_space(student.action_tokenizer, teacher.action_tokenizer)
        ours = student.encode_observations(IMAGE[:1], "pick up the red cube")["input_ids"][0].tolist()
        theirs = teacher.encode_observations(IMAGE[:1], "pick up the red cube")["input_ids"][0].tolist()
        assert ours != theirs  # another vocabulary: other prompt ids
        assert not np.array_equal(student.action_tokenizer.token_ids, teacher.action_tokenizer.token_ids)
        actions = np.random.default_rng(2).normal(size=(4, 8))
        assert np.array_equal(student.action_tokenizer.encode_bins(actions),
                              teacher.action_tokenizer.encode_bins(actions))  # ... and the same bins


@pytest.mark.parametrize("field, vocab, stats", [
    ("student.n_bins", ActionVocabConfig(n_bins=128), STATS),
    ("student.num_dims", ActionVocabConfig(num_dims=6), ActionStatistics.from_actions(np.ones((3, 6)))),
    ("student.terminate", ActionVocabConfig(terminate=False), STATS),
    ("student.statistics", ActionVocabConfig(), ActionStatistics.from_actions(np.ones((3, 7)) * np.arange(3)[:, None])),
])
def test_a_student_with_other_bins_or_dims_is_refused(teacher, field, vocab, stats):
    other = presets.build_preset("kd-student", statistics=stats, action=vocab)
    with pytest.raises(ConfigError) as err:
        check_action_space(other.action_tokenizer, teacher.action_tokenizer)
    assert err.value.field == field


@pytest.mark.parametrize("field, kw", [
    ("student", dict()),  # neither student nor from_teacher
    ("student", dict(student="kd-student", from_teacher=".")),
    ("loss", dict(student="kd-student", loss="mse")),
    ("temperature", dict(student="kd-student", temperature=0.0)),
    ("alpha", dict(student="kd-student", alpha=1.5)),
    ("keep_every", dict(from_teacher=".", keep_every=0)),
    ("cache", dict(student="kd-student", cache="/nonexistent")),
])
def test_distill_config_names_the_bad_field(tmp_path, field, kw):
    with pytest.raises(ConfigError) as err:
        DistillConfig(**{"cache": str(tmp_path), "out": str(tmp_path / "out"), **kw})
    assert err.value.field == field
