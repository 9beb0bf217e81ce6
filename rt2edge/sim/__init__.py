"""Built-in language-conditioned tabletop simulator with scripted experts (numpy only, no torch).

    from rt2edge.sim import TabletopEnv
    env = TabletopEnv(image_size=64, split="train")
    obs, info = env.reset(seed=0)          # obs["image"], obs["state"]; env.instruction
    obs, reward, terminated, truncated, info = env.step(env.expert_action())

Modules: world (state + dynamics), tasks (families, success, sampler), language (templates,
splits), experts, render, questions (VQA), env (gymnasium.Env). Closed-loop evaluation of
policies lives in rt2edge.evaluation.
"""

from __future__ import annotations

from rt2edge.sim.env import ACTION_NAMES, TabletopEnv
from rt2edge.sim.experts import ScriptedExpert, expert_action, expert_goal_xy
from rt2edge.sim.language import FAMILIES, HELDOUT_COMBOS, SPLITS, check_split, instructions_of
from rt2edge.sim.questions import Question, question_corpus, scene_questions
from rt2edge.sim.render import Renderer
from rt2edge.sim.tasks import FAILURE_KINDS, Task, TaskSampler, failure_kind, is_success
from rt2edge.sim.world import STATE_NAMES, Scene


def instruction_corpus(split: str = "train", include_vqa: bool = True) -> list[str]:
    """Every instruction the sampler can produce in `split` (all families), plus, by default, every
    VQA question and answer text: the text a tokenizer for this simulator must cover. Sorted."""
    texts = set()
    for family in FAMILIES:
        texts.update(instructions_of(family, check_split(split)))
    if include_vqa:
        texts.update(question_corpus())
    return sorted(texts)


__all__ = [
    "ACTION_NAMES", "FAILURE_KINDS", "FAMILIES", "HELDOUT_COMBOS", "SPLITS", "STATE_NAMES", "Question", "Renderer",
    "Scene", "ScriptedExpert", "TabletopEnv", "Task", "TaskSampler", "expert_action", "expert_goal_xy",
    "failure_kind", "instruction_corpus", "is_success", "question_corpus", "scene_questions",
]
