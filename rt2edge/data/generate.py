"""`rt2edge data generate`: scripted-expert episodes written as a LeRobot dataset.

Deterministic and resumable: episode i is a pure function of (recipe, i) — its family (and
whether it is a relabeled carry) is episode_plan(...)[i % len], its reset seed comes from
SeedSequence([seed, i, attempt]) — so a run that
was interrupted and resumed writes exactly the bytes a one-shot run writes. A finished episode
is one whose parquet file exists (files are written atomically); it is read back, not redone.
Only successful expert episodes are kept; failed attempts are retried with the next attempt seed
and counted, so the expert's success rate is reported (meta/generation.json).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rt2edge.checks import check_finite
from rt2edge.data import lerobot
from rt2edge.atomic import atomic_write, atomic_write_json, atomic_write_jsonl, remove_temporaries
from rt2edge.data.lerobot import DATA_PATH, IMAGE_KEY, DatasetError
from rt2edge.errors import ConfigError
from rt2edge.sim import ACTION_NAMES, STATE_NAMES, TabletopEnv
from rt2edge.sim.experts import DESTINATIONS, expert_action, perturb_action
from rt2edge.sim.language import check_families, check_split
from rt2edge.sim.tasks import (
    OBJECT_COUNTS, check_object_counts, check_start_anywhere, counterfactual_destinations,
)

GENERATION_FILE = "meta/generation.json"
# Episodes that are not a run of the expert on its own task: a relabeled carry (labels for another
# destination) and an on-policy episode (rt2edge.data.dagger: a policy drove, the expert labelled).
EPISODE_MARKERS = ("relabeled", "on_policy")
# What an on-policy episode records of its rollout: steps the expert's action was executed, and
# whether the policy's own action terminated when the task was reached.
ON_POLICY_FIELDS = ("expert_executed", "policy_terminated")
# Fields of the recipe that decide what an episode contains; a resumed run must match them.
RECIPE_FIELDS = ("seed", "image_size", "split", "families", "object_counts", "max_steps",
                 "action_noise", "move_noise", "gripper_noise", "start_anywhere", "relabel_carry",
                 "max_attempts", "fps", "chunks_size")


@dataclass(frozen=True)
class GenerateConfig:
    """What to generate. `out` and `episodes` may change between resumed runs; the rest may not."""

    out: str
    episodes: int
    seed: int = 0
    image_size: int = 64
    split: str = "train"
    families: tuple[str, ...] | None = None
    object_counts: tuple[int, ...] = OBJECT_COUNTS  # objects per scene; fewer = easier task
    max_steps: int = 60
    # DART-style noise: executed xyz deltas are scaled by (1 + N(0, action_noise)) while the
    # recorded action stays the expert's, so the data shows recoveries from small errors.
    action_noise: float = 0.0
    # Additive DART noise: N(0, move_noise) metres on every executed xyz delta. Scaling alone
    # never moves an axis the expert holds still, so it cannot overshoot a target; without these
    # states the data has almost no "move back" labels and a cloned policy that overshoots once
    # keeps going (measured: < 1% of y labels were -max_step on pick-2 with scaling only).
    move_noise: float = 0.0
    # Gripper DART noise: the probability, per step, that the executed gripper command is the
    # opposite of the expert's (the label stays the expert's). Move noise never closes the gripper
    # where the expert would not, so without it the data holds no "closed on nothing" state and
    # no dropped object: a cloned policy that closes early once keeps it closed and stops
    # (measured, README item 12). With it, the data shows the expert's recoveries: open and move
    # on, go back for a dropped object (at 0.1 it did not raise pick-2 success there).
    gripper_noise: float = 0.0
    # Probability that an episode's gripper starts over a random point of the table instead of
    # near the robot's base: approaches from every side (rt2edge.sim.tasks.check_start_anywhere).
    start_anywhere: float = 0.0
    # Counterfactual carries: each family with a destination is followed, in the cycle of
    # families, by an episode holding only the carry frames of an expert run (the object held)
    # labelled with the expert's action for another destination of the scene, under the
    # instruction that names it (rt2edge.sim.tasks.counterfactual_destinations). A policy cloned
    # from expert runs alone can carry without reading the destination (README item 15: its move
    # did not change with the destination's name); in these frames only the name tells the two
    # labels apart. Such episodes are marked `relabeled` and `success: false`.
    relabel_carry: bool = False
    max_attempts: int = 20
    fps: int = 10
    chunks_size: int = 1000

    def __post_init__(self) -> None:
        if not str(self.out):
            raise ConfigError("out", "must name an output folder")
        if not isinstance(self.episodes, int) or self.episodes < 1:
            raise ConfigError("episodes", f"must be an integer >= 1, got {self.episodes!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"must be an integer >= 0, got {self.seed!r}")
        if not 16 <= self.image_size <= 1024:
            raise ConfigError("image_size", f"must be in [16, 1024], got {self.image_size}")
        check_split(self.split)
        if self.families is not None:
            object.__setattr__(self, "families", check_families(self.families))
        object.__setattr__(self, "object_counts", check_object_counts(self.object_counts))
        if self.max_steps < 1:
            raise ConfigError("max_steps", f"must be >= 1, got {self.max_steps}")
        check_finite("action_noise", self.action_noise, 0.0, 1.0)
        check_finite("move_noise", self.move_noise, 0.0, 0.1)  # metres
        check_finite("gripper_noise", self.gripper_noise, 0.0, 0.5)
        object.__setattr__(self, "start_anywhere", check_start_anywhere(self.start_anywhere))
        if not isinstance(self.relabel_carry, bool):
            raise ConfigError("relabel_carry", f"must be true or false, got {self.relabel_carry!r}")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts", f"must be >= 1, got {self.max_attempts}")
        if self.fps < 1:
            raise ConfigError("fps", f"must be >= 1, got {self.fps}")
        if self.chunks_size < 1:
            raise ConfigError("chunks_size", f"must be >= 1, got {self.chunks_size}")

    def recipe(self) -> dict[str, Any]:
        d = asdict(self)
        d["families"] = list(check_families(self.families))
        d["object_counts"] = list(self.object_counts)
        return {k: d[k] for k in RECIPE_FIELDS}


@dataclass
class GenerateReport:
    out: str
    episodes: int
    frames: int
    generated: int  # episodes made by this run
    reused: int  # episodes found finished on disk
    attempts: int
    expert_success_rate: float
    per_family: dict[str, dict[str, float]] = field(default_factory=dict)
    bytes_per_frame: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def episode_seed(seed: int, episode_index: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, episode_index, attempt]).generate_state(1)[0])


def _check_recipe(root: Path, cfg: GenerateConfig) -> None:
    path = root / GENERATION_FILE
    if not path.exists():
        return
    old = json.loads(path.read_text())["recipe"]
    defaults = GenerateConfig(out="-", episodes=1).recipe()  # fields added after a dataset was made
    for key, value in cfg.recipe().items():
        recorded = old.get(key, defaults[key])
        if recorded != value:
            raise ConfigError(key, f"is {value!r} but the dataset in {root} was generated with "
                                   f"{recorded!r}; use the same value to resume, or a new --out")


def recipe_env(cfg: GenerateConfig) -> TabletopEnv:
    """The simulator a recipe's episodes run in."""
    return TabletopEnv(image_size=cfg.image_size, split=cfg.split, families=check_families(cfg.families),
                       max_steps=cfg.max_steps, object_counts=cfg.object_counts,
                       start_anywhere=cfg.start_anywhere)


