"""Closed-loop evaluation results: per-episode records, per split / task family summaries, JSON, table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rt2edge.atomic import atomic_write_json

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a success rate. Unlike p +- z*sqrt(p(1-p)/n) it stays inside
    [0, 1] and is not empty at 0/n or n/n, which small closed-loop evaluations often give."""
    if n <= 0:
        return (0.0, 1.0)  # no episodes: nothing is known
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


@dataclass(frozen=True)
class EpisodeResult:
    split: str
    index: int  # planned episode number within the split
    family: str
    instruction: str
    seed: int  # env.reset(seed=...) of this episode: replays it exactly
    success: bool  # the task predicate holds when the episode ends (terminated or truncated)
    reached: bool  # the predicate held at some step (a policy may reach the goal, then undo it)
    terminated: bool  # the policy ended the episode itself (terminate flag)
    steps: int
    out_of_bounds_actions: int  # actions with a dim outside the env's action space (before clipping)
    # The first step after which the env was back in a state of an earlier step (env.state_key):
    # a policy of the image alone, decoded greedily, then loops until the step limit. None: never,
    # or the env has no state_key.
    revisit_step: int | None = None
    # Failed episodes: what the final scene shows (rt2edge.sim.tasks.FAILURE_KINDS: wrong object,
    # near miss, ...); None for a success or an env that cannot tell.
    failure: str | None = None


@dataclass(frozen=True)
class GroupSummary:
    episodes: int
    successes: int
    success_rate: float
    reached_rate: float
    mean_length: float
    # 95% Wilson interval of success_rate: at 60 episodes a 47% rate is 35-59%, so two policies
    # whose intervals overlap this much are not told apart by this evaluation.
    success_ci95: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def of(cls, episodes: Sequence[EpisodeResult]) -> GroupSummary:
        n = len(episodes)
        successes = sum(e.success for e in episodes)
        return cls(
            episodes=n,
            successes=successes,
            success_rate=successes / n if n else 0.0,
            reached_rate=sum(e.reached for e in episodes) / n if n else 0.0,
            mean_length=float(np.mean([e.steps for e in episodes])) if n else 0.0,
            success_ci95=wilson_interval(successes, n),
        )


