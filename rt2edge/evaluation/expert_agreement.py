"""How often does the policy pick the expert's action, on the expert's states and on its own?

A behaviour-cloned policy is trained on the states the expert visits. In closed loop it visits
its own: one wrong move puts it in a state the data rarely shows, where it errs more, and the
errors compound. The success rate shows the end result; this diagnosis shows the mechanism. The
same scenes are run twice:

- expert-driven: the env follows the scripted expert; the policy is asked at every state and its
  action is only recorded. This is the training distribution (without the data's noise).
- policy-driven: the env follows the policy, as in `evaluate`; the expert's action is recorded.
  (These are `evaluate`'s first scenes of the split: with the same seed, its success rate is the
  evaluation's over those episodes. A stateful runtime policy is asked, not obeyed, in the
  expert-driven pass, so its action guard remembers its own gripper command, not the executed one.)

Per phase of the task (read from the expert's action: approach, grasp, carry, release, done) it
reports how often the policy's whole action equals the expert's, and its parts: the move (every
xyz delta within a quarter step of the expert's, i.e. the same half-step class), the gripper
command's sign and the terminate flag. A policy that fits its data but fails in closed loop shows
high expert-driven and low policy-driven agreement; one that is wrong on the expert's own states
needs a better fit first.

    from rt2edge.evaluation import expert_agreement, load_policy
    print(expert_agreement(load_policy("runs/teacher"), episodes=20).format_table())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from rt2edge.checks import check_int
from rt2edge.errors import ConfigError
from rt2edge.evaluation.rollout import SPLITS, resolve_env_factory, run_episodes, split_envs

DRIVERS = ("expert", "policy")
PHASES = ("approach", "grasp", "carry", "release", "done")
PARTS = ("action", "move", "gripper", "terminate")
_LABELS = {"action": "action", "move": "move", "gripper": "grip", "terminate": "term"}


def expert_phase(scene: Any, expert: np.ndarray) -> str:
    """The task phase of a state, from the expert's action there: approach (moving to the object,
    nothing held), grasp (it closes), carry (holding, moving), release (it opens), done (terminate)."""
    if expert[7] >= 0.5:
        return "done"
    if scene.held is None:
        return "grasp" if expert[6] > 0 else "approach"
    return "release" if expert[6] < 0 else "carry"


def agreement_parts(action: np.ndarray, expert: np.ndarray, max_step: float) -> dict[str, bool]:
    """Which parts of `action` equal the expert's (see the module docstring)."""
    executed = np.clip(action[:3], -max_step, max_step)  # the env clips a longer move to one step
    move = bool(np.all(np.abs(executed - expert[:3]) < max_step / 4))
    gripper = bool((action[6] > 0) == (expert[6] > 0))
    terminate = bool((action[7] >= 0.5) == (expert[7] >= 0.5))
    return {"action": move and gripper and terminate, "move": move, "gripper": gripper,
            "terminate": terminate}


