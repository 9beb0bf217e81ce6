"""Does the policy follow the instruction? A counterfactual-instruction probe.

A closed-loop success rate cannot tell "goes to the wrong object" from "cannot reach any object".
This probe can: on the first frame of scenes whose instruction names the object to move, the
policy is asked twice, once with the real instruction and once with the same sentence naming
another object of the scene instead. The scripted expert's first move differs between the two
(it heads for the named object), so a policy that reads the instruction changes its move with
the name and heads for the object named; a language-blind one does neither.

    from rt2edge.evaluation import load_policy, probe_language
    print(probe_language(load_policy("runs/teacher"), scenes=100).format_line())

Reported: `follows` = fraction of asks whose xy move is closer to the expert's move for the named
object than to its move for the other one (ties count against: a move both would make says
nothing; a language-blind policy scores <= ~0.5), and `changes` = fraction of scenes where
renaming the object changed the policy's xy move at all (the expert: 1.0 on these scenes).

phase="carry" asks the same question after the grasp: on the first frame where the expert carries
the object (held, moving in x / y), the counterfactual names another destination of the scene (the
other mat or flag, another reference object). A policy that heads for the object but not for the
destination reads the first phrase of the instruction and not the second (README item 15).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from rt2edge.checks import check_int
from rt2edge.errors import ConfigError
from rt2edge.evaluation.policies import first_frame_moves, supports_batch
from rt2edge.evaluation.rollout import resolve_env_factory

PROBE_STREAM = 0x1A96  # salts the probe's scene seeds: not the evaluation's, not the data's
MAX_TRIES_PER_SCENE = 20  # draws per wanted scene before giving up (crowded or 1-object scenes)
PHASES = ("approach", "carry")  # ask on the first frame / on the first frame of the carry
CARRY_SEARCH_STEPS = 30  # expert steps allowed to reach the carry (its episodes take <= 30)


@dataclass(frozen=True)
class ProbeScene:
    family: str
    seed: int
    instruction: str  # names the task's object
    counterfactual: str  # the same sentence naming the other object
    expert_named: tuple[float, float]  # expert's first xy move for the real instruction
    expert_other: tuple[float, float]  # ... for the counterfactual one
    policy_named: tuple[float, float]  # the policy's xy move for the real instruction
    policy_other: tuple[float, float]  # ... for the counterfactual one


@dataclass
class LanguageProbeResult:
    policy: str
    seed: int
    scenes: list[ProbeScene] = field(default_factory=list)
    safe_fallbacks: int | None = None  # deploy artifacts: asks answered with the safe action
    phase: str = "approach"  # what was renamed: the object to move, or (carry) its destination

    @staticmethod
    def _rates(scenes: Sequence[ProbeScene]) -> dict[str, float]:
        follows, changes = 0, 0
        for s in scenes:
            follows += _closer(s.policy_named, s.expert_named, s.expert_other)
            follows += _closer(s.policy_other, s.expert_other, s.expert_named)
            changes += not np.allclose(s.policy_named, s.policy_other)
        n = len(scenes)
        return {"scenes": n, "follows": follows / (2 * n) if n else 0.0,
                "changes": changes / n if n else 0.0}

    @property
    def follows(self) -> float:
        return self._rates(self.scenes)["follows"]

    @property
    def changes(self) -> float:
        return self._rates(self.scenes)["changes"]

    def per_family(self) -> dict[str, dict[str, float]]:
        groups: dict[str, list[ProbeScene]] = defaultdict(list)
        for s in self.scenes:
            groups[s.family].append(s)
        return {family: self._rates(group) for family, group in sorted(groups.items())}

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "seed": self.seed, "phase": self.phase, **self._rates(self.scenes),
                "safe_fallbacks": self.safe_fallbacks,
                "per_family": self.per_family(),
                "scene_records": [dataclasses.asdict(s) for s in self.scenes]}

    def format_line(self) -> str:
        r = self._rates(self.scenes)
        where, what = (("scenes", "object") if self.phase == "approach" else ("carry frames", "destination"))
        line = (f"language probe ({r['scenes']} seen-instruction {where}): follows the named {what} "
                f"{r['follows']:.0%} (language-blind <= ~50%), move changes with the name {r['changes']:.0%}")
        return line + (f", {self.safe_fallbacks} safe-fallback actions" if self.safe_fallbacks else "")


def _closer(move: Sequence[float], named: Sequence[float], other: Sequence[float]) -> bool:
    move = np.asarray(move)
    return float(np.abs(move - named).sum()) < float(np.abs(move - other).sum())


def probe_families(families: Sequence[str] | None, phase: str = "approach") -> list[str]:
    """The given families (default: all) the probe can ask about: for "approach" those whose
    instructions name the object to move ({x}), for "carry" those that also name a destination.
    ConfigError when none can (callers check before a long evaluation)."""
    from rt2edge.sim.experts import DESTINATIONS
    from rt2edge.sim.language import TEMPLATES, check_families, placeholders

    if phase not in PHASES:
        raise ConfigError("phase", f"must be one of {PHASES}, got {phase!r}")
    wanted = [f for f in check_families(families) if all("x" in placeholders(t) for t in TEMPLATES[f]["train"])]
    if phase == "carry":
        wanted = [f for f in wanted if DESTINATIONS[f] is not None]
    if not wanted:
        if phase == "carry":
            raise ConfigError("families", "none of them names a destination (pick and pick_extreme lift in "
                                          "place); the carry probe needs move_near, put_on, move_to_mat or "
                                          "move_to_flag")
        raise ConfigError("families", "none of them names the object to move (pick_extreme does not); "
                                      "the probe needs e.g. pick, move_near, put_on, move_to_mat, move_to_flag")
    return wanted


def _counterfactual(env: Any) -> tuple[str, Any] | None:
    """(instruction naming another object, the task for it) or None when the scene has none.

    The other object must have a name of its own (not the target's, not the reference's), and
    that name must be one the split may name as an object to move: the counterfactual is then an
    instruction of the same split, so the probe measures language following, not generalization.
    """
    from rt2edge.sim.language import mover_combos

    scene, task = env.scene, env.task
    named = scene.objects[task.target].name
    taken = {named} | ({scene.objects[task.reference].name} if task.reference is not None else set())
    allowed = {f"{c} {s}" for c, s in mover_combos(env.sampler.split)}
    if task.instruction.count(named) != 1:
        return None
    for j, obj in enumerate(scene.objects):
        if (j in (task.target, task.reference) or obj.name in taken or obj.name not in allowed
                or obj.name in task.instruction):
            continue
        text = task.instruction.replace(named, obj.name)
        return text, dataclasses.replace(task, target=j, instruction=text)
    return None


def _destination_counterfactual(env: Any) -> tuple[str, Any] | None:
    """(the instruction naming another destination of the scene, the task for it) or None."""
    from rt2edge.sim.tasks import counterfactual_destinations

    others = counterfactual_destinations(env.scene, env.task, env.sampler.split)
    return (others[0].instruction, others[0]) if others else None


def _first_carry_frame(env: Any, obs: dict) -> dict | None:
    """Step the scripted expert (no noise) to the first frame where it holds the task's object and
    moves it in x / y; that frame's observation, or None if the episode ends first."""
    from rt2edge.sim.experts import expert_action

    for _ in range(CARRY_SEARCH_STEPS):
        action = expert_action(env.scene, env.task, env.max_step)
        if env.scene.held == env.task.target and np.any(action[:2]):
            return obs
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            return None
    return None


