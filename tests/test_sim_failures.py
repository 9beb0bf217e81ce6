"""Failure kinds: what the final scene of a failed episode shows, checked on scenes set up by hand
from real env states (the expert drives to the point the case needs, then objects are placed)."""

from __future__ import annotations

import numpy as np
import pytest

from rt2edge.sim import TabletopEnv
from rt2edge.sim.world import NEAR_GAP


def env_for(family: str, objects: int = 3, seed: int = 0) -> TabletopEnv:
    env = TabletopEnv(families=[family], object_counts=(objects,))
    env.reset(seed=seed)
    return env


def run_expert(env: TabletopEnv, until=lambda env: False) -> None:
    for _ in range(env.max_steps):
        action = env.expert_action()
        if action[7] >= 0.5 or until(env):
            return
        env.step(action)


def put(env: TabletopEnv, index: int, x: float, y: float) -> None:
    obj = env.scene.objects[index]
    obj.x, obj.y, obj.z, obj.on = x, y, 0.0, None


def far_from(regions, margin: float = 3 * NEAR_GAP) -> tuple[float, float]:
    """A table point more than `margin` outside every region (mat / flag)."""
    grid = np.linspace(-0.45, 0.45, 19)
    for px in grid:
        for py in grid:
            if all(r.distance_outside(px, py) > margin for r in regions):
                return float(px), float(py)
    raise AssertionError("no free point on the table")


@pytest.mark.parametrize("family", ["pick", "move_near", "put_on", "pick_extreme", "move_to_mat", "move_to_flag"])
def test_untouched_at_reset_and_none_once_the_expert_succeeded(family):
    env = env_for(family)
    assert env.failure_kind() == "untouched"
    run_expert(env)
    assert env.is_success() and env.failure_kind() is None


def test_moving_another_object_is_the_wrong_object_and_holding_the_target_is_held():
    env = env_for("pick")
    other = next(i for i in range(len(env.scene.objects)) if i != env.task.target)
    env.scene.objects[other].x += 0.05
    assert env.failure_kind() == "wrong_object"
    env.reset(seed=0)
    run_expert(env, until=lambda e: e.scene.held is not None)
    assert env.scene.held == env.task.target and not env.is_success()  # grasped, not yet lifted
    assert env.failure_kind() == "held"


@pytest.mark.parametrize("seed", range(6))
def test_a_pick_released_where_it_was_lifted_is_dropped_not_untouched(seed):
    env = env_for("pick", seed=seed)
    run_expert(env, until=lambda e: e.is_success())
    env.step(np.array([0, 0, 0, 0, 0, 0, -1, 0]))  # release in place: it falls back where it was
    assert env.scene.held is None and env.failure_kind() == "dropped"


def test_held_in_a_placement_family_while_carrying():
    env = env_for("move_to_mat")
    run_expert(env, until=lambda e: e.scene.held is not None and e.scene.ee[2] > 0.05)
    assert env.failure_kind() == "held"


def test_the_other_mat_is_the_wrong_destination_and_distance_splits_near_miss_from_elsewhere():
    env = env_for("move_to_mat")
    task, scene = env.task, env.scene
    other = next(m for m in scene.mats if m.colour != task.mat_colour)
    put(env, task.target, other.x, other.y)
    assert env.failure_kind() == "wrong_destination"
    mat = scene.mat(task.mat_colour)
    side = 1.0 if mat.x < 0 else -1.0  # step off the mat's side facing the table's centre
    put(env, task.target, mat.x + side * (mat.HALF[0] + NEAR_GAP / 2), mat.y)
    assert env.failure_kind() == "near_miss"
    put(env, task.target, *far_from(scene.mats))
    assert env.failure_kind() == "elsewhere"
    put(env, task.target, mat.x, mat.y)
    assert env.failure_kind() is None