@dataclass
class EvaluationResult:
    policy: str
    seed: int
    max_steps: int
    episodes: list[EpisodeResult]
    wall_s: float
    safe_fallbacks: int | None = None  # deploy artifacts: actions replaced by the safe action
    # Deploy artifacts run with loop escape: its settings and how many actions it sampled.
    loop_escape: dict[str, Any] | None = None
    # One recorded rollout (frames uint8 (T, H, W, 3)) for a GIF / strip; not part of the JSON.
    rollout_frames: np.ndarray | None = field(default=None, repr=False)
    rollout_episode: EpisodeResult | None = None
    # Optional: the counterfactual-instruction probe (language_probe.LanguageProbeResult) of the policy.
    language_probe: Any = None
    # Optional: action agreement with the expert on its states and the policy's own
    # (expert_agreement.ExpertAgreementResult).
    expert_agreement: Any = None
    # Optional: success paired episode by episode with another evaluation (paired.PairedResult).
    paired: Any = None
    # What drew the scenes besides the seed: {"families": [...], "object_counts": [...]} as the
    # envs resolved them (None where a custom env does not say). Pairing checks it before a run.
    scene_options: dict[str, Any] | None = None

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(e.split for e in self.episodes))

    def summary(self, split: str | None = None, family: str | None = None) -> GroupSummary:
        return GroupSummary.of([e for e in self.episodes
                                if (split is None or e.split == split)
                                and (family is None or e.family == family)])

    def by_family(self, split: str) -> dict[str, GroupSummary]:
        families = dict.fromkeys(e.family for e in self.episodes if e.split == split)
        return {f: self.summary(split, f) for f in families}

    def failure_counts(self, split: str) -> dict[str, dict[str, int]]:
        """Failed episodes of `split` per task family and failure kind (families without a failure
        are left out; "unknown" where the env could not tell)."""
        counts: dict[str, dict[str, int]] = {}
        for e in self.episodes:
            if e.split == split and not e.success:
                kinds = counts.setdefault(e.family, {})
                kind = e.failure or "unknown"
                kinds[kind] = kinds.get(kind, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "seed": self.seed,
            "max_steps": self.max_steps,
            "scene_options": self.scene_options,
            "wall_s": self.wall_s,
            "safe_fallbacks": self.safe_fallbacks,
            **({} if self.loop_escape is None else {"loop_escape": self.loop_escape}),
            "overall": asdict(self.summary()),
            "splits": {s: {"overall": asdict(self.summary(s)),
                           "families": {f: asdict(g) for f, g in self.by_family(s).items()},
                           "failures": self.failure_counts(s)}
                       for s in self.splits},
            "episodes": [asdict(e) for e in self.episodes],
            **({} if self.language_probe is None else {"language_probe": self.language_probe.to_dict()}),
            **({} if self.expert_agreement is None else {"expert_agreement": self.expert_agreement.to_dict()}),
            **({} if self.paired is None else {"paired": self.paired.to_dict()}),
        }

    def _loop_census(self, split: str) -> str:
        failed = [e for e in self.episodes if e.split == split and not e.success]
        timeouts = [e for e in failed if not e.terminated]
        return (f"{split} {sum(e.revisit_step is not None for e in failed)} of {len(failed)} "
                f"({sum(e.revisit_step is not None for e in timeouts)} of the {len(timeouts)} that ran out of steps)")

    def _failure_table(self, split: str) -> list[str]:
        """Failed episodes of one split, family by failure kind (kinds that occur, in
        FAILURE_KINDS order); [] when every episode succeeded or no env could tell."""
        counts = self.failure_counts(split)
        present = {k for kinds in counts.values() for k in kinds}
        if not present or present == {"unknown"}:
            return []
        from rt2edge.sim.tasks import FAILURE_KINDS  # loads the simulator (gymnasium, no torch): an eval ran it

        # The simulator's kinds in its order, then any a custom env reports, then "unknown".
        kinds = ([k for k in FAILURE_KINDS if k in present] + sorted(present - set(FAILURE_KINDS) - {"unknown"})
                 + ["unknown"] * ("unknown" in present))
        families = [f for f in dict.fromkeys(e.family for e in self.episodes) if f in counts]  # table order
        lines = [f"{split + ' failures':<18}" + "".join(f"{k:>{len(k) + 2}}" for k in kinds)]
        for family in families:
            lines.append(f"{family:<18}" + "".join(f"{counts[family].get(k, 0):>{len(k) + 2}}" for k in kinds))
        return lines

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    def format_table(self) -> str:
        """Success rate per task family (rows) and split (columns), plus mean episode length."""
        splits = self.splits
        families = list(dict.fromkeys(e.family for e in self.episodes))
        head = f"{'family':<14}" + "".join(f"{s + ' success':>22}{'len':>7}" for s in splits)
        lines = [f"policy {self.policy}  seed {self.seed}  max_steps {self.max_steps}", head,
                 "-" * len(head)]

        def cells(split: str, family: str | None) -> str:
            g = self.summary(split, family)
            if g.episodes == 0:
                return f"{'-':>22}{'-':>7}"
            rate = f"{100 * g.success_rate:5.1f}% ({g.successes}/{g.episodes})"
            return f"{rate:>22}{g.mean_length:>7.1f}"

        for family in families:
            lines.append(f"{family:<14}" + "".join(cells(s, family) for s in splits))
        lines.append("-" * len(head))
        lines.append(f"{'all':<14}" + "".join(cells(s, None) for s in splits))

        def interval(split: str) -> str:
            low, high = self.summary(split).success_ci95
            return f"{f'{100 * low:.1f}-{100 * high:.1f}%':>22}{'':>7}"

        lines.append((f"{'95% interval':<14}" + "".join(interval(s) for s in splits)).rstrip())
        if any(e.revisit_step is not None for e in self.episodes if not e.success):
            lines.append("failed episodes back in an earlier state (a loop): " + "; ".join(
                self._loop_census(split) for split in splits))
        for split in splits:
            lines.extend(self._failure_table(split))
        if self.safe_fallbacks:
            lines.append(f"safe-fallback actions: {self.safe_fallbacks}")
        if self.loop_escape is not None:
            lines.append(f"loop escape (temperature {self.loop_escape['temperature']:g}): "
                         f"{self.loop_escape['escapes']} sampled actions")
        if self.language_probe is not None:
            lines.append(self.language_probe.format_line())
        if self.expert_agreement is not None:
            lines.append(self.expert_agreement.format_table())
        if self.paired is not None:
            lines.append(self.paired.format_line())
        lines.append(f"wall time {self.wall_s:.1f} s")
        return "\n".join(lines)