def probe_language(policy: Any, scenes: int = 100, seed: int = 0, split: str = "train",
                   families: Sequence[str] | None = None, object_counts: Sequence[int] | None = None,
                   image_size: int | None = None, batch_size: int = 8,
                   env_factory: Callable[[str], Any] | None = None, phase: str = "approach") -> LanguageProbeResult:
    """Ask `policy` on `scenes` first frames with the real and a counterfactual instruction.

    Only scenes where the expert's first moves for the two objects differ are kept (otherwise
    the two asks cannot be told apart). policy: an ActionPolicy (see policies.py). batch_size:
    asks per `act_batch` call (batched policies; the evaluator's num_envs). phase: "approach"
    renames the object to move on the scene's first frame; "carry" renames its destination on the
    first frame the expert carries it (see the module docstring).
    """
    from rt2edge.sim.experts import expert_action

    check_int("scenes", scenes, 1)
    check_int("batch_size", batch_size, 1)
    wanted = probe_families(families, phase)
    # default: the env `evaluate` makes (its object counts and image size unless given)
    env = resolve_env_factory(env_factory, image_size, None, object_counts)(split)
    attach = getattr(policy, "attach_env", None)
    if callable(attach):  # a scene-reading policy (the scripted expert) reads this env
        attach(env)
    batched = supports_batch(policy)
    fallbacks_before = getattr(policy, "safe_fallbacks", None)
    found: list[tuple[str, int, np.ndarray, str, str, np.ndarray, np.ndarray]] = []
    asked: list[np.ndarray] = []  # unbatched policies: (2, 2) moves, asked while the env shows the scene
    for draw in range(scenes * MAX_TRIES_PER_SCENE):
        if len(found) == scenes:
            break
        family = wanted[draw % len(wanted)]
        env_seed = int(np.random.SeedSequence([PROBE_STREAM, seed, draw]).generate_state(1)[0])
        obs, _ = env.reset(seed=env_seed, options={"family": family})
        if phase == "carry":
            obs = _first_carry_frame(env, obs)
            if obs is None:
                continue
        other = _counterfactual(env) if phase == "approach" else _destination_counterfactual(env)
        if other is None:
            continue
        text, other_task = other
        named_move = expert_action(env.scene, env.task, env.max_step)[:2]
        other_move = expert_action(env.scene, other_task, env.max_step)[:2]
        if np.allclose(named_move, other_move):
            continue
        found.append((family, env_seed, obs["image"].copy(), env.instruction, text, named_move, other_move))
        if not batched:
            asked.append(first_frame_moves(policy, np.stack([obs["image"]] * 2), [env.instruction, text], batch_size))
    if not found:
        raise ConfigError("object_counts", f"no scene of {wanted} had a second nameable {'object' if phase == 'approach' else 'destination'} in "
                                           f"{scenes * MAX_TRIES_PER_SCENE} draws; use >= 2 objects (>= 3 for "
                                           "move_near / put_on)")
    if batched:
        images = np.stack([f[2] for f in found])
        moves = np.stack([first_frame_moves(policy, images, [f[3] for f in found], batch_size),
                          first_frame_moves(policy, images, [f[4] for f in found], batch_size)], axis=1)
    else:
        moves = np.stack(asked)
    result = LanguageProbeResult(policy=str(getattr(policy, "name", type(policy).__name__)), seed=seed, phase=phase)
    if fallbacks_before is not None:  # a deploy artifact: its safe actions (zero moves) look language-blind
        result.safe_fallbacks = int(policy.safe_fallbacks) - int(fallbacks_before)
    for (family, env_seed, _, text, cf, en, eo), (pn, po) in zip(found, moves):
        result.scenes.append(ProbeScene(
            family=family, seed=env_seed, instruction=text, counterfactual=cf,
            expert_named=tuple(map(float, en)), expert_other=tuple(map(float, eo)),
            policy_named=tuple(map(float, pn)), policy_other=tuple(map(float, po))))
    return result
