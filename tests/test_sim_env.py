"""TabletopEnv: gymnasium contract, determinism, action handling, rendering."""

from __future__ import annotations

import numpy as np
import pytest

from rt2edge.errors import ActionValueError, ConfigError
from rt2edge.sim import FAMILIES, TabletopEnv
from rt2edge.sim.world import Z_MAX


def rollout(env: TabletopEnv, seed: int, family: str | None = None):
    obs, info = env.reset(seed=seed, options=None if family is None else {"family": family})
    images, actions = [obs["image"].copy()], []
    while True:
        action = env.expert_action()
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        images.append(obs["image"].copy())
        if terminated or truncated:
            return np.stack(images), np.stack(actions), info, reward


def test_passes_gymnasium_env_checker():
    from gymnasium.utils.env_checker import check_env

    check_env(TabletopEnv(), skip_render_check=True)


def test_same_seed_same_images_and_actions():
    a = rollout(TabletopEnv(), seed=7)
    b = rollout(TabletopEnv(), seed=7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = rollout(TabletopEnv(), seed=8)
    assert not np.array_equal(a[0][0], c[0][0])


def test_observation_layout_and_instruction():
    env = TabletopEnv(image_size=48)
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (48, 48, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (5,)
    assert info["instruction"] == env.instruction and env.instruction
    assert env.observation_space.contains(obs)
    assert np.array_equal(env.render(), obs["image"])


def test_expert_actions_within_action_space_and_terminate_only_last():
    env = TabletopEnv()
    for family in FAMILIES:
        _, actions, info, reward = rollout(env, seed=3, family=family)
        assert all(env.action_space.contains(a) for a in actions)
        assert np.all(actions[:-1, 7] == 0) and actions[-1, 7] == 1
        assert np.all(actions[:, 3:6] == 0)
        assert info["success"] and reward == 1.0


def test_deltas_are_clipped_and_ee_stays_on_table():
    env = TabletopEnv(max_step=0.05)
    env.reset(seed=0)
    before = env.scene.ee.copy()
    env.step(np.array([1.0, -1.0, 1.0, 0, 0, 0, -1, 0]))
    assert np.allclose(env.scene.ee - before, [0.05, -0.05, 0.05])
    for _ in range(40):
        env.step(np.array([1.0, 1.0, 1.0, 0, 0, 0, -1, 0]))
    assert np.all(env.scene.ee <= [0.5, 0.5, Z_MAX])


def test_truncates_at_max_steps_without_terminate():
    env = TabletopEnv(max_steps=3)
    env.reset(seed=0)
    flags = [env.step(np.zeros(8))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_grasp_moves_object_with_gripper_and_release_drops_it():
    env = TabletopEnv(families=["pick"])
    env.reset(seed=1)
    while env.scene.held is None:
        env.step(env.expert_action())
    held = env.scene.objects[env.scene.held]
    env.step(np.array([0, 0, 0.1, 0, 0, 0, 1, 0]))
    assert held.z > 0.05 and (held.x, held.y) == tuple(env.scene.ee[:2])
    closed_img = env.render()
    env.step(np.array([0, 0, 0, 0, 0, 0, -1, 0]))
    assert env.scene.held is None and held.z == 0.0
    open_img = env.render()
    assert not np.array_equal(open_img, closed_img)  # open and closed gripper look different


@pytest.mark.parametrize("bad", [np.zeros(7), np.full(8, np.nan), "go left", np.zeros((2, 8))])
def test_bad_actions_raise_typed_errors(bad):
    env = TabletopEnv()
    env.reset(seed=0)
    with pytest.raises(ActionValueError):
        env.step(bad)


def test_nan_error_names_the_dim():
    env = TabletopEnv()
    env.reset(seed=0)
    action = np.zeros(8)
    action[6] = np.inf
    with pytest.raises(ActionValueError, match="gripper"):
        env.step(action)


@pytest.mark.parametrize("kwargs, field", [
    ({"split": "test"}, "split"), ({"families": ["juggle"]}, "families"),
    ({"image_size": 4}, "image_size"), ({"max_step": 0}, "max_step"),
    ({"max_steps": 0}, "max_steps"), ({"supersample": 5}, "supersample"),
    ({"object_counts": (1,)}, "object_counts"), ({"object_counts": ("many",)}, "object_counts"),
    ({"start_anywhere": 1.5}, "start_anywhere"), ({"start_anywhere": "0.5"}, "start_anywhere"),
    ({"start_anywhere": True}, "start_anywhere"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as exc:
        TabletopEnv(**kwargs)
    assert exc.value.field == field


def test_bad_reset_options():
    env = TabletopEnv(families=["pick"])
    with pytest.raises(ConfigError, match="family"):
        env.reset(seed=0, options={"family": "put_on"})
    with pytest.raises(ConfigError, match="options"):
        env.reset(seed=0, options={"colour": "red"})


@pytest.mark.parametrize("counts", [(2,), (5,)])
def test_object_counts(counts):
    env = TabletopEnv(object_counts=counts)
    for seed in range(3):
        env.reset(seed=seed)
        assert len(env.scene.objects) == counts[0]


def test_start_anywhere_spreads_the_gripper_start_and_the_default_keeps_the_scenes():
    import hashlib

    base = TabletopEnv(families=["pick"])
    # the scenes of seeds 0 and 1 as drawn before the option existed (start_anywhere 0 draws nothing)
    before = {0: ([0.13052172713633045, -0.33473171567027743], "3b47e1fe6fcf1d0c"),
              1: ([0.0908657682130701, -0.32894162869625343], "346750b6f9461ce6")}
    for seed, (start, image_hash) in before.items():
        base.reset(seed=seed)
        assert np.allclose(base.scene.ee[:2], start, atol=1e-12)
        assert hashlib.sha256(base.render().tobytes()).hexdigest()[:16] == image_hash
    spread = TabletopEnv(families=["pick"], start_anywhere=1.0)
    starts = []
    for seed in range(40):
        base.reset(seed=seed)
        assert base.scene.ee[1] <= -0.32  # near the robot's base, at the bottom of the image
        spread.reset(seed=seed)
        starts.append(spread.scene.ee.copy())
        ex, ey = spread.scene.ee[:2]  # the start stays clear of every object, as at the base
        assert all(np.hypot(o.x - ex, o.y - ey) > 0.12 for o in spread.scene.objects)
    starts = np.array(starts)
    assert np.mean(starts[:, 1] > 0) > 0.25 and np.abs(starts[:, :2]).max() <= 0.38
    assert np.allclose(starts[:, 2], starts[0, 2])  # at travel height


def test_the_hold_frame_is_told_from_the_grasp_frame_for_every_size():
    """The expert closes in the grasp frame (gripper open) and lifts in the next, the hold frame
    (closed on the object); a policy sees only the image, so the two must look different, and
    clearly so for the largest objects too (once drawn around the object, they could be identical)."""
    fewest = {}
    env = TabletopEnv(families=["pick"], object_counts=(2,))
    for seed in range(40):
        obs, _ = env.reset(seed=seed)
        for _ in range(30):
            action = env.expert_action()
            if action[6] > 0 and env.scene.held is None:
                grasp = obs["image"]
                obs, *_ = env.step(action)
                assert env.scene.held == env.task.target
                size = env.scene.objects[env.task.target].size
                differ = int((grasp != obs["image"]).any(-1).sum())
                fewest[size] = min(fewest.get(size, differ), differ)
                break
            obs, *_ = env.step(action)
    assert set(fewest) == {"small", "medium", "large"}
    assert min(fewest.values()) >= 30, fewest  # of 4,096 pixels; the open fingers sit outside every object
