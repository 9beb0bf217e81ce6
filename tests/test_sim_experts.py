"""Scripted experts: every family succeeds, in short episodes, in both splits."""

from __future__ import annotations

import pytest

from rt2edge.sim import FAMILIES, TabletopEnv

EPISODES = 20


def success_rate(split: str, family: str, episodes: int) -> tuple[float, int]:
    env = TabletopEnv(split=split, families=[family])
    wins, longest = 0, 0
    for seed in range(episodes):
        env.reset(seed=seed)
        while True:
            _, _, terminated, truncated, info = env.step(env.expert_action())
            if terminated or truncated:
                break
        wins += bool(terminated and info["success"])
        longest = max(longest, env.elapsed_steps)
    return wins / episodes, longest


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_succeeds_on_train_split(family):
    rate, longest = success_rate("train", family, EPISODES)
    assert rate >= 0.95
    assert longest <= 30  # short episodes: learnable from a few thousand frames


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_succeeds_on_heldout_split(family):
    rate, _ = success_rate("heldout", family, 10)
    assert rate >= 0.95


def test_expert_recovers_from_a_wrong_grasp():
    """Close on nothing, then hand over to the expert: it reopens and finishes."""
    import numpy as np

    env = TabletopEnv(families=["pick"])
    env.reset(seed=4)
    env.step(np.array([0, 0, -0.1, 0, 0, 0, 1, 0]))  # close in mid-air
    assert env.scene.gripper_closed and env.scene.held is None
    for _ in range(40):
        _, _, terminated, _, info = env.step(env.expert_action())
        if terminated:
            break
    assert terminated and info["success"]


def test_expert_reopens_a_gripper_that_arrived_closed_on_nothing():
    """Closed on the way and carried closed to the grasp pose (gripper DART noise can do that): a
    close command would change nothing there, so the expert opens, then closes on the object."""
    import numpy as np

    env = TabletopEnv(families=["pick"], object_counts=(2,))
    env.reset(seed=4)
    env.step(np.array([0, 0, 0, 0, 0, 0, 1, 0]))  # close on nothing at the start
    for _ in range(20):  # the expert's moves, executed with the gripper kept closed
        action = env.expert_action()
        if not action[:3].any():
            break
        env.step(np.concatenate([action[:6], [1.0, 0.0]]))
    else:
        pytest.fail("the expert never reached the grasp pose")
    assert env.scene.gripper_closed and env.scene.held is None
    assert env.expert_action()[6] < 0  # open first
    for _ in range(10):
        _, _, terminated, _, info = env.step(env.expert_action())
        if terminated:
            break
    assert terminated and info["success"]


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_moves_on_the_half_step_grid(family):
    """Every translation the expert emits is 0, +-max_step/2 or +-max_step (5 readable classes),
    also after a perturbed move has left the gripper off the grid."""
    import numpy as np

    env = TabletopEnv(families=[family])
    rng = np.random.default_rng(0)
    seen = set()
    for seed in range(5):
        env.reset(seed=seed)
        for _ in range(30):
            action = env.expert_action()
            seen.update(np.round(action[:3] / (env.max_step / 2), 6).tolist())
            executed = action.copy()
            executed[:3] *= 1 + 0.3 * rng.standard_normal(3)  # DART-style noise, as in data generation
            _, _, terminated, truncated, _ = env.step(np.clip(executed, env.action_space.low,
                                                              env.action_space.high))
            if terminated or truncated:
                break
    assert seen <= {-2.0, -1.0, 0.0, 1.0, 2.0}
    assert {-2.0, 0.0, 2.0} <= seen



@pytest.mark.parametrize("family", FAMILIES)
def test_expert_goal_is_the_object_then_the_destination(family):
    """`expert_goal_xy` names where the expert's moves head: the named object until it is held,
    then the family's destination (the gripper's own xy for a lift), and every xy move points there."""
    import numpy as np

    from rt2edge.sim import expert_goal_xy
    from rt2edge.sim.experts import DESTINATIONS

    env = TabletopEnv(families=[family])
    carried = 0
    for seed in range(4):
        env.reset(seed=seed)
        for _ in range(40):
            scene, task = env.scene, env.task
            goal, action = expert_goal_xy(scene, task), env.expert_action()
            target = scene.objects[task.target]
            if scene.held is None:
                np.testing.assert_allclose(goal, [target.x, target.y])
            elif DESTINATIONS[family] is None:
                np.testing.assert_allclose(goal, scene.ee[:2])
            else:
                np.testing.assert_allclose(goal, DESTINATIONS[family](scene, task))
            carried += scene.held is not None
            moving = np.abs(action[:2]) > 0
            assert np.all(np.sign(action[:2][moving]) == np.sign((goal - scene.ee[:2])[moving]))
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
        assert terminated
    assert carried  # the held branch was exercised


def test_perturb_action_noise_terms():
    """DART noise: none set -> an equal float64 copy and no draw (the rng is untouched); each term
    moves only what it names; the label is never modified."""
    import numpy as np

    from rt2edge.sim.experts import perturb_action

    label = np.array([0.1, -0.05, 0.0, 0, 0, 0, 1.0, 0.0], dtype=np.float32)
    rng = np.random.default_rng(3)
    before = rng.bit_generator.state
    clean = perturb_action(label, rng)
    assert clean.dtype == np.float64 and np.array_equal(clean, label) and clean is not label
    assert rng.bit_generator.state == before

    scaled = perturb_action(label, np.random.default_rng(3), relative=0.3)
    assert scaled[2] == 0.0 and not np.allclose(scaled[:2], label[:2])  # scaling keeps a still axis still
    shifted = perturb_action(label, np.random.default_rng(3), additive=0.02)
    assert shifted[2] != 0.0 and np.array_equal(shifted[3:], label[3:])
    flipped = perturb_action(label, np.random.default_rng(3), gripper_flip=1.0)
    assert flipped[6] == -1.0 and np.array_equal(flipped[:6], label[:6])
    assert label[6] == 1.0 and label[2] == 0.0  # the label itself is unchanged