@dataclass
class ExpertAgreementResult:
    policy: str
    seed: int
    split: str
    episodes: int  # per driver
    # counts[driver][phase] = {"steps": n, "action": agreeing steps, "move": ..., ...}
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    success: dict[str, float] = field(default_factory=dict)  # per driver: success rate

    def _rows(self, driver: str, phase: str | None) -> list[dict[str, int]]:
        return [self.counts[driver][phase]] if phase is not None else list(self.counts[driver].values())

    def rate(self, driver: str, phase: str | None = None, part: str = "action") -> float | None:
        """Agreement of `part` on `driver`'s states in `phase` (None: all phases); None without steps."""
        steps = self.steps(driver, phase)
        return sum(r[part] for r in self._rows(driver, phase)) / steps if steps else None

    def steps(self, driver: str, phase: str | None = None) -> int:
        return sum(r["steps"] for r in self._rows(driver, phase))

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "seed": self.seed, "split": self.split, "episodes": self.episodes,
            "success": self.success,
            "agreement": {d: {ph or "all": {"steps": self.steps(d, ph), **{p: self.rate(d, ph, p) for p in PARTS}}
                              for ph in (None, *PHASES)}
                          for d in DRIVERS},
            "counts": self.counts,
        }

    def format_table(self) -> str:
        width = 6 + 7 * len(PARTS)  # one driver's columns: steps, then a rate per part

        def cells(driver: str, phase: str | None) -> str:
            n = self.steps(driver, phase)
            if not n:
                return f"{'-':>6}".ljust(width)
            return f"{n:>6}" + "".join(f"{self.rate(driver, phase, p):>7.0%}" for p in PARTS)

        groups = "".join(f"   {d + '-driven states':^{width}}" for d in DRIVERS)
        head = "".join("   " + f"{'steps':>6}" + "".join(f"{_LABELS[p]:>7}" for p in PARTS) for _ in DRIVERS)
        rule = "-" * (9 + len(head))
        lines = [f"expert agreement ({self.split} instructions, {self.episodes} episodes per driver; "
                 f"success {self.success['expert']:.0%} expert-driven, {self.success['policy']:.0%} "
                 "policy-driven)", f"{'':<9}{groups}", f"{'phase':<9}{head}", rule]
        for phase in PHASES:
            lines.append(f"{phase:<9}" + "".join("   " + cells(d, phase) for d in DRIVERS))
        lines += [rule, f"{'all':<9}" + "".join("   " + cells(d, None) for d in DRIVERS)]
        return "\n".join(line.rstrip() for line in lines)


def expert_agreement(policy: Any, episodes: int = 20, seed: int = 0, split: str = "train",
                     families: Sequence[str] | None = None, num_envs: int = 8,
                     max_steps: int | None = None, image_size: int | None = None,
                     object_counts: Sequence[int] | None = None,
                     env_factory: Callable[[str], Any] | None = None) -> ExpertAgreementResult:
    """Run `episodes` scenes of `split` expert-driven and policy-driven; count agreements per phase.

    The scenes are `evaluate`'s for the same seed. The envs must have the scripted expert
    (`expert_action()`, `scene`, `max_step`): the built-in TabletopEnv does.
    """
    check_int("episodes", episodes, 1)
    check_int("num_envs", num_envs, 1)
    if split not in SPLITS:
        raise ConfigError("split", f"must be one of {SPLITS}, got {split!r}")
    make_env = resolve_env_factory(env_factory, image_size, max_steps, object_counts)
    result = ExpertAgreementResult(policy=str(getattr(policy, "name", type(policy).__name__)),
                                   seed=seed, split=split, episodes=episodes)
    envs = split_envs(policy, make_env, split, episodes, num_envs)  # both passes: every episode resets
    if not (callable(getattr(envs[0], "expert_action", None))
            and all(hasattr(envs[0], name) for name in ("scene", "max_step"))):
        raise ConfigError("env_factory", "the expert-agreement diagnosis needs envs with the scripted "
                                         "expert (expert_action(), scene, max_step), like "
                                         "rt2edge.sim.TabletopEnv")
    for driver in DRIVERS:
        counts = {phase: {"steps": 0, **{p: 0 for p in PARTS}} for phase in PHASES}

        def execute(env: Any, action: np.ndarray, _episode: Any, driver: str = driver,
                    counts: dict = counts) -> np.ndarray:
            expert = np.asarray(env.expert_action(), np.float64)
            row = counts[expert_phase(env.scene, expert)]
            row["steps"] += 1
            for part, agrees in agreement_parts(action, expert, env.max_step).items():
                row[part] += agrees
            return expert if driver == "expert" else action

        successes = sum(ep.success for ep, _ in run_episodes(policy, envs, split, episodes, seed, families,
                                                             execute=execute))
        result.counts[driver] = counts
        result.success[driver] = successes / episodes
    return result
