"""Scripted experts: one reactive pick-and-place controller, one destination rule per family.

The expert is a function of the current scene only (no internal phase counter), and every phase
is visible in the image: gripper open and empty -> go to the object; over it and low -> close;
holding -> carry (at CARRY_Z) to the destination; there -> open; task done -> terminate. A policy
cloned from it therefore sees states whose correct action is determined by the image, and the
expert itself recovers from perturbed actions (DART-style noise in data generation).

[Contract] Actions follow RT-2: [dx, dy, dz, droll, dpitch, dyaw, gripper, terminate];
dx..dz are multiples of half a step (0, +-max_step/2, +-max_step): the expert rounds the distance
to its goal to that grid and clips it to one step; rotations are 0; gripper is absolute (+1 close,
-1 open); terminate is 1 only on the last step.

Why a grid: a continuous "last fraction" step spreads ~1/4 of all xy labels over ~250 action bins
that a 64-px camera cannot tell apart (a bin is a quarter pixel), so a cloned policy wastes its
capacity on unreadable labels. Half-step moves make each axis a 5-way choice readable from the
image (a half step is 3 px at 64 px), and the expert still lands within a quarter step of every
goal: inside the grasp radius (>= 0.05 m), a mat (0.12 m), a flag (0.065 m) and the near gap.

Over an object it closes once within GRASP_TOLERANCE of its centre, not only on the grid point:
see there why a policy needs that.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from rt2edge.sim.tasks import Task, is_success
from rt2edge.sim.world import CARRY_Z, GRASP_Z, MAX_STEP, NEAR_GAP, SIZES, Scene

CLOSE, OPEN = 1.0, -1.0
NEAR_PLACEMENT_GAP = 0.03  # edge gap the expert leaves for `move X near Y` (success: NEAR_GAP)
# At grasp height the expert closes when the gripper is this close (xy, metres) to the object's
# centre. The grid alone closes only within a quarter step (0.025 m) per axis and moves a half
# step otherwise: a policy that reads the object 1-2 px off (1.6 cm per px at 64 px) then steps
# back and forth across that boundary without closing, which was the most common failure of the
# shipped DAgger-5 policy: 33 of its 76 failed seen episodes moved no object, 29 of them in a
# loop (README item 19). Every object's footprint
# (radius >= 0.05 m) still holds the fingers at this distance.
GRASP_TOLERANCE = 0.04


def _towards_reference(scene: Scene, task: Task) -> np.ndarray:
    """Stop short of the reference on the line from it to the gripper: a straight carry."""
    x, y = scene.objects[task.target], scene.objects[task.reference]
    ref = np.array([y.x, y.y])
    away = scene.ee[:2] - ref
    norm = float(np.linalg.norm(away))
    direction = away / norm if norm > 1e-9 else np.array([0.0, -1.0])
    return ref + direction * (x.radius + y.radius + NEAR_PLACEMENT_GAP)


def _on_reference(scene: Scene, task: Task) -> np.ndarray:
    y = scene.objects[task.reference]
    return np.array([y.x, y.y])


def _mat_centre(scene: Scene, task: Task) -> np.ndarray:
    mat = scene.mat(task.mat_colour)
    return np.array([mat.x, mat.y])


def _flag_centre(scene: Scene, task: Task) -> np.ndarray:
    flag = scene.flag(task.country)
    return np.array([flag.x, flag.y])


# family -> where the held object goes (xy); None: the task is to lift it where it is
DESTINATIONS: dict[str, Callable[[Scene, Task], np.ndarray] | None] = {
    "pick": None,
    "pick_extreme": None,
    "move_near": _towards_reference,
    "put_on": _on_reference,
    "move_to_mat": _mat_centre,
    "move_to_flag": _flag_centre,
}
assert NEAR_PLACEMENT_GAP < NEAR_GAP  # the expert's placement must satisfy the predicate
assert GRASP_TOLERANCE < min(SIZES.values())  # closing there grasps the object


def _action(delta: np.ndarray, gripper: float, terminate: bool = False) -> np.ndarray:
    out = np.zeros(8, dtype=np.float32)
    out[:3] = delta
    out[6] = gripper
    out[7] = 1.0 if terminate else 0.0
    return out


def _grid_step(delta: np.ndarray, max_step: float) -> np.ndarray:
    """The move towards `delta` on the half-step grid, at most one step per axis."""
    quantum = max_step / 2
    return np.clip(np.round(delta / quantum) * quantum, -max_step, max_step)


def _arrived(scene: Scene, goal: np.ndarray, max_step: float) -> bool:
    """True when the grid move to `goal` is zero on every axis given (within a quarter step)."""
    delta = goal - scene.ee[:len(goal)]
    return not np.any(_grid_step(delta, max_step))


def _at_grasp(scene: Scene, grasp: np.ndarray, max_step: float) -> bool:
    """At grasp height (no z move left on the grid) and within GRASP_TOLERANCE of the object in
    xy. Includes every grid arrival: a quarter step per axis is at most 0.035 m."""
    at_height = not _grid_step(np.array([grasp[2] - scene.ee[2]]), max_step).any()
    return at_height and float(np.hypot(*(grasp[:2] - scene.ee[:2]))) <= GRASP_TOLERANCE


def _move(scene: Scene, goal: np.ndarray, gripper: float, max_step: float) -> np.ndarray:
    return _action(_grid_step(goal - scene.ee, max_step), gripper)


def expert_goal_xy(scene: Scene, task: Task) -> np.ndarray:
    """Where on the table the expert is heading now (x, y): the named object until it is held,
    then its destination; the gripper's own xy where the move is vertical or a release (a `pick`
    lift, putting a wrong object down). The label of the grounding pre-training's pointer."""
    if scene.held is None:
        target = scene.objects[task.target]
        return np.array([target.x, target.y])
    destination = DESTINATIONS[task.family]
    if scene.held != task.target or destination is None:
        return scene.ee[:2].copy()
    return destination(scene, task)


