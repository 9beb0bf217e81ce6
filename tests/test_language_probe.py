"""The counterfactual-instruction probe: an instruction-reading policy follows, a blind one does not."""

from __future__ import annotations

import dataclasses

import pytest

from rt2edge.errors import ConfigError
from rt2edge.evaluation import ScriptedExpertPolicy, probe_language
from rt2edge.sim import TabletopEnv
from rt2edge.sim.experts import expert_action
from rt2edge.sim.language import instructions_of
from rt2edge.sim.world import COUNTRIES


class ReadsTheInstruction:
    """Heads for whichever scene object the instruction names: the expert, steered by the text."""

    def __init__(self, env):
        self.env = env

    def act(self, image, instruction):
        scene, task = self.env.scene, self.env.task
        named = [j for j, o in enumerate(scene.objects) if o.name in instruction and j != task.reference]
        return expert_action(scene, dataclasses.replace(task, target=named[0]))


class ReadsInBatches:
    """A stateless, batched instruction reader: looks each image's scene up in what its env showed."""

    stateful = False

    def __init__(self, env):
        self.scenes, reset = {}, env.reset

        def recording_reset(**kwargs):
            obs, info = reset(**kwargs)
            self.scenes[obs["image"].tobytes()] = (env.scene.copy(), env.task)
            return obs, info

        env.reset = recording_reset
        self.calls = []

    def act_batch(self, images, instructions):
        self.calls.append(len(images))
        out = []
        for image, text in zip(images, instructions):
            scene, task = self.scenes[image.tobytes()]
            named = [j for j, o in enumerate(scene.objects) if o.name in text and j != task.reference]
            out.append(expert_action(scene, dataclasses.replace(task, target=named[0])))
        return out

    def act(self, image, instruction):
        return self.act_batch([image], [instruction])[0]


def _probe(policy, env):
    return probe_language(policy, scenes=20, seed=3, env_factory=lambda split: env)


def test_a_policy_that_reads_the_instruction_follows_it_and_a_blind_one_does_not():
    env = TabletopEnv(object_counts=(3, 4))
    reader = _probe(ReadsTheInstruction(env), env)
    assert len(reader.scenes) == 20 and reader.follows == 1.0 and reader.changes == 1.0
    # The scripted expert reads the env's task, never the text (the probe attaches it to its env):
    # right for the real instruction, wrong for every counterfactual one.
    blind = _probe(ScriptedExpertPolicy(), env)
    assert blind.follows == 0.5 and blind.changes == 0.0
    assert [s.seed for s in blind.scenes] == [s.seed for s in reader.scenes]  # the seed fixes the scenes
    assert {s.family for s in reader.scenes} == {"pick", "move_near", "put_on", "move_to_mat", "move_to_flag"}
    data = reader.to_dict()
    assert data["scenes"] == 20 and data["per_family"]["pick"]["follows"] == 1.0
    assert "follows the named object 100%" in reader.format_line()


def test_batched_policies_are_asked_in_chunks_in_scene_order():
    env = TabletopEnv(object_counts=(3, 4))
    policy = ReadsInBatches(env)
    result = probe_language(policy, scenes=10, seed=3, batch_size=4, env_factory=lambda split: env)
    assert result.follows == 1.0 and result.changes == 1.0
    assert policy.calls == [4, 4, 2, 4, 4, 2]  # real instructions, then the counterfactual ones


def test_counterfactuals_are_seen_instructions_that_only_rename_the_object():
    env = TabletopEnv(object_counts=(3, 4))
    result = _probe(ReadsTheInstruction(env), env)
    for s in result.scenes:
        assert s.counterfactual != s.instruction
        assert s.counterfactual in instructions_of(s.family, "train")
        assert s.expert_named != s.expert_other  # the two asks can be told apart
        a, b = s.instruction.split(), s.counterfactual.split()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) in (1, 2)  # colour and/or shape


def test_bad_probe_options_are_refused():
    env = TabletopEnv(object_counts=(2,))
    with pytest.raises(ConfigError, match="scenes"):
        probe_language(ScriptedExpertPolicy(), scenes=0)
    with pytest.raises(ConfigError, match="families"):
        probe_language(ScriptedExpertPolicy(), families=["pick_extreme"])
    with pytest.raises(ConfigError, match="object_counts"):
        probe_language(ScriptedExpertPolicy(), env_factory=lambda split: env, object_counts=(2,))


class ReadsTheDestination:
    """The expert heading for whichever destination the instruction names (the mat colour, the
    flag's country or adjective, the object other than the one held)."""

    def __init__(self, env):
        self.env = env

    def act(self, image, instruction):
        scene, task = self.env.scene, self.env.task
        if task.family == "move_to_mat":
            named = {"mat_colour": next(m.colour for m in scene.mats if f"{m.colour} mat" in instruction)}
        elif task.family == "move_to_flag":
            named = {"country": next(f.country for f in scene.flags
                                     if f.country in instruction or COUNTRIES[f.country] in instruction)}
        else:
            named = {"reference": next(j for j, o in enumerate(scene.objects)
                                       if j != task.target and o.name in instruction)}
        return expert_action(scene, dataclasses.replace(task, **named))


def test_the_carry_phase_renames_the_destination_on_carry_frames():
    env = TabletopEnv(object_counts=(3, 4))
    reader = ReadsTheDestination(env)
    held = []
    act = reader.act
    reader.act = lambda image, text: (held.append(env.scene.held == env.task.target), act(image, text))[1]
    result = probe_language(reader, scenes=16, seed=3, env_factory=lambda split: env, phase="carry")
    assert len(result.scenes) == 16 and result.follows == 1.0 and result.changes == 1.0
    assert held and all(held)  # asked while the expert carries the task's object
    assert {s.family for s in result.scenes} == {"move_near", "put_on", "move_to_mat", "move_to_flag"}
    for s in result.scenes:
        assert s.counterfactual in instructions_of(s.family, "train") and s.expert_named != s.expert_other
        a, b = s.instruction.split(), s.counterfactual.split()
        assert len(a) == len(b) and a[:4] == b[:4]  # "<verb> the <colour> <shape>": the object is kept
    assert "follows the named destination 100%" in result.format_line()
    assert result.to_dict()["phase"] == "carry"
    # Blind to the text: it carries to the real destination whatever the instruction says.
    blind = probe_language(ScriptedExpertPolicy(), scenes=16, seed=3, env_factory=lambda split: env, phase="carry")
    assert blind.follows == 0.5 and blind.changes == 0.0
    # The approach probe's object reader does not read destinations: it follows them at chance.
    object_reader = probe_language(ReadsTheInstruction(env), scenes=16, seed=3, env_factory=lambda split: env,
                                   phase="carry")
    assert object_reader.follows < 1.0


def test_bad_carry_probe_options_are_refused():
    with pytest.raises(ConfigError, match="phase"):
        probe_language(ScriptedExpertPolicy(), phase="grasp")
    with pytest.raises(ConfigError, match="destination"):
        probe_language(ScriptedExpertPolicy(), families=["pick", "pick_extreme"], phase="carry")
