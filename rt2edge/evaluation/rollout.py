"""Closed-loop evaluation: run a policy in TabletopEnv, per split and task family.

Determinism: episode i of a split draws its task family round-robin (every family gets the same
number of episodes, +-1) and its scene from `env.reset(seed=episode_seed(seed, split, i))`, so a
seed fixes every scene and instruction, whatever the policy and however many envs run at once.
The env's own episode limit (`max_steps`, truncation) ends an episode the policy never ends.

Stateless policies with `act_batch` (the torch VLAPolicy) step `num_envs` environments at once:
one batched forward per control step instead of one per env, the difference between minutes and
an hour for a transformer on a CPU. Stateful policies (a deploy artifact, the scripted expert)
run one env at a time and are reset at the start of every episode.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from rt2edge.errors import ActionValueError, ConfigError
from rt2edge.evaluation.policies import supports_batch
from rt2edge.evaluation.results import EpisodeResult, EvaluationResult

SPLITS = ("train", "heldout")
_BOUND_TOL = 1e-6


# Salts the evaluation's seed stream: `rt2edge data generate` seeds episode i with
# SeedSequence([seed, i, attempt]); without the salt, evaluation seed 0 would replay training scenes.
EVAL_STREAM = 0xE7A1


def episode_seed(seed: int, split: str, index: int) -> int:
    """The env seed of episode `index` of `split`: independent streams per (seed, split, index)."""
    split_id = SPLITS.index(split) if split in SPLITS else 2 + sum(split.encode())  # stable, unlike hash()
    return int(np.random.SeedSequence([EVAL_STREAM, seed, split_id, index]).generate_state(1)[0])


@dataclass
class RolloutEpisode:
    """One episode of a rollout plan and its live state (obs: the latest observation)."""

    index: int
    family: str
    seed: int
    obs: dict[str, np.ndarray] | None = None
    instruction: str = ""
    steps: int = 0
    reached: bool = False
    success: bool = False
    terminated: bool = False
    out_of_bounds: int = 0
    revisit_step: int | None = None  # the first step that returned to an earlier state
    failure: str | None = None  # why it failed, from its final scene (env.failure_kind); None: success
    frames: list[np.ndarray] | None = field(default=None, repr=False)
    visited: set[bytes] = field(default_factory=set, repr=False)  # env.state_key() of every step so far

    def visit(self, env: Any) -> None:
        """Note the env's state after `steps` steps (envs without state_key are not tracked)."""
        key_of = getattr(env, "state_key", None)
        if self.revisit_step is not None or not callable(key_of):
            return
        key = key_of()
        if key in self.visited:
            self.revisit_step = self.steps
        self.visited.add(key)


def default_env_factory(image_size: int | None, max_steps: int | None,
                        object_counts: Sequence[int] | None = None) -> Callable[[str], Any]:
    def make(split: str) -> Any:
        from rt2edge.sim import TabletopEnv  # gymnasium: imported only when an evaluation runs

        kwargs: dict[str, Any] = {"split": split}
        if image_size is not None:
            kwargs["image_size"] = image_size
        if max_steps is not None:
            kwargs["max_steps"] = max_steps
        if object_counts is not None:
            kwargs["object_counts"] = tuple(object_counts)
        return TabletopEnv(**kwargs)

    return make


def resolve_env_factory(env_factory: Callable[[str], Any] | None, image_size: int | None,
                        max_steps: int | None, object_counts: Sequence[int] | None) -> Callable[[str], Any]:
    """The caller's env_factory, or the default TabletopEnv one; objects per scene come from one of
    the two, never both (a custom factory's envs would silently ignore `object_counts`)."""
    if env_factory is not None and object_counts is not None:
        raise ConfigError("object_counts", "set the objects per scene in env_factory's envs, not both")
    return env_factory or default_env_factory(image_size, max_steps, object_counts)