def expert_action(scene: Scene, task: Task, max_step: float = MAX_STEP) -> np.ndarray:
    """The expert's RT-2 action (float32, shape (8,)) for the current scene."""
    holding_target = scene.held == task.target
    if is_success(scene, task):
        return _action(np.zeros(3), CLOSE if holding_target else OPEN, terminate=True)
    goal_xy = expert_goal_xy(scene, task)  # the one rule for where the expert heads
    if holding_target:
        if DESTINATIONS[task.family] is None:  # pick: lift straight up (the goal is the gripper's xy)
            return _move(scene, np.array([*goal_xy, CARRY_Z]), CLOSE, max_step)
        if _arrived(scene, goal_xy, max_step):
            return _action(np.zeros(3), OPEN)  # drop it from carry height onto the destination
        return _move(scene, np.array([*goal_xy, CARRY_Z]), CLOSE, max_step)
    if scene.held is not None:  # holding the wrong object (a perturbed run): put it down
        return _action(np.zeros(3), OPEN)
    grasp = np.array([*goal_xy, scene.objects[task.target].z + GRASP_Z])
    if _at_grasp(scene, grasp, max_step):
        # Closed on nothing on the way here: a close command would change nothing, so open first.
        return _action(np.zeros(3), OPEN if scene.gripper_closed else CLOSE)
    # Opening on the way covers a gripper that closed on nothing.
    return _move(scene, grasp, OPEN, max_step)


def perturb_action(action: np.ndarray, rng: np.random.Generator, relative: float = 0.0,
                   additive: float = 0.0, gripper_flip: float = 0.0) -> np.ndarray:
    """DART noise on an action about to be executed (float64 copy; the label stays `action`).

    xyz is scaled by 1 + N(0, relative), then shifted by N(0, additive) metres; the gripper
    command is flipped with probability `gripper_flip`. Draws happen only for non-zero terms, in
    that order, so a given rng and setting always perturbs the same way (datasets reproduce).
    """
    executed = np.asarray(action, dtype=np.float64).copy()
    if relative > 0:
        executed[:3] *= 1.0 + rng.normal(0.0, relative, 3)
    if additive > 0:
        executed[:3] += rng.normal(0.0, additive, 3)
    if gripper_flip > 0 and rng.uniform() < gripper_flip:
        executed[6] = -executed[6]
    return executed


class ScriptedExpert:
    """`expert(env)` -> the action for the env's current scene and task."""

    def __init__(self, max_step: float = MAX_STEP):
        self.max_step = max_step

    def __call__(self, env) -> np.ndarray:
        return expert_action(env.scene, env.task, self.max_step)
