"""`rt2edge data dagger`: a policy drives the simulator, the scripted expert labels every state.

Why (DAgger, Ross, Gordon & Bagnell 2011): a policy cloned from expert runs is trained on the
expert's states only (DART noise widens them a little). Once it errs (releases early, carries
past the mat) it is in states no demonstration shows and the errors compound: most failures of
README item 16's policy end with a wrong terminate or the step limit. Here the policy acts and
every frame is labelled with the expert's action in that state; the reactive expert
(rt2edge.sim.experts) is a function of the scene alone, so it can label any state.

The output is one dataset: the base dataset's episodes first (hard links where the filesystem
allows, so no bytes are copied), then the on-policy episodes. That is DAgger's aggregated set,
`distill finetune --data` trains on it unchanged, and it is the next round's --base.

Episode j of a round is scene `episode_seed(seed, N + j, 0)` of the base recipe (N: the base's
episode count, so the scenes are new), its family round-robin over the recipe's families.
With probability `expert_mix` per step (DAgger's beta) the expert's action is executed instead of
the policy's; the expert's terminate always is, so an episode ends once its task is done (the
states after it are labelled "terminate" anyway, and the policy's own choice there is recorded).
Resumable: on-policy episodes are written in index order, each atomically; a re-run reads the
finished ones back and rolls out the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rt2edge.atomic import atomic_write, atomic_write_json, remove_temporaries
from rt2edge.checks import check_finite
from rt2edge.data import lerobot
from rt2edge.data.generate import (
    GENERATION_FILE, RECIPE_FIELDS, EpisodeLog, GenerateConfig, episode_seed, finalize_dataset, recipe_env,
)
from rt2edge.data.lerobot import DatasetError
from rt2edge.errors import ConfigError
from rt2edge.sim import ACTION_NAMES, STATE_NAMES
from rt2edge.sim.language import check_families

TERMINATE = ACTION_NAMES.index("terminate")
# Fields of a round that decide what its episodes contain (a resumed run must match them), and
# the option that sets each.
ROUND_FIELDS = {"policy_sha256": "policy", "seed": "seed", "expert_mix": "expert_mix", "first_episode": "base",
                "loop_escape": "loop_escape"}


@dataclass(frozen=True)
class DaggerConfig:
    """One DAgger round. `episodes` may change between resumed runs; the rest may not."""

    base: str  # a dataset from `rt2edge data generate` or an earlier round
    policy: str  # a checkpoint (batched in num_envs envs) or a deploy artifact (one env)
    out: str
    episodes: int  # on-policy episodes this round adds
    seed: int = 0
    expert_mix: float = 0.0
    num_envs: int = 8
    # A deploy artifact drives with the runtime's loop escape at this temperature (None: greedy),
    # so the round labels the states the deployed policy reaches after leaving a loop.
    loop_escape: float | None = None

    def escape(self) -> Any:
        """The runtime's LoopEscape for `loop_escape` (set)."""
        from rt2edge.runtime.loop_escape import LoopEscape

        return LoopEscape(temperature=self.loop_escape)

    def __post_init__(self) -> None:
        for name in ("base", "policy", "out"):
            if not str(getattr(self, name)):
                raise ConfigError(name, "must name a folder")
        if Path(self.out).resolve() == Path(self.base).resolve():
            raise ConfigError("out", "must differ from --base (the base dataset is read, never changed)")
        if not isinstance(self.episodes, int) or self.episodes < 1:
            raise ConfigError("episodes", f"must be an integer >= 1, got {self.episodes!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"must be an integer >= 0, got {self.seed!r}")
        check_finite("expert_mix", self.expert_mix, 0.0, 1.0)
        if not isinstance(self.num_envs, int) or self.num_envs < 1:
            raise ConfigError("num_envs", f"must be an integer >= 1, got {self.num_envs!r}")
        if self.loop_escape is not None:
            if self.expert_mix > 0:  # the runtime would count the expert's moves as its own
                raise ConfigError("loop_escape", "needs --expert-mix 0: the runtime tracks the pose from "
                                                 "its own actions, and the expert's would be missed")
            try:
                self.escape()
            except ConfigError as exc:
                raise ConfigError("loop_escape", exc.reason) from exc


@dataclass
class DaggerReport:
    out: str
    base_episodes: int
    episodes: int  # on-policy episodes in this round
    frames: int  # on-policy frames in this round
    generated: int  # on-policy episodes rolled out by this run
    # Fraction of this round's episodes that reached their task (the policy driving, mixed with
    # the expert at `expert_mix`): what `rt2edge eval` counts as success, on training scenes.
    reached_rate: float
    # Of those, the fraction in which the policy's own action terminated on reaching it (the
    # expert's terminate is executed either way: the states after a task is done are not visited).
    policy_terminated: float
    per_family: dict[str, float] = field(default_factory=dict)  # reached rate per family
    expert_executed: float = 0.0  # fraction of this round's steps the expert's action was executed
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def policy_fingerprint(path: str | Path) -> str:
    """sha256 over the policy folder's top-level files (names and bytes): the same path holding
    other weights is another policy, and its episodes must not be mixed into a resumed round."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError("policy", f"{str(path)!r} is not a folder (a checkpoint or a deploy artifact)")
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _base_generation(base: Path) -> dict[str, Any]:
    if not (base / "meta/info.json").is_file():
        raise DatasetError(str(base), "is not a complete dataset (no meta/info.json)")
    path = base / GENERATION_FILE
    if not path.is_file():
        raise DatasetError(str(base), f"has no {GENERATION_FILE}: DAgger needs the simulator recipe of a "
                                      "dataset made by `rt2edge data generate` (or an earlier round)")
    return json.loads(path.read_text())


def _check_resume(root: Path, generation: dict[str, Any]) -> None:
    path = root / GENERATION_FILE
    if not path.exists():
        return
    old = json.loads(path.read_text())
    if old.get("recipe") != generation["recipe"]:
        raise ConfigError("base", f"{root} holds episodes of another simulator recipe; use a new --out")
    old_rounds, rounds = old.get("on_policy", []), generation["on_policy"]
    if len(old_rounds) != len(rounds):
        raise ConfigError("base", f"{root} extends another base ({len(old_rounds) - 1} earlier rounds, this "
                                  f"base has {len(rounds) - 1}); use the same --base to resume, or a new --out")
    for old_round, new_round in zip(old_rounds, rounds):
        for key, option in ROUND_FIELDS.items():
            if old_round.get(key) != new_round.get(key):
                raise ConfigError(option, f"differs from the round in {root} ({key} {old_round.get(key)!r}, "
                                          f"now {new_round.get(key)!r}); use the same to resume, or a new --out")


def _recipe_options(base: Path, generation: dict[str, Any]) -> dict[str, Any]:
    """GenerateConfig's keyword arguments from a base's recorded recipe."""
    recipe = generation.get("recipe")
    if not isinstance(recipe, dict):
        raise DatasetError(str(base / GENERATION_FILE), "has no recipe")
    options = {k: recipe[k] for k in RECIPE_FIELDS if k in recipe}
    for key in ("families", "object_counts"):
        if key in options:
            options[key] = tuple(options[key])
    return options


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists():
        return
    if not source.is_file():
        raise DatasetError(str(source), "is missing: the base dataset lists this episode in meta/info.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # a new name for the same bytes: atomic, and the base is read-only
    except OSError:  # another filesystem, or no hard links there
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def dagger(cfg: DaggerConfig, progress: Callable[[int, int], None] | None = None,
           load_policy: Callable[[str], Any] | None = None) -> DaggerReport:
    """Run (or finish) one DAgger round; returns what the policy did in it.

    progress(done, total): called after each on-policy episode is written.
    load_policy(path[, loop_escape=LoopEscape]) -> ActionPolicy (default rt2edge.evaluation.load_policy)."""
    start = time.perf_counter()
    base, root = Path(cfg.base), Path(cfg.out)
    base_generation = _base_generation(base)
    n_base = int(json.loads((base / "meta/info.json").read_text())["total_episodes"])
    gen_cfg = GenerateConfig(out=str(root), episodes=n_base + cfg.episodes, **_recipe_options(base, base_generation))
    recipe = gen_cfg.recipe()  # normalised: fields a base from an older version lacks get their defaults
    from rt2edge.evaluation.policies import load_policy as default_loader

    escape = {} if cfg.loop_escape is None else {"loop_escape": cfg.escape()}
    # before anything is written: a bad --policy leaves nothing
    policy = (load_policy or default_loader)(cfg.policy, **escape)
    this_round: dict[str, Any] = {
        "policy": str(cfg.policy), "policy_sha256": policy_fingerprint(cfg.policy), "seed": cfg.seed,
        "expert_mix": cfg.expert_mix, "first_episode": n_base, "episodes": cfg.episodes,
        **({} if cfg.loop_escape is None else {"loop_escape": cfg.loop_escape})}
    rounds = [*base_generation.get("on_policy", []), this_round]
    _check_resume(root, {"recipe": recipe, "on_policy": rounds})
    root.mkdir(parents=True, exist_ok=True)
    remove_temporaries(root)
    atomic_write_json(root / GENERATION_FILE, {"recipe": recipe, "on_policy": rounds})
    out = EpisodeLog(root, gen_cfg, lerobot.features(gen_cfg.image_size, STATE_NAMES, ACTION_NAMES))
    for index in range(n_base):
        _link_or_copy(out.path(index, base), out.path(index))
        out.adopt(index)
    total = n_base + cfg.episodes
    missing = [i for i in range(n_base, total) if not out.path(i).exists()]
    for index in range(n_base, missing[0] if missing else total):
        out.adopt(index)
    if missing and any(out.path(i).exists() for i in range(missing[0], total)):
        raise DatasetError(str(root), f"on-policy episode {missing[0]} is missing but later ones exist; "
                                      "delete the later ones to roll them out again")
    generated = _roll_out(cfg, gen_cfg, missing, out, policy, progress, total) if missing else 0
    ours = out.records[n_base:]
    this_round.update(_round_summary(ours))
    finalize_dataset(root, gen_cfg, out.feats, out.records, out.tasks, provenance={"on_policy": rounds})
    return DaggerReport(
        out=str(root), base_episodes=n_base, episodes=len(ours), frames=this_round["frames"],
        generated=generated, reached_rate=this_round["reached_rate"],
        policy_terminated=this_round["policy_terminated"], per_family=this_round["per_family"],
        expert_executed=this_round["expert_executed"],
        seconds=time.perf_counter() - start)


def _round_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    per_family: dict[str, list[bool]] = {}
    for r in records:
        per_family.setdefault(r["family"], []).append(bool(r["success"]))
    frames = int(sum(r["length"] for r in records))
    reached = [r for r in records if r["success"]]
    return {"reached_rate": len(reached) / len(records),
            "policy_terminated": (sum(r.get("policy_terminated", False) for r in reached) / len(reached)
                                  if reached else float("nan")),
            "per_family": {f: float(np.mean(v)) for f, v in sorted(per_family.items())},
            "frames": frames,
            "expert_executed": sum(r["expert_executed"] for r in records) / max(frames, 1)}


def _roll_out(cfg: DaggerConfig, gen_cfg: GenerateConfig, missing: list[int], out: EpisodeLog, policy: Any,
              progress: Callable[[int, int], None] | None, total: int) -> int:
    """Roll out the missing on-policy episodes; write each, in index order, once it and every
    episode before it are done (batched envs finish out of order). Returns how many."""
    from rt2edge.evaluation.policies import supports_batch
    from rt2edge.evaluation.rollout import RolloutEpisode, run_plan

    families = check_families(gen_cfg.families)
    width = min(cfg.num_envs, len(missing)) if supports_batch(policy) else 1
    envs = [recipe_env(gen_cfg) for _ in range(width)]
    plan = deque(RolloutEpisode(i, families[i % len(families)], episode_seed(cfg.seed, i, 0))
                 for i in missing)
    steps: dict[int, dict[str, Any]] = {}  # episode index -> its frames so far

    def execute(env: Any, action: np.ndarray, episode: Any) -> np.ndarray:
        rows = steps.setdefault(episode.index, {
            "images": [], "states": [], "actions": [], "success": [], "expert": [],
            "template": env.task.template, "rng": np.random.default_rng([cfg.seed, episode.index, 3])})
        label = np.asarray(env.expert_action(), np.float32)
        rows["images"].append(np.array(episode.obs["image"], copy=True))
        rows["states"].append(np.asarray(episode.obs["state"], np.float32))
        rows["actions"].append(label)
        rows["success"].append(bool(env.is_success()))
        done = bool(label[TERMINATE] >= 0.5)  # the task is reached: the expert ends the episode
        rows["policy_terminated"] = done and bool(action[TERMINATE] >= 0.5)
        use_expert = done or rows["rng"].uniform() < cfg.expert_mix
        rows["expert"].append(use_expert)
        return label.astype(np.float64) if use_expert else action

    finished: dict[int, Any] = {}
    order = deque(missing)
    for episode, _ in run_plan(policy, envs, plan, execute=execute):
        finished[episode.index] = episode
        while order and order[0] in finished:
            index = order.popleft()
            ep, rows = finished.pop(index), steps.pop(index)
            columns = {"images": np.stack(rows["images"]), "states": np.stack(rows["states"]),
                       "actions": np.stack(rows["actions"]),
                       # next.success is the state after each step: the next frame's, the end's last
                       "successes": [*rows["success"][1:], bool(ep.success)]}
            out.write(index, columns, {
                "seed": ep.seed, "attempts": 1, "family": ep.family, "instruction": ep.instruction,
                "template": rows["template"], "success": bool(ep.success), "on_policy": True,
                "record_extra": {"expert_executed": int(sum(rows["expert"])),
                                 "policy_terminated": rows.get("policy_terminated", False)}})
            if progress is not None:
                progress(index + 1, total)
    return len(missing)