def episode_plan(families: tuple[str, ...], relabel_carry: bool) -> list[tuple[str, bool]]:
    """The cycle episode i is drawn from: (family, relabeled) = plan[i % len(plan)]."""
    plan = []
    for family in families:
        plan.append((family, False))
        if relabel_carry and DESTINATIONS[family] is not None:
            plan.append((family, True))
    return plan


def _rollout(env: TabletopEnv, cfg: GenerateConfig, index: int, family: str, relabeled: bool = False):
    """Run the expert until one attempt succeeds. Returns (columns, info) or raises.

    relabeled: keep only the frames that hold the task's object, labelled with the expert's action
    for another destination (drawn per attempt; an attempt whose scene has none is retried)."""
    for attempt in range(cfg.max_attempts):
        seed = episode_seed(cfg.seed, index, attempt)
        obs, _ = env.reset(seed=seed, options={"family": family})
        noise = np.random.default_rng([cfg.seed, index, attempt, 1])
        labelled_task = env.task
        if relabeled:
            others = counterfactual_destinations(env.scene, env.task, cfg.split)
            if not others:
                continue
            labelled_task = others[int(np.random.default_rng([cfg.seed, index, attempt, 2]).integers(len(others)))]
        images, states, actions, successes = [], [], [], []
        while True:
            action = env.expert_action()
            keep = not relabeled or env.scene.held == env.task.target
            if keep:
                images.append(obs["image"])
                states.append(obs["state"])
                actions.append(expert_action(env.scene, labelled_task, env.max_step) if relabeled else action)
            executed = action.astype(np.float64)
            if action[7] < 0.5:  # a terminating step is executed as labelled
                executed = perturb_action(action, noise, cfg.action_noise, cfg.move_noise, cfg.gripper_noise)
            obs, _, terminated, truncated, info = env.step(executed)
            if keep:  # a relabeled carry never reaches its (other) destination
                successes.append(bool(info["success"]) and not relabeled)
            if terminated or truncated:
                break
        if terminated and info["success"] and actions:
            columns = {"images": np.stack(images), "states": np.stack(states),
                       "actions": np.stack(actions).astype(np.float32), "successes": successes}
            meta = {"seed": seed, "attempts": attempt + 1, "family": family,
                    "instruction": labelled_task.instruction, "template": env.task.template}
            if relabeled:
                meta["relabeled"] = True
            return columns, meta
    raise RuntimeError(
        f"the scripted expert failed {cfg.max_attempts} attempts in a row on episode {index} "
        f"({family!r}); this is a simulator bug, please report it with the seed {cfg.seed}")


