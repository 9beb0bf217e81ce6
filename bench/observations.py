"""Real observations for the control loop: frames of the built-in tabletop simulator.

A benchmark on blank or random images can flatter a runtime (constant inputs, one cached prompt);
these are the frames a policy sees in closed loop: consecutive expert steps of episodes of every
task family (the arm moves, objects get held), each episode under its own instruction. A robot
holds one instruction for a whole episode, and the runtime caches per instruction what depends on
the text alone (its embeddings; an instruction-first prompt's text keys/values), so the stream
changes instruction every `STEPS_PER_EPISODE` frames: fewer frames than any task takes, so a
cache is credited no more than a real control loop gives it.
"""

from __future__ import annotations

import numpy as np

from rt2edge.errors import ConfigError

OBSERVATION_STREAM = 0xBE7C  # salts the seeds: bench frames never replay training or eval scenes
STEPS_PER_EPISODE = 6  # frames per episode (fewer when the expert finishes sooner)


def simulator_observations(frames: int, image_size: int = 64, seed: int = 0,
                           split: str = "train") -> list[tuple[np.ndarray, str]]:
    """`frames` (image uint8 (S, S, 3), instruction) pairs: steps 0..5 of consecutive episodes
    (episode e seeded from (seed, e), families round-robin), driven by the scripted expert; an
    episode the expert finishes sooner gives fewer. Deterministic."""
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
        for step in range(min(STEPS_PER_EPISODE, frames - len(out))):
            if step:
                obs, _, terminated, truncated, _ = env.step(env.expert_action())
                if terminated or truncated:  # a short task: the next episode takes over
                    break
            out.append((np.ascontiguousarray(obs["image"]), env.instruction))
        episode += 1
    return out


def describe(observations: list[tuple[np.ndarray, str]], image_size: int, seed: int) -> dict:
    return {"source": "rt2edge.sim.TabletopEnv (train split, expert-stepped frames)",
            "frames": len(observations), "image_size": image_size, "seed": seed,
            "instructions": len({text for _, text in observations})}
