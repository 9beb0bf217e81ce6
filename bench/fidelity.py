"""Fidelity of a variant to a reference policy, and its closed-loop success in the simulator.

  token agreement   fraction of action tokens equal to the reference's, same observations
  action agreement  fraction of observations whose whole action (every token) is equal
  action error      |values - reference values| in real units over the continuous dims (the
                    terminate flag is compared by the agreement, not averaged in): mean and max
  success           rt2edge.evaluation.evaluate through the variant's own act(), so a variant is
                    scored on the code path that was timed (a runtime artifact with its action
                    guard, the hf-generate loop with its processor)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from bench.backends import PolicyBackend
from rt2edge.errors import ConfigError


@dataclass(frozen=True)
class Outputs:
    tokens: np.ndarray  # (N, tokens_per_action)
    values: np.ndarray  # (N, action_dim) real units

    @classmethod
    def of(cls, backend: PolicyBackend, observations: Sequence[tuple[np.ndarray, str]]) -> Outputs:
        tokens, values = [], []
        for image, instruction in observations:
            if backend.reset is not None:
                backend.reset()  # each frame on its own: the runtime's gripper guard carries no state
            result = backend.act(image, instruction)
            if getattr(result, "safe_fallback", False):
                raise ConfigError("reference", f"{backend.name} returned its safe action "
                                               f"({result.reason}); fidelity needs real actions")
            tokens.append(np.asarray(result.tokens, np.int64))
            values.append(np.asarray(result.values, np.float64))
        return cls(np.stack(tokens), np.stack(values))


@dataclass(frozen=True)
class Fidelity:
    reference: str
    frames: int
    token_agreement: float
    action_agreement: float
    action_mae: float
    action_max_abs_error: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fidelity(outputs: Outputs, reference: Outputs, reference_name: str, continuous_dims: int) -> Fidelity:
    if outputs.tokens.shape != reference.tokens.shape:
        raise ConfigError("reference", f"actions of {outputs.tokens.shape[1]} tokens cannot be compared with "
                                       f"the reference's {reference.tokens.shape[1]}")
    equal = outputs.tokens == reference.tokens
    err = np.abs(outputs.values[:, :continuous_dims] - reference.values[:, :continuous_dims])
    return Fidelity(reference=reference_name, frames=int(outputs.tokens.shape[0]),
                    token_agreement=float(equal.mean()), action_agreement=float(equal.all(axis=1).mean()),
                    action_mae=float(err.mean()), action_max_abs_error=float(err.max()))


class BackendPolicy:
    """A bench backend as a rt2edge.evaluation ActionPolicy (one env at a time, reset per episode)."""

    stateful = True

    def __init__(self, backend: PolicyBackend, name: str):
        self.backend = backend
        self.name = name
        self.safe_fallbacks = 0

    def reset(self) -> None:
        if self.backend.reset is not None:
            self.backend.reset()

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        result = self.backend.act(image, instruction)
        self.safe_fallbacks += int(bool(getattr(result, "safe_fallback", False)))
        return np.asarray(result.values, np.float64)


def closed_loop_success(backend: PolicyBackend, name: str, episodes: int, seed: int,
                        max_steps: int | None, reference: Sequence[Any] | None = None
                        ) -> tuple[dict[str, Any], list[Any]]:
    """Success per split of `episodes` episodes each (both splits: seen and held-out instructions),
    and the per-episode records. With the reference's records (the same seed: the same scenes),
    also the paired comparison per split: episodes only one of them solves, McNemar's exact p."""
    from rt2edge.evaluation import evaluate
    from rt2edge.evaluation.paired import paired_by_split

    result = evaluate(BackendPolicy(backend, name), episodes=episodes, seed=seed, max_steps=max_steps,
                      num_envs=1, record=False)
    data = result.to_dict()
    out = {"episodes_per_split": episodes, "seed": seed, "max_steps": result.max_steps,
           "success_rate": data["overall"]["success_rate"], "episodes": data["overall"]["episodes"],
           "splits": {s: v["overall"] for s, v in data["splits"].items()},
           "safe_fallbacks": result.safe_fallbacks, "wall_s": result.wall_s}
    if reference is not None:  # a = the reference, b = this variant
        out["paired_with_reference"] = [c.to_dict() for c in
                                        paired_by_split(reference, result.episodes, result.splits)]
    return out, result.episodes