def three_objects(family: str, seed: int):
    """A 3-object scene of `family`: the env, the named object, the reference, the third object's
    index, and the unit vector from the reference towards the table's centre (room to place)."""
    env = env_for(family, objects=3, seed=seed)
    task, scene = env.task, env.scene
    y = scene.objects[task.reference]
    third = next(i for i in range(3) if i not in (task.target, task.reference))
    direction = np.array([-y.x, -y.y]) / (np.hypot(y.x, y.y) + 1e-9)
    return env, scene.objects[task.target], y, third, direction


def test_move_near_told_apart_stacked_near_miss_elsewhere_and_another_reference():
    env, x, y, third, direction = three_objects("move_near", seed=2)
    task, scene = env.task, env.scene

    def beside(reference, gap: float) -> None:
        ref = scene.objects[reference]
        at = np.array([ref.x, ref.y]) + direction * (x.radius + ref.radius + gap)
        put(env, task.target, *at)

    beside(task.reference, NEAR_GAP / 2)
    assert env.failure_kind() is None
    beside(task.reference, NEAR_GAP + 0.03)
    assert env.failure_kind() == "near_miss"
    put(env, task.target, y.x, y.y)
    x.z, x.on = y.top, task.reference
    assert env.failure_kind() == "on_reference"
    beside(third, 0.0)
    assert env.failure_kind() == "wrong_destination"
    centre = np.array([y.x, y.y]) + direction * (x.radius + y.radius + NEAR_GAP + 0.3)
    assert min(np.hypot(*(centre - [o.x, o.y])) for i, o in enumerate(scene.objects) if i != task.target) > 0.3
    put(env, task.target, *centre)
    assert env.failure_kind() == "elsewhere"


def test_stacked_on_the_reference_is_on_reference_even_beside_a_third_object():
    env, x, y, third, _ = three_objects("move_near", seed=2)
    t = env.scene.objects[third]
    t.x, t.y = y.x + y.radius + t.radius + 0.01, y.y  # the third object just beside the reference
    put(env, env.task.target, y.x + 0.3 * y.radius, y.y)  # on the reference, off-centre towards it
    x.z, x.on = y.top, env.task.reference
    assert env.failure_kind() == "on_reference"


def test_put_on_a_third_object_is_the_wrong_destination_and_beside_the_reference_a_near_miss():
    env, x, y, third, direction = three_objects("put_on", seed=1)
    t = env.scene.objects[third]
    put(env, env.task.target, t.x, t.y)
    x.z, x.on = t.top, third
    assert env.failure_kind() == "wrong_destination"
    put(env, env.task.target, *(np.array([y.x, y.y]) + direction * (y.radius + NEAR_GAP / 2)))
    assert env.failure_kind() == "near_miss"


def test_a_near_miss_of_the_named_reference_is_not_counted_as_another_destination():
    env, x, y, third, direction = three_objects("move_near", seed=2)
    t = env.scene.objects[third]
    at = np.array([y.x, y.y]) + direction * (x.radius + y.radius + NEAR_GAP + 0.02)
    put(env, env.task.target, *at)
    t.x, t.y = at + direction * (x.radius + t.radius + 0.02)  # the third object within the near gap
    assert env.failure_kind() == "near_miss"


def test_the_other_flag_and_a_near_miss_of_a_flag():
    env = env_for("move_to_flag")
    task, scene = env.task, env.scene
    other = next(f for f in scene.flags if f.country != task.country)
    flag = scene.flag(task.country)
    # this scene's other flag lies more than the near gap outside the named one
    assert abs(other.x - flag.x) > flag.HALF[0] + NEAR_GAP or abs(other.y - flag.y) > flag.HALF[1] + NEAR_GAP
    put(env, task.target, other.x, other.y)
    assert env.failure_kind() == "wrong_destination"
    put(env, task.target, flag.x, flag.y + flag.HALF[1] + NEAR_GAP / 2)
    assert env.failure_kind() == "near_miss"
    put(env, task.target, *far_from(scene.flags))
    assert env.failure_kind() == "elsewhere"


def test_failure_kind_before_reset_is_refused():
    with pytest.raises(RuntimeError, match="reset"):
        TabletopEnv().failure_kind()