def evaluate(policy: Any, episodes: int = 24, seed: int = 0, splits: Sequence[str] = SPLITS,
             families: Sequence[str] | None = None, num_envs: int = 8, max_steps: int | None = None,
             image_size: int | None = None, record: bool = True,
             object_counts: Sequence[int] | None = None,
             env_factory: Callable[[str], Any] | None = None,
             progress: Callable[[EpisodeResult], None] | None = None) -> EvaluationResult:
    """Run `episodes` episodes per split and return the per-family success rates.

    policy: an ActionPolicy (see policies.py). record: keep the frames of episode 0 of the first
    split for a GIF / image strip. object_counts: objects per scene (default: the env's; match
    the training data's `--objects`). env_factory(split) -> env replaces the default TabletopEnv.
    progress: called with each finished episode.
    """
    if episodes < 1:
        raise ConfigError("episodes", f"must be >= 1, got {episodes}")
    if num_envs < 1:
        raise ConfigError("num_envs", f"must be >= 1, got {num_envs}")
    if not splits:
        raise ConfigError("split", "name at least one split")
    make_env = resolve_env_factory(env_factory, image_size, max_steps, object_counts)
    start = time.perf_counter()
    results: list[EpisodeResult] = []
    recorded: tuple[np.ndarray, EpisodeResult] | None = None
    env_max_steps = 0
    scene_options: dict[str, Any] | None = None
    for split_index, split in enumerate(splits):
        envs = split_envs(policy, make_env, split, episodes, num_envs)
        env_max_steps = int(envs[0].max_steps)
        scene_options = resolved_scene_options(envs[0], families)
        want_frames = record and split_index == 0
        for episode, frames in run_episodes(policy, envs, split, episodes, seed, families, want_frames):
            result = EpisodeResult(
                split=split, index=episode.index, family=episode.family, instruction=episode.instruction,
                seed=episode.seed, success=episode.success, reached=episode.reached,
                terminated=episode.terminated, steps=episode.steps,
                out_of_bounds_actions=episode.out_of_bounds, revisit_step=episode.revisit_step,
                failure=episode.failure)
            results.append(result)
            if frames is not None:
                recorded = (np.stack(frames), result)
            if progress is not None:
                progress(result)
    order = {s: i for i, s in enumerate(splits)}
    results.sort(key=lambda e: (order[e.split], e.index))  # batched episodes end out of order
    fallbacks = getattr(policy, "safe_fallbacks", None)
    return EvaluationResult(
        policy=str(getattr(policy, "name", type(policy).__name__)), seed=seed,
        max_steps=env_max_steps, episodes=results, wall_s=time.perf_counter() - start, scene_options=scene_options,
        safe_fallbacks=fallbacks, loop_escape=getattr(policy, "loop_escape", None),
        rollout_frames=None if recorded is None else recorded[0],
        rollout_episode=None if recorded is None else recorded[1])


def resolved_scene_options(env: Any, families: Sequence[str] | None) -> dict[str, Any]:
    """The families (in round-robin order) and object counts the scenes are drawn with, as the env
    resolves the defaults; None where an env without a TaskSampler does not say."""
    sampler = getattr(env, "sampler", None)
    planned = list(families) if families is not None else getattr(sampler, "families", None)
    counts = getattr(sampler, "object_counts", None)
    return {"families": None if planned is None else list(planned),
            "object_counts": None if counts is None else [int(c) for c in counts]}


def split_envs(policy: Any, make_env: Callable[[str], Any], split: str, episodes: int,
               num_envs: int) -> list[Any]:
    """The envs one split's episodes run in: `num_envs` for a batched policy, else one."""
    width = min(num_envs, episodes) if supports_batch(policy) else 1
    return [make_env(split) for _ in range(width)]


def run_episodes(policy: Any, envs: list[Any], split: str, episodes: int, seed: int,
                 families: Sequence[str] | None, want_frames: bool = False,
                 execute: Callable[[Any, np.ndarray, RolloutEpisode], np.ndarray] | None = None):
    """Run episodes 0..episodes-1 of `split` (families round-robin, scenes from `episode_seed`)
    in `envs`; yield (episode, frames or None) as they end, in finishing order.

    execute(env, policy_action, episode) -> the action the env is stepped with, called before every
    step (default: the policy's own; `episode.obs` is the observation the policy acted on): the
    expert-agreement diagnosis drives the env with the expert while it asks the policy, and reads
    the expert's action on the policy's own states; on-policy data collection records them.
    """
    split_families = list(families) if families is not None else list(envs[0].sampler.families)
    plan = deque(RolloutEpisode(i, split_families[i % len(split_families)], episode_seed(seed, split, i))
                 for i in range(episodes))
    yield from run_plan(policy, envs, plan, want_frames, execute)


