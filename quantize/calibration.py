"""Calibration and held-out observations for the quantize stage: (image, instruction) pairs.

"sim": frames of the built-in tabletop simulator (a fresh seeded scene each, a few scripted-expert
steps in, so that frames show the gripper mid-task, not only initial scenes); otherwise the path of
an episode dataset, from which `n` frames are taken evenly across the whole dataset.
Deterministic for a given seed, so two runs compare on the same frames.

Held-out frames (what the fidelity report compares on) never overlap the calibration frames:
simulator scenes from another seed range (QuantizeConfig.holdout_seed), dataset rows that the
calibration did not take. Frames must have the policy's own image size: the runtime would resize
others, but a dataset recorded at another resolution is another camera setup, and ranges
calibrated on it describe inputs the robot never sends (`check_image_size`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

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


def _rows(length: int, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Up to n row indices spread evenly over [0, length), skipping `exclude`."""
    pool = np.arange(length) if exclude is None else np.setdiff1d(np.arange(length), exclude)
    if len(pool) == 0:
        return pool
    picks = np.linspace(0, len(pool) - 1, num=min(n, len(pool))).round().astype(int)
    return pool[np.unique(picks)]


def dataset_observations(path: str | Path, n: int, holdout: bool = False, calibration_n: int = 0
                         ) -> list[Observation]:
    """n frames of the dataset; `holdout`: frames other than the `calibration_n` calibration ones."""
    from rt2edge.data import EpisodeDataset

    dataset = EpisodeDataset(path)
    if len(dataset) == 0:
        raise ConfigError("calibration", f"dataset {str(path)!r} has no frames")
    rows = _rows(len(dataset), n, _rows(len(dataset), calibration_n) if holdout else None)
    if len(rows) == 0:
        raise ConfigError("holdout_frames", f"dataset {str(path)!r} has no frames left after the "
                                            f"{calibration_n} calibration frames")
    frames = [dataset[int(i)] for i in rows]
    return [(f.image, f.instruction) for f in frames]


def calibration_observations(spec: str, n: int, image_size: int = 64, seed: int = 0) -> list[Observation]:
    """`spec` is "sim" or a dataset folder (QuantizeConfig.calibration)."""
    if spec == SIM_CALIBRATION:
        return sim_observations(n, image_size, seed)
    if not Path(spec).is_dir():
        raise ConfigError("calibration", f"{spec!r} is neither {SIM_CALIBRATION!r} nor a dataset folder")
    return dataset_observations(spec, n)


def holdout_observations(spec: str, n: int, image_size: int, holdout_seed: int, calibration_n: int
                         ) -> list[Observation]:
    """Frames disjoint from `calibration_observations(spec, calibration_n, ...)`."""
    if spec == SIM_CALIBRATION:
        return sim_observations(n, image_size, holdout_seed)
    if not Path(spec).is_dir():
        raise ConfigError("calibration", f"{spec!r} is neither {SIM_CALIBRATION!r} nor a dataset folder")
    return dataset_observations(spec, n, holdout=True, calibration_n=calibration_n)


def check_image_size(observations: Sequence[Observation], size: int, field: str = "calibration") -> None:
    """Refuse frames that are not (size, size, 3): see the module docstring."""
    for i, (image, _) in enumerate(observations):
        if tuple(image.shape[:2]) != (size, size) or image.ndim != 3 or image.shape[2] != 3:
            raise ConfigError(field, f"frame {i} is {tuple(image.shape)}, the policy takes ({size}, {size}, 3) "
                                     "images; calibrate with frames of its own camera setup")
