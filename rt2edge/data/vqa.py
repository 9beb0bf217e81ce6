"""VQA co-training source: (image, question, answer) about simulator scenes (RT-2 co-training).

Scenes come from the same task sampler as the episodes and are caught mid-episode (the expert
runs a random number of steps first), so questions about the gripper and held objects have both
answers. Answers are computed from the scene state (rt2edge.sim.questions), never from pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from rt2edge.errors import ConfigError
from rt2edge.sim import TabletopEnv, scene_questions


@dataclass(frozen=True)
class VQASample:
    image: np.ndarray  # uint8 (H, W, 3)
    question: str
    answer: str
    kind: str  # question family, e.g. "count_shape", "flag_position"


def vqa_samples(seed: int = 0, image_size: int = 64, split: str = "train",
                questions_per_scene: int = 1, max_expert_steps: int = 12,
                limit: int | None = None) -> Iterator[VQASample]:
    """Seeded stream of VQA samples (infinite unless `limit`). The same arguments give the same
    stream. Question kinds are drawn uniformly first, so rare kinds are not drowned out by
    frequent ones (every scene has several `on_mat` questions but one `count_objects`)."""
    if questions_per_scene < 1:
        raise ConfigError("questions_per_scene", f"must be >= 1, got {questions_per_scene}")
    if max_expert_steps < 0:
        raise ConfigError("max_expert_steps", f"must be >= 0, got {max_expert_steps}")
    if limit is not None and limit < 0:
        raise ConfigError("limit", f"must be >= 0, got {limit}")
    env = TabletopEnv(image_size=image_size, split=split)
    produced, scene_index = 0, 0
    while limit is None or produced < limit:
        rng = np.random.default_rng([seed, scene_index])
        scene_index += 1
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        for _ in range(int(rng.integers(0, max_expert_steps + 1))):
            obs, _, terminated, truncated, _ = env.step(env.expert_action())
            if terminated or truncated:
                break
        by_kind: dict[str, list] = {}
        for q in scene_questions(env.scene):
            by_kind.setdefault(q.kind, []).append(q)
        kinds = sorted(by_kind)
        for _ in range(questions_per_scene):
            if limit is not None and produced >= limit:
                return
            options = by_kind[kinds[int(rng.integers(len(kinds)))]]
            q = options[int(rng.integers(len(options)))]
            yield VQASample(image=obs["image"].copy(), question=q.question, answer=q.answer,
                            kind=q.kind)
            produced += 1
