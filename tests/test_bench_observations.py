"""The bench's control-loop frames: consecutive expert steps of episodes, one instruction each."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench.observations import STEPS_PER_EPISODE, describe, simulator_observations
from rt2edge.errors import ConfigError


def test_frames_come_in_episodes_under_one_instruction():
    frames = simulator_observations(20, seed=3)
    assert len(frames) == 20 and all(image.shape == (64, 64, 3) and image.dtype == np.uint8 for image, _ in frames)
    runs = [len(list(group)) for _, group in itertools.groupby(text for _, text in frames)]
    # a robot holds its instruction for an episode: the stream changes it every few frames, not
    # every frame (runs of 3 unless the expert finishes sooner, the last one cut at 20)
    assert max(runs) == STEPS_PER_EPISODE and sum(r == STEPS_PER_EPISODE for r in runs) >= 5
    first = [image for image, _ in frames[:STEPS_PER_EPISODE]]
    assert all(np.any(a != b) for a, b in zip(first, first[1:]))  # the arm moves between steps
    assert describe(frames, 64, 3)["instructions"] == len(runs) and describe(frames, 64, 3)["stream_version"] == 2
    again = simulator_observations(20, seed=3)
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(frames, again))
    other = simulator_observations(20, seed=4)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(frames, other))


def test_frame_count_is_checked():
    with pytest.raises(ConfigError, match="frames"):
        simulator_observations(0)


def test_sixteen_frames_cover_every_task_family():
    """Episodes take the families round-robin: 16 frames in runs of 3 are 6 episodes, one each."""
    frames = simulator_observations(16, seed=0)
    assert len({text for _, text in frames}) == 6
