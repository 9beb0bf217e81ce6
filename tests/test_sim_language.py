"""Instruction templates, splits and the corpus."""

from __future__ import annotations

import numpy as np
import pytest

from rt2edge.errors import ConfigError
from rt2edge.sim import FAMILIES, HELDOUT_COMBOS, TaskSampler, instruction_corpus, question_corpus
from rt2edge.sim.language import TEMPLATES, instructions_of


def words(texts):
    return {w for t in texts for w in t.replace("?", " ").split()}


def test_heldout_instructions_never_appear_in_train_corpus():
    train = set(instruction_corpus("train"))
    heldout = set(instruction_corpus("heldout", include_vqa=False))
    assert heldout and not heldout & train


def test_heldout_templates_are_new_paraphrases_with_known_words():
    train_templates = {t for f in FAMILIES for t in TEMPLATES[f]["train"]}
    for family in FAMILIES:
        assert not set(TEMPLATES[family]["heldout"]) & train_templates
    # a tokenizer fitted on the train corpus has no unknown word on heldout instructions
    assert words(instruction_corpus("heldout")) <= words(instruction_corpus("train"))


def test_train_instructions_never_name_heldout_objects():
    names = [f"{c} {s}" for c, s in HELDOUT_COMBOS]
    for text in instruction_corpus("train", include_vqa=False):
        assert not any(n in text for n in names), text


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_sampled_instructions_are_in_the_corpus(split):
    corpus = set(instruction_corpus(split))
    sampler = TaskSampler(split)
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, task = sampler.sample(rng)
        assert task.instruction in corpus


def test_corpus_includes_vqa_text_and_is_sorted_unique():
    corpus = instruction_corpus("train")
    assert corpus == sorted(set(corpus))
    assert set(question_corpus()) <= set(corpus)
    assert all(instructions_of(f, "train") for f in FAMILIES)


def test_bad_split_names_the_field():
    with pytest.raises(ConfigError) as exc:
        instruction_corpus("validation")
    assert exc.value.field == "split"


def test_sampler_makes_tasks_well_posed():
    sampler = TaskSampler("train")
    rng = np.random.default_rng(1)
    for _ in range(100):
        scene, task = sampler.sample(rng)
        names = [o.name for o in scene.objects]
        assert len(set(names)) == len(names)  # every named object is unique
        if task.family == "pick_extreme":
            radius = scene.objects[task.target].radius
            others = [o.radius for i, o in enumerate(scene.objects) if i != task.target]
            assert (radius < min(others)) if task.extreme == "smallest" else (radius > max(others))
