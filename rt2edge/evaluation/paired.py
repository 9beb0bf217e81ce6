"""Paired comparison of two policies evaluated on the same scenes (McNemar's exact test).

`evaluate` with one seed gives every policy the same scenes and instructions, so two results are
paired episode by episode. Only the discordant episodes (one policy succeeds, the other fails)
carry evidence of a difference; McNemar's test asks whether they split unevenly. It separates a
real cost (e.g. of int4) from closed-loop noise far better than two independent rates at 60-200
episodes, where one near-tie that diverges flips an episode either way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from math import comb
from pathlib import Path
from typing import Any, Iterable, Sequence

from rt2edge.errors import ConfigError
from rt2edge.evaluation.results import EpisodeResult


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: P(a split of the discordant episodes at least this uneven)
    under Binomial(only_a + only_b, 1/2). 1.0 when there is no discordant episode."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedComparison:
    split: str | None  # None: both splits together
    episodes: int
    both: int  # succeeded under both policies
    only_a: int
    only_b: int
    neither: int
    p_value: float  # McNemar exact, two-sided

    @property
    def difference(self) -> float:
        """Success rate of a minus that of b (the discordant episodes only differ)."""
        return (self.only_a - self.only_b) / self.episodes if self.episodes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "difference": self.difference}

    def format_line(self, a: str = "a", b: str = "b") -> str:
        where = "all" if self.split is None else self.split
        return (f"{where:<8} {self.episodes} paired episodes: both {self.both}, only {a} {self.only_a}, "
                f"only {b} {self.only_b}, neither {self.neither}; difference {100 * self.difference:+.1f} "
                f"points, McNemar p = {self.p_value:.3g}")


def _key(e: EpisodeResult) -> tuple[str, int, int, str, str]:
    return (e.split, e.index, e.seed, e.family, e.instruction)


def paired_comparison(a: Sequence[EpisodeResult], b: Sequence[EpisodeResult],
                      split: str | None = None) -> PairedComparison:
    """Pair the episodes of two evaluations by scene (split, index, env seed, family, instruction).
    Both must hold the same scenes: evaluate with the same --seed, --episodes, --families and
    --objects. A ConfigError names the first scene one side lacks."""
    sa = {_key(e): e.success for e in a if split is None or e.split == split}
    sb = {_key(e): e.success for e in b if split is None or e.split == split}
    if sa.keys() != sb.keys():
        missing = sorted(sa.keys() ^ sb.keys())[0]
        raise ConfigError("paired_with", f"the two evaluations hold different scenes (e.g. split {missing[0]!r}, "
                                      f"episode {missing[1]}, seed {missing[2]}): evaluate both with the same "
                                      "--seed, --episodes, --families and --objects")
    if not sa:
        raise ConfigError("paired_with", f"no episodes to pair{'' if split is None else f' in split {split!r}'}")
    pairs = [(sa[k], sb[k]) for k in sa]
    only_a = sum(x and not y for x, y in pairs)
    only_b = sum(y and not x for x, y in pairs)
    both = sum(x and y for x, y in pairs)
    return PairedComparison(split=split, episodes=len(pairs), both=both, only_a=only_a, only_b=only_b,
                            neither=len(pairs) - both - only_a - only_b, p_value=mcnemar_exact(only_a, only_b))


def paired_by_split(a: Sequence[EpisodeResult], b: Sequence[EpisodeResult],
                    splits: Iterable[str]) -> list[PairedComparison]:
    """One comparison per split, then those splits together (either side may hold other splits,
    e.g. an earlier `--split both` run paired with a `--split train` one)."""
    splits = list(splits)
    a, b = ([e for e in side if e.split in splits] for side in (a, b))
    return [*(paired_comparison(a, b, s) for s in splits), paired_comparison(a, b)]


# The options that draw an evaluation's scenes besides its seed, as `rt2edge eval` names them.
SCENE_OPTIONS = {"families": "--families", "object_counts": "--objects"}


@dataclass(frozen=True)
class EvaluationRecord:
    """What pairing needs of an earlier `rt2edge eval --json` file."""

    path: str
    seed: int
    max_steps: int
    episodes: list[EpisodeResult]
    scene_options: dict[str, Any] | None = None  # None: a file from before they were recorded

    def check_pairable(self, seed: int, max_steps: int | None, episodes: int, splits: Iterable[str],
                       scene_options: dict[str, Any] | None = None) -> None:
        """Refuse an evaluation whose scenes or step budget cannot match this run's: another seed,
        --max-steps, --families or --objects, or another episode count in one of its splits. Called
        before a run with what is known then (max_steps None: the env's default, checked after)."""
        if seed != self.seed:
            raise ConfigError("paired_with", f"{self.path} was evaluated with --seed {self.seed}, this run has "
                                             f"--seed {seed}: the scenes differ")
        if max_steps is not None and max_steps != self.max_steps:
            raise ConfigError("paired_with", f"{self.path} was evaluated with --max-steps {self.max_steps}, this "
                                             f"run has {max_steps}: the episodes had different step budgets")
        for key, option in SCENE_OPTIONS.items():
            theirs, ours = ((opts or {}).get(key) for opts in (self.scene_options, scene_options))
            if theirs is not None and ours is not None and list(theirs) != list(ours):
                raise ConfigError("paired_with", f"{self.path} was evaluated with {key} {list(theirs)}, this run "
                                                 f"has {list(ours)}: the scenes differ (use the same {option})")
        held_splits = sorted({e.split for e in self.episodes})
        for split in splits:
            held = sum(e.split == split for e in self.episodes)
            if held == 0:
                raise ConfigError("paired_with", f"{self.path} holds no episodes of split {split!r} (only "
                                                 f"{held_splits}): evaluate both with the same --split")
            if held != episodes:
                raise ConfigError("paired_with", f"{self.path} holds {held} episodes of split {split!r}, this run "
                                                 f"evaluates {episodes}: evaluate both with the same --episodes")


_EPISODE_FIELDS = {f.name for f in fields(EpisodeResult)}


def load_evaluation(path: str | Path) -> EvaluationRecord:
    """The seed, step budget, scene options and per-episode records of an `rt2edge eval --json`
    file (episode fields a later version adds are ignored)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        episodes = [EpisodeResult(**{k: v for k, v in e.items() if k in _EPISODE_FIELDS}) for e in data["episodes"]]
        return EvaluationRecord(str(path), int(data["seed"]), int(data["max_steps"]), episodes,
                                data.get("scene_options"))
    except FileNotFoundError:
        raise ConfigError("paired_with", f"{path} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError("paired_with", f"{path} is not an `rt2edge eval --json` result ({exc})") from None


@dataclass(frozen=True)
class PairedResult:
    """This evaluation against an earlier one (`rt2edge eval --paired-with OTHER.json`)."""

    other: str
    comparisons: list[PairedComparison]

    def to_dict(self) -> dict[str, Any]:
        return {"other": self.other, "comparisons": [c.to_dict() for c in self.comparisons]}

    def format_line(self) -> str:
        return "\n".join([f"paired with {self.other} (this = a, other = b):",
                          *(f"  {c.format_line()}" for c in self.comparisons)])
