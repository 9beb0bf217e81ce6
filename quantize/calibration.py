"""Calibration / evaluation observations for the quantize stage: (image, instruction) pairs.

"sim": frames of the built-in tabletop simulator (a fresh seeded scene each, a few scripted-expert
steps in, so that frames show the gripper mid-task, not only initial scenes); otherwise the path of
an episode dataset, from which `n` frames are taken evenly across the whole dataset.
Deterministic for a given seed, so two runs compare on the same frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rt2edge.errors import ConfigError
from quantize.config import SIM_CALIBRATION
from quantize.registry import Observation

MAX_EXPERT_STEPS = 4


def sim_observations(n: int, image_size: int = 64, seed: int = 0) -> list[Observation]:
    from rt2edge.sim import TabletopEnv  # gymnasium: imported only when the simulator is used

    env = TabletopEnv(image_size=image_size, split="train")
    out = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        for _ in range(i % (MAX_EXPERT_STEPS + 1)):
            obs, _, terminated, truncated, _ = env.step(env.expert_action())
            if terminated or truncated:
                break
        out.append((np.ascontiguousarray(obs["image"]), env.instruction))
    return out


def dataset_observations(path: str | Path, n: int) -> list[Observation]:
    from rt2edge.data import EpisodeDataset

    dataset = EpisodeDataset(path)
    if len(dataset) == 0:
        raise ConfigError("calibration", f"dataset {str(path)!r} has no frames")
    rows = np.unique(np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int))
    frames = [dataset[int(i)] for i in rows]
    return [(f.image, f.instruction) for f in frames]


def calibration_observations(spec: str, n: int, image_size: int = 64, seed: int = 0) -> list[Observation]:
    """`spec` is "sim" or a dataset folder (QuantizeConfig.calibration)."""
    if spec == SIM_CALIBRATION:
        return sim_observations(n, image_size, seed)
    if not Path(spec).is_dir():
        raise ConfigError("calibration", f"{spec!r} is neither {SIM_CALIBRATION!r} nor a dataset folder")
    return dataset_observations(spec, n)
