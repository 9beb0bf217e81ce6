"""VQA co-training source: answers agree with the scene state; the stream is seeded."""

from __future__ import annotations

import numpy as np
import pytest

from rt2edge.data import vqa_samples
from rt2edge.errors import ConfigError
from rt2edge.sim import TaskSampler, question_corpus, scene_questions
from rt2edge.sim.questions import NUMBERS


def test_answers_match_scene_state():
    sampler = TaskSampler()
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene, _ = sampler.sample(rng)
        qa = {q.question: q.answer for q in scene_questions(scene)}
        assert qa["how many objects are there?"] == NUMBERS[len(scene.objects)]
        for shape in ("cube", "sphere", "triangle"):
            count = sum(o.shape == shape for o in scene.objects)
            assert qa[f"how many {shape}s are there?"] == NUMBERS[count]
            if count == 1:
                only = next(o for o in scene.objects if o.shape == shape)
                assert qa[f"what colour is the {shape}?"] == only.colour
        if "which object is the largest?" in qa:
            biggest = max(scene.objects, key=lambda o: o.radius)
            assert qa["which object is the largest?"] == biggest.name
        if "which flag is at the top?" in qa:
            top = max(scene.flags, key=lambda f: f.y)
            assert qa["which flag is at the top?"] == top.country
        for obj in scene.objects:
            for mat in scene.mats:
                assert qa[f"is the {obj.name} on the {mat.colour} mat?"] == "no"  # start layout
        assert qa["is the gripper open?"] == "yes" and qa["what is the robot holding?"] == "nothing"


def test_every_question_and_answer_is_in_the_corpus():
    corpus = set(question_corpus())
    for sample in vqa_samples(seed=3, limit=150, questions_per_scene=3):
        assert sample.question in corpus and sample.answer in corpus


def test_stream_is_seeded_and_covers_kinds():
    a = list(vqa_samples(seed=1, limit=40))
    b = list(vqa_samples(seed=1, limit=40))
    assert [(s.question, s.answer) for s in a] == [(s.question, s.answer) for s in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert len({s.kind for s in a}) >= 6
    assert a[0].image.shape == (64, 64, 3) and a[0].image.dtype == np.uint8
    answers = {s.answer for s in vqa_samples(seed=2, limit=200) if s.kind == "gripper"}
    assert answers == {"yes", "no"}  # mid-episode scenes: both gripper states occur


def test_bad_arguments():
    with pytest.raises(ConfigError, match="questions_per_scene"):
        next(vqa_samples(questions_per_scene=0))
    with pytest.raises(ConfigError, match="split"):
        next(vqa_samples(split="val"))
