"""The expert-agreement diagnosis: the expert's and the policy's own states, per task phase."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rt2edge.errors import ConfigError
from rt2edge.evaluation import ScriptedExpertPolicy, evaluate, expert_agreement
from rt2edge.evaluation.expert_agreement import DRIVERS, PHASES, agreement_parts, expert_phase
from rt2edge.sim import TabletopEnv


class StillPolicy:
    """Stateless and batched: never moves, keeps the gripper open, never terminates."""

    stateful = False
    name = "still"

    def act(self, image, instruction):
        return np.array([0, 0, 0, 0, 0, 0, -1.0, 0])

    def act_batch(self, images, instructions):
        return np.tile(self.act(None, None), (len(images), 1))


def test_the_expert_agrees_with_itself_on_every_phase_of_both_drivers():
    result = expert_agreement(ScriptedExpertPolicy(), episodes=6, seed=3, families=["put_on", "pick"])
    for driver in DRIVERS:
        assert result.success[driver] == 1.0
        assert result.rate(driver) == 1.0 and result.steps(driver) > 0
    # a pick-and-place runs through every phase; the expert-driven pass visits exactly the expert's states
    assert all(result.steps("expert", phase) > 0 for phase in PHASES)
    assert result.counts["expert"] == result.counts["policy"]


def test_a_policy_that_never_moves_is_told_apart_per_phase_and_driver():
    result = expert_agreement(StillPolicy(), episodes=4, seed=0, families=["pick"], max_steps=12, num_envs=3)
    # on its own states it never leaves the start: every step is an approach the expert would move in
    assert result.success["policy"] == 0.0
    assert result.steps("policy") == 4 * 12 and result.steps("policy", "approach") == 4 * 12
    assert result.rate("policy", "approach") == 0.0
    assert result.rate("policy", "approach", "gripper") == 1.0  # open, like the expert on the way
    # on the expert's states it matches only where the expert holds still with the gripper open
    assert result.success["expert"] == 1.0
    assert result.rate("expert", "grasp") == 0.0 and result.rate("expert", "done", "terminate") == 0.0
    assert result.rate("expert", "carry", "gripper") == 0.0  # the expert keeps it closed while lifting
    assert result.rate("policy", "release") is None  # never reached


def test_the_scenes_are_the_evaluators_for_the_same_seed():
    """The policy-driven pass is `evaluate` over the same scenes (families round-robin)."""
    families = ["pick", "move_to_mat"]

    class Recording(StillPolicy):
        def __init__(self):
            self.seen = []

        def act_batch(self, images, instructions):
            self.seen += list(instructions)
            return super().act_batch(images, instructions)

    agreeing, evaluating = Recording(), Recording()
    agreement = expert_agreement(agreeing, episodes=4, seed=7, families=families, max_steps=3, num_envs=1)
    evaluate(evaluating, episodes=4, seed=7, splits=["train"], families=families, max_steps=3, num_envs=1)
    assert evaluating.seen == agreeing.seen[-len(evaluating.seen):]  # the policy-driven pass runs last
    assert agreement.steps("policy") == 4 * 3 == agreement.steps("expert")  # the expert needs > 3 steps


def test_phases_and_parts_read_the_experts_action():
    env = TabletopEnv(families=("pick",), object_counts=(2,))
    env.reset(seed=0)
    expert = env.expert_action()
    assert expert_phase(env.scene, expert) == "approach"
    closing = expert.copy()
    closing[:3], closing[6] = 0.0, 1.0
    assert expert_phase(env.scene, closing) == "grasp"
    done = np.zeros(8)
    done[7] = 1.0
    assert expert_phase(env.scene, done) == "done"
    half = env.max_step / 2
    near = expert.copy()
    near[0] += 0.49 * half  # within a quarter step: the same half-step class
    assert agreement_parts(near, expert, env.max_step)["action"]
    off = expert.copy()
    off[0] += 0.51 * half
    parts = agreement_parts(off, expert, env.max_step)
    assert not parts["move"] and not parts["action"] and parts["gripper"] and parts["terminate"]
    long = expert.copy()
    long[:2] = np.sign(expert[:2]) * 1.3 * env.max_step  # the env clips it to the expert's full step
    assert np.all(np.abs(expert[:2]) == env.max_step)
    assert agreement_parts(long, expert, env.max_step)["move"]


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="episodes"):
        expert_agreement(StillPolicy(), episodes=0)
    with pytest.raises(ConfigError, match="split"):
        expert_agreement(StillPolicy(), episodes=1, split="test")

    class NoExpertEnv:  # a user's env without the scripted expert
        def __init__(self, split):
            self.split = split

    with pytest.raises(ConfigError, match="env_factory"):
        expert_agreement(StillPolicy(), episodes=1, env_factory=NoExpertEnv)


def test_the_table_and_json_carry_both_drivers():
    result = expert_agreement(StillPolicy(), episodes=2, seed=0, families=["pick"], max_steps=5)
    table = result.format_table()
    assert "expert-driven states" in table and "policy-driven states" in table
    assert all(phase in table for phase in PHASES)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["agreement"]["policy"]["approach"]["action"] == 0.0
    assert data["agreement"]["policy"]["all"]["steps"] == 10
    assert data["agreement"]["policy"]["release"]["action"] is None
