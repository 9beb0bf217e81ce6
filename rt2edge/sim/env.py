"""`TabletopEnv`: the language-conditioned tabletop task as a gymnasium.Env.

Observation: {"image": uint8 (S, S, 3), "state": float32 [ee x, ee y, ee z, gripper closed,
holding]}; the instruction is `env.instruction` and `info["instruction"]`.
Action: RT-2's 8 numbers (see rt2edge.sim.experts): xyz deltas clipped to +-max_step, rotations
ignored, gripper absolute (> 0 closes), terminate (>= 0.5 ends the episode).
Reward: 1.0 on the step that terminates with the task done, else 0.0. `info["success"]` is the
task predicate after every step, so a caller can also score "done at any time".
Deterministic: the same `reset(seed=...)` and actions give the same images, bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rt2edge.errors import ActionValueError, ConfigError
from rt2edge.optional import require
from rt2edge.sim.experts import expert_action
from rt2edge.sim.render import Renderer
from rt2edge.sim.tasks import OBJECT_COUNTS, Task, TaskSampler, failure_kind, is_success
from rt2edge.sim.world import MAX_STEP, STATE_NAMES, Z_MAX, Scene, apply_action

gym = require("gymnasium", extra="toolkit", purpose="the tabletop simulator")
from gymnasium import spaces  # noqa: E402  (gymnasium is present once `require` returned)

ACTION_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper", "terminate")
MAX_ROTATION = np.pi / 8  # bound of the (ignored) rotation deltas in the action space


class TabletopEnv(gym.Env):
    """Pick-and-place from a top-down camera, one instruction per episode.

    Args:
        image_size: side of the square RGB image.
        split: "train" or "heldout" instructions (see rt2edge.sim.language).
        families: task families to sample from (default: all).
        max_steps: episode length limit (truncation).
        max_step: cap on |delta| per axis and step, metres.
        supersample: render at this multiple and box-filter down (anti-aliasing).
        object_counts: objects per scene, drawn uniformly (default (3, 4); 2..5).
        start_anywhere: probability that the gripper starts over a random point of the table
            instead of near the robot's base (training-data diversity; default 0: the real task).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, image_size: int = 64, split: str = "train",
                 families: tuple[str, ...] | list[str] | None = None, max_steps: int = 60,
                 max_step: float = MAX_STEP, supersample: int = 2,
                 render_mode: str | None = "rgb_array",
                 object_counts: tuple[int, ...] | list[int] = OBJECT_COUNTS, start_anywhere: float = 0.0):
        if not 1 <= int(max_steps) <= 10_000:
            raise ConfigError("max_steps", f"must be in [1, 10000], got {max_steps}")
        if not 0.0 < float(max_step) <= 0.5:
            raise ConfigError("max_step", f"must be in (0, 0.5] metres, got {max_step}")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError("render_mode", f"only 'rgb_array' is supported, got {render_mode!r}")
        self.sampler = TaskSampler(split, families, object_counts, start_anywhere)
        self.renderer = Renderer(image_size, supersample)
        self.image_size = image_size
        self.max_steps = int(max_steps)
        self.max_step = float(max_step)
        self.render_mode = render_mode
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (image_size, image_size, 3), dtype=np.uint8),
            "state": spaces.Box(
                low=np.array([-0.5, -0.5, 0.0, 0.0, 0.0], dtype=np.float32),
                high=np.array([0.5, 0.5, Z_MAX, 1.0, 1.0], dtype=np.float32),
                dtype=np.float32,
            ),
        })
        ms, mr = self.max_step, MAX_ROTATION
        self.action_space = spaces.Box(
            low=np.array([-ms, -ms, -ms, -mr, -mr, -mr, -1.0, 0.0], dtype=np.float32),
            high=np.array([ms, ms, ms, mr, mr, mr, 1.0, 1.0], dtype=np.float32),
            dtype=np.float32,
        )
        self.scene: Scene | None = None
        self.task: Task | None = None
        self._steps = 0
        self._image: np.ndarray | None = None
        self._start_xy: list[tuple[float, float]] = []  # objects' positions at reset: what moved
        self._ever_held: set[int] = set()  # objects grasped during the episode

    # ----------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """options: {"family": name} draws a task of that family."""
        super().reset(seed=seed)
        options = dict(options or {})
        family = options.pop("family", None)
        if options:
            raise ConfigError("options",
                              f"unknown reset options {sorted(options)}; known: ['family']")
        self.scene, self.task = self.sampler.sample(self.np_random, family=family)
        self._start_xy = [(o.x, o.y) for o in self.scene.objects]
        self._ever_held = set()
        self.renderer.set_static(self.scene)
        self._steps = 0
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self.scene is None:
            raise RuntimeError("call reset() before step()")
        act = self._check_action(action)
        apply_action(self.scene, act, self.max_step)
        if self.scene.held is not None:
            self._ever_held.add(self.scene.held)
        self._steps += 1
        success = is_success(self.scene, self.task)
        terminated = bool(act[7] >= 0.5)
        truncated = not terminated and self._steps >= self.max_steps
        reward = 1.0 if terminated and success else 0.0
        return self._observation(), reward, terminated, truncated, self._info(success)

    def render(self) -> np.ndarray:
        if self._image is None:
            raise RuntimeError("call reset() before render()")
        return self._image.copy()

    # ----------------------------------------------------------------------------- extras
    @property
    def instruction(self) -> str:
        if self.task is None:
            raise RuntimeError("call reset() first: the instruction is drawn with the scene")
        return self.task.instruction

    @property
    def elapsed_steps(self) -> int:
        return self._steps

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state (rt2edge.sim.experts)."""
        if self.scene is None:
            raise RuntimeError("call reset() before expert_action()")
        return expert_action(self.scene, self.task, self.max_step)

    def state_key(self) -> bytes:
        """The scene's state within the episode (Scene.state_key): equal keys, equal images."""
        if self.scene is None:
            raise RuntimeError("call reset() before state_key()")
        return self.scene.state_key()

    def is_success(self) -> bool:
        return self.scene is not None and is_success(self.scene, self.task)

    def failure_kind(self) -> str | None:
        """Why the episode so far has not succeeded (a tasks.FAILURE_KINDS key); None if it has."""
        if self.scene is None:
            raise RuntimeError("call reset() before failure_kind()")
        return failure_kind(self.scene, self.task, self._start_xy, self._ever_held)

    # ----------------------------------------------------------------------------- internals
    def _check_action(self, action: Any) -> np.ndarray:
        try:
            arr = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ActionValueError(
                f"expected 8 numbers {ACTION_NAMES}, got {type(action).__name__}") from exc
        if arr.shape != (8,):
            raise ActionValueError(f"expected 8 numbers {ACTION_NAMES}, got shape {arr.shape}")
        bad = ~np.isfinite(arr)
        if bad.any():
            dim = int(np.flatnonzero(bad)[0])
            raise ActionValueError("value is NaN or infinite", dim=dim, dim_name=ACTION_NAMES[dim])
        return arr

    def _observation(self) -> dict[str, np.ndarray]:
        self._image = self.renderer.render(self.scene)
        return {"image": self._image, "state": self.scene.state_vector()}

    def _info(self, success: bool | None = None) -> dict[str, Any]:
        return {
            "instruction": self.task.instruction,
            "family": self.task.family,
            "success": is_success(self.scene, self.task) if success is None else success,
            "steps": self._steps,
        }


__all__ = ["TabletopEnv", "ACTION_NAMES", "STATE_NAMES"]