def run_plan(policy: Any, envs: list[Any], plan: deque, want_frames: bool = False,
             execute: Callable[[Any, np.ndarray, RolloutEpisode], np.ndarray] | None = None):
    """Step every env until the plan (RolloutEpisodes: index, family, env seed) is exhausted;
    yield (episode, frames or None) as they end, in finishing order. `execute` as run_episodes."""
    active: list[RolloutEpisode | None] = [None] * len(envs)
    attach = getattr(policy, "attach_env", None)
    reset = getattr(policy, "reset", None)
    seeded_reset = callable(reset) and "seed" in inspect.signature(reset).parameters

    def start(slot: int) -> None:
        if not plan:
            active[slot] = None
            return
        ep = plan.popleft()
        env = envs[slot]
        obs, info = env.reset(seed=ep.seed, options={"family": ep.family})
        ep.obs, ep.instruction = obs, env.instruction
        ep.reached = ep.success = bool(info.get("success", False))
        ep.visit(env)
        if want_frames and ep.index == 0:
            ep.frames = [obs["image"].copy()]
        if callable(attach):
            attach(env)
        if seeded_reset:  # the episode's own seed: its draws (loop escape) do not depend on the order
            reset(seed=ep.seed)
        elif callable(reset):
            reset()
        active[slot] = ep

    for slot in range(len(envs)):
        start(slot)
    while any(ep is not None for ep in active):
        slots = [i for i, ep in enumerate(active) if ep is not None]
        actions = _act(policy, [active[i] for i in slots])
        for slot, action in zip(slots, actions):
            ep, env = active[slot], envs[slot]
            space = env.action_space
            outside = (action < space.low - _BOUND_TOL) | (action > space.high + _BOUND_TOL)
            ep.out_of_bounds += int(outside.any())
            if execute is not None:
                action = _check(execute(env, action, ep))
            # The env clips deltas itself; clipping here too keeps a policy's out-of-range
            # gripper/terminate values from being read differently by different envs.
            obs, _, terminated, truncated, info = env.step(np.clip(action, space.low, space.high))
            ep.obs, ep.steps = obs, ep.steps + 1
            if not terminated:  # a terminate step may leave the scene as it was: that is no loop
                ep.visit(env)
            ep.success = bool(info["success"])
            ep.reached = ep.reached or ep.success
            if ep.frames is not None:
                ep.frames.append(obs["image"].copy())
            if terminated or truncated:
                ep.terminated = bool(terminated)
                ep.failure = _failure_kind(env) if not ep.success else None
                yield ep, ep.frames
                start(slot)


def _failure_kind(env: Any) -> str | None:
    """The env's reading of why the episode failed; None for envs that cannot tell."""
    kind_of = getattr(env, "failure_kind", None)
    return kind_of() if callable(kind_of) else None


def _act(policy: Any, episodes: list[RolloutEpisode]) -> list[np.ndarray]:
    if supports_batch(policy):
        images = np.stack([ep.obs["image"] for ep in episodes])
        actions = np.asarray(policy.act_batch(images, [ep.instruction for ep in episodes]), np.float64)
        return [_check(a) for a in actions]
    ep = episodes[0]
    return [_check(np.asarray(policy.act(ep.obs["image"], ep.instruction), np.float64))]


def _check(action: np.ndarray) -> np.ndarray:
    action = np.asarray(action, dtype=np.float64).reshape(-1)
    if action.shape != (8,) or not np.all(np.isfinite(action)):
        raise ActionValueError(f"the policy returned {action.shape} / non-finite values; the env "
                               "needs 8 finite numbers (xyz, rpy, gripper, terminate)")
    return action
