"""Real observations for the control loop: frames of the built-in tabletop simulator.

A benchmark on blank or random images can flatter a runtime (constant inputs, one cached prompt);
these are the frames a policy sees in closed loop: short runs of consecutive expert steps from
episodes of every task family (the arm moves, objects get held), each under its episode's
instruction. A robot holds one instruction for a whole episode, and the runtime caches what
depends on the text alone (its embeddings; an instruction-first prompt's text keys/values), so
the stream changes instruction every `STEPS_PER_EPISODE` frames: far sooner than any real
episode, so a cache is credited less than a control loop gives it, while 16 frames still cover
all six families. (With fewer than 3 instructions in the stream, the timing loop, which cycles
it, hits the runtime's 2-instruction prefix cache on every act after the first pass.)
"""

from __future__ import annotations

import numpy as np

from rt2edge.errors import ConfigError

OBSERVATION_STREAM = 0xBE7C  # salts the seeds: bench frames never replay training or eval scenes
STREAM_VERSION = 2  # 1: one frame per episode, 0-5 expert steps in; 2: runs of 3 consecutive steps
STEPS_PER_EPISODE = 3  # frames taken per episode (fewer when the expert finishes sooner)
MAX_START_STEPS = 3  # episode e starts its run (e mod 4) expert steps in: the arm away from home


def simulator_observations(frames: int, image_size: int = 64, seed: int = 0,
                           split: str = "train") -> list[tuple[np.ndarray, str]]:
    """`frames` (image uint8 (S, S, 3), instruction) pairs: for episode e = 0, 1, ... (seeded from
    (seed, e), families round-robin) the scripted expert takes e mod 4 steps, then up to
    STEPS_PER_EPISODE consecutive frames are recorded. Deterministic."""
    if frames < 1:
        raise ConfigError("frames", f"must be >= 1, got {frames}")
    from rt2edge.sim import TabletopEnv  # gymnasium: only when a benchmark runs

    env = TabletopEnv(image_size=image_size, split=split)
    families = list(env.sampler.families)
    out: list[tuple[np.ndarray, str]] = []
    episode = 0
    while len(out) < frames:
        episode_seed = int(np.random.SeedSequence([OBSERVATION_STREAM, seed, episode]).generate_state(1)[0])
        obs, _ = env.reset(seed=episode_seed, options={"family": families[episode % len(families)]})
        first = episode % (MAX_START_STEPS + 1)
        for step in range(first + min(STEPS_PER_EPISODE, frames - len(out))):
            if step:
                obs, _, terminated, truncated, _ = env.step(env.expert_action())
                if terminated or truncated:  # a short task: the next episode takes over
                    break
            if step >= first:
                out.append((np.ascontiguousarray(obs["image"]), env.instruction))
        episode += 1
    return out


def describe(observations: list[tuple[np.ndarray, str]], image_size: int, seed: int) -> dict:
    return {"source": "rt2edge.sim.TabletopEnv (train split, expert-stepped frames)",
            "stream_version": STREAM_VERSION, "steps_per_episode": STEPS_PER_EPISODE,
            "frames": len(observations), "image_size": image_size, "seed": seed,
            "instructions": len({text for _, text in observations})}