def write_episode(path: Path, cfg: GenerateConfig, feats: dict[str, Any], index: int,
                  offset: int, task_index: int, columns: dict[str, Any],
                  meta: dict[str, Any]) -> dict[str, Any]:
    n = len(columns["actions"])
    record = {
        "episode_index": index, "tasks": [meta["instruction"]], "length": n,
        "success": meta.get("success", not meta.get("relabeled", False)),
        "family": meta["family"], "template": meta["template"], "seed": meta["seed"],
        "attempts": meta["attempts"], "task_index": task_index, "index_offset": offset,
        **{marker: True for marker in EPISODE_MARKERS if meta.get(marker)},
        **meta.get("record_extra", {}),
        "stats": {
            "action": lerobot.vector_stats(columns["actions"]),
            "observation.state": lerobot.vector_stats(columns["states"]),
            "image_moments": lerobot.image_moments(columns["images"]),
        },
    }
    table = lerobot.episode_table({
        IMAGE_KEY: [lerobot.encode_png(img) for img in columns["images"]],
        "observation.state": columns["states"],
        "action": columns["actions"],
        "timestamp": (np.arange(n) / cfg.fps).astype(np.float32),
        "frame_index": np.arange(n),
        "episode_index": np.full(n, index),
        "index": offset + np.arange(n),
        "task_index": np.full(n, task_index),
        "next.done": np.arange(n) == n - 1,
        "next.success": np.asarray(columns["successes"]),
    }, feats, record)
    atomic_write(path, lambda tmp: lerobot.write_table(table, tmp))
    return record


def generate(cfg: GenerateConfig,
             progress: Callable[[int, int], None] | None = None) -> GenerateReport:
    """Generate (or finish generating) `cfg.episodes` episodes under `cfg.out`."""
    start = time.perf_counter()
    root = Path(cfg.out)
    _check_recipe(root, cfg)
    root.mkdir(parents=True, exist_ok=True)
    remove_temporaries(root)
    atomic_write_json(root / GENERATION_FILE, {"recipe": cfg.recipe()})
    families = check_families(cfg.families)
    env = recipe_env(cfg)
    out = EpisodeLog(root, cfg, lerobot.features(cfg.image_size, STATE_NAMES, ACTION_NAMES))
    generated = 0
    plan = episode_plan(families, cfg.relabel_carry)
    for index in range(cfg.episodes):
        if out.path(index).exists():
            out.adopt(index)
        else:
            family, relabeled = plan[index % len(plan)]
            out.write(index, *_rollout(env, cfg, index, family, relabeled))
            generated += 1
        if progress is not None:
            progress(index + 1, cfg.episodes)
    report = finalize_dataset(root, cfg, out.feats, out.records, out.tasks)
    report.generated, report.reused = generated, cfg.episodes - generated
    report.seconds = time.perf_counter() - start
    return report


