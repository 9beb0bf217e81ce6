"""Real observations for the control loop: frames of the built-in tabletop simulator.

A benchmark on blank or random images can flatter a runtime (constant inputs, one cached prompt);
these are the frames a policy sees in closed loop: scenes of every task family, each a few expert
steps into its episode (the arm has moved, objects may be held), with their instructions.
"""

from __future__ import annotations

import numpy as np

from rt2edge.errors import ConfigError

OBSERVATION_STREAM = 0xBE7C  # salts the seeds: bench frames never replay training or eval scenes


def simulator_observations(frames: int, image_size: int = 64, seed: int = 0,
                           split: str = "train") -> list[tuple[np.ndarray, str]]:
    """`frames` (image uint8 (S, S, 3), instruction) pairs; episode i is seeded from (seed, i) and
    stepped 0..5 expert actions (i mod 6) before its frame is taken. Deterministic."""
    if frames < 1:
        raise ConfigError("frames", f"must be >= 1, got {frames}")
    from rt2edge.sim import TabletopEnv  # gymnasium: only when a benchmark runs

    env = TabletopEnv(image_size=image_size, split=split)
    families = list(env.sampler.families)
    out: list[tuple[np.ndarray, str]] = []
    for i in range(frames):
        episode_seed = int(np.random.SeedSequence([OBSERVATION_STREAM, seed, i]).generate_state(1)[0])
        obs, _ = env.reset(seed=episode_seed, options={"family": families[i % len(families)]})
        for _ in range(i % 6):
            obs, _, terminated, truncated, _ = env.step(env.expert_action())
            if terminated or truncated:
                break
        out.append((np.ascontiguousarray(obs["image"]), env.instruction))
    return out


def describe(observations: list[tuple[np.ndarray, str]], image_size: int, seed: int) -> dict:
    return {"source": "rt2edge.sim.TabletopEnv (train split, expert-stepped frames)",
            "frames": len(observations), "image_size": image_size, "seed": seed,
            "instructions": len({text for _, text in observations})}