class EpisodeLog:
    """The output's episode records in index order, with the running frame offset and task table
    that every next episode's parquet file must agree with."""

    def __init__(self, root: Path, cfg: GenerateConfig, feats: dict[str, Any]):
        self.root, self.cfg, self.feats = root, cfg, feats
        self.tasks: dict[str, int] = {}
        self.records: list[dict[str, Any]] = []
        self.offset = 0

    def path(self, index: int, folder: Path | None = None) -> Path:
        return lerobot.episode_file(folder or self.root, index, self.cfg.chunks_size)

    def adopt(self, index: int) -> None:
        """Take the finished episode `index` (a file under root) after the ones taken so far."""
        path = self.path(index)
        record = lerobot.read_episode_record(path)
        task_index = self.tasks.setdefault(record["tasks"][0], len(self.tasks))
        if (record["episode_index"], record["index_offset"], record["task_index"]) != (
                index, self.offset, task_index):
            raise DatasetError(str(path), "does not fit the episodes before it; delete it (and later "
                                          "ones) to make them again")
        self._append(record)

    def write(self, index: int, columns: dict[str, Any], meta: dict[str, Any]) -> None:
        task_index = self.tasks.setdefault(meta["instruction"], len(self.tasks))
        self._append(write_episode(self.path(index), self.cfg, self.feats, index, self.offset,
                                   task_index, columns, meta))

    def _append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.offset += record["length"]


def finalize_dataset(root: Path, cfg: GenerateConfig, feats: dict[str, Any],
                     records: list[dict[str, Any]], tasks: dict[str, int],
                     provenance: dict[str, Any] | None = None) -> GenerateReport:
    """Write the meta files; info.json goes last, so its presence marks a complete dataset.
    provenance: more keys for meta/generation.json (e.g. the on-policy rounds)."""
    paths = [lerobot.episode_file(root, r["episode_index"], cfg.chunks_size) for r in records]
    actions = np.concatenate([lerobot.read_vectors(p, "action") for p in paths])
    states = np.concatenate([lerobot.read_vectors(p, "observation.state") for p in paths])
    frames = int(sum(r["length"] for r in records))
    stats = {
        IMAGE_KEY: lerobot.image_stats([r["stats"]["image_moments"] for r in records]),
        "observation.state": lerobot.vector_stats(states),
        "action": lerobot.vector_stats(actions),
    }
    by_index = sorted(tasks.items(), key=lambda kv: kv[1])
    atomic_write_jsonl(root / "meta/tasks.jsonl", ({"task_index": i, "task": t} for t, i in by_index))
    atomic_write_jsonl(root / "meta/episodes.jsonl", (
        {k: r[k] for k in ("episode_index", "tasks", "length", "success", "family", "template",
                           "seed", "attempts", *EPISODE_MARKERS, *ON_POLICY_FIELDS) if k in r} for r in records))
    atomic_write_jsonl(root / "meta/episodes_stats.jsonl", (
        {"episode_index": r["episode_index"], "stats": {
            "action": r["stats"]["action"], "observation.state": r["stats"]["observation.state"],
            IMAGE_KEY: lerobot.image_stats([r["stats"]["image_moments"]])}} for r in records))
    atomic_write_json(root / "meta/stats.json", stats)
    # what the expert was asked to do on its own
    expert_runs = [r for r in records if not any(r.get(m) for m in EPISODE_MARKERS)]
    attempts = int(sum(r["attempts"] for r in expert_runs))
    per_family: dict[str, dict[str, float]] = {}
    for fam in check_families(cfg.families):
        rows = [r for r in expert_runs if r["family"] == fam]
        tried = sum(r["attempts"] for r in rows)
        per_family[fam] = {"episodes": len(rows), "attempts": tried,
                           "success_rate": len(rows) / tried if tried else float("nan")}
    atomic_write_json(root / GENERATION_FILE, {
        "recipe": cfg.recipe(),
        "expert": {"episodes": len(expert_runs), "attempts": attempts,
                   "success_rate": len(expert_runs) / attempts, "per_family": per_family},
        "relabeled_episodes": sum(bool(r.get("relabeled")) for r in records),
        **(provenance or {}),
    })
    n_chunks = (cfg.episodes + cfg.chunks_size - 1) // cfg.chunks_size
    atomic_write_json(root / "meta/info.json", {
        "codebase_version": lerobot.CODEBASE_VERSION,
        "robot_type": lerobot.ROBOT_TYPE,
        "total_episodes": len(records),
        "total_frames": frames,
        "total_tasks": len(tasks),
        "total_videos": 0,
        "total_chunks": n_chunks,
        "chunks_size": cfg.chunks_size,
        "fps": cfg.fps,
        "splits": {"train": f"0:{len(records)}"},
        "data_path": DATA_PATH,
        "video_path": None,
        "features": feats,
    })
    data_bytes = sum(p.stat().st_size for p in paths)
    return GenerateReport(
        out=str(root), episodes=len(records), frames=frames, generated=0, reused=0,
        attempts=attempts, expert_success_rate=len(expert_runs) / attempts, per_family=per_family,
        bytes_per_frame=data_bytes / max(frames, 1),
    )
