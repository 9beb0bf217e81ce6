"""Which robot frames and VQA samples form each training step's batch (RT-2 co-fine-tuning).

The plan is a pure function of (seed, step): no iterator state to save, so a resumed run draws
exactly the batches the uninterrupted run would have drawn, and "data position" is the step.

- Ratio: step k holds floor((k+1) r B) - floor(k r B) VQA samples, r = vqa_ratio, B = batch size.
  Over any K consecutive steps the VQA share is r to within 1/(K B), and every batch size works
  (B = 2, r = 0.25 alternates 0 and 1 VQA samples), with no randomness in the count.
- Order: each source is read as an endless stream of per-epoch permutations (sampling without
  replacement, like a shuffled DataLoader); item p of a stream is permutation(epoch = p // N)[p % N].
- Each item carries its own augmentation seed, so augmentations replay identically on resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import numpy as np

ROBOT = 0  # source ids, part of every planned item
VQA = 1


@dataclass(frozen=True)
class PlannedItem:
    source: int  # ROBOT or VQA
    index: int  # index into that source
    aug_seed: int  # seed of this item's augmentation


class CoTrainingMixture:
    """step -> the global batch of that step, as a list of PlannedItem (robot and VQA interleaved)."""

    def __init__(self, num_robot: int, num_vqa: int, batch_size: int, vqa_ratio: float, seed: int):
        if num_robot < 1:
            raise ValueError("the robot dataset has no frames")
        if vqa_ratio > 0 and num_vqa < 1:
            raise ValueError("vqa_ratio > 0 but there are no VQA samples")
        self.num_robot = num_robot
        self.num_vqa = num_vqa
        self.batch_size = batch_size
        # An exact fraction keeps floor(k r B) free of float drift over millions of steps.
        self.vqa_per_step = Fraction(vqa_ratio).limit_denominator(1_000_000) * batch_size
        self.seed = seed
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def vqa_count_before(self, step: int) -> int:
        """VQA samples in steps [0, step)."""
        return int(self.vqa_per_step * step) if self.vqa_per_step else 0  # int() floors a Fraction >= 0

    def counts(self, step: int) -> tuple[int, int]:
        """(robot, vqa) sample counts of step `step`."""
        vqa = self.vqa_count_before(step + 1) - self.vqa_count_before(step)
        return self.batch_size - vqa, vqa

    def plan(self, step: int) -> list[PlannedItem]:
        n_robot, n_vqa = self.counts(step)
        robot_start = step * self.batch_size - self.vqa_count_before(step)
        vqa_start = self.vqa_count_before(step)
        items = [PlannedItem(ROBOT, self._stream(ROBOT, self.num_robot, robot_start + i), 0)
                 for i in range(n_robot)]
        items += [PlannedItem(VQA, self._stream(VQA, self.num_vqa, vqa_start + i), 0)
                  for i in range(n_vqa)]
        rng = np.random.default_rng([self.seed, 2, step])
        # Interleave, so that when accelerate splits the global batch across processes every
        # process gets its share of both sources.
        order = rng.permutation(len(items))
        aug_seeds = rng.integers(0, 2**63 - 1, size=len(items))
        return [PlannedItem(items[j].source, items[j].index, int(s)) for j, s in zip(order, aug_seeds)]

    def _stream(self, source: int, size: int, position: int) -> int:
        epoch, offset = divmod(position, size)
        key = (source, epoch)
        perm = self._perm_cache.get(key)
        if perm is None:
            if len(self._perm_cache) > 8:  # only the current epoch of each source is hot
                self._perm_cache.clear()
            perm = np.random.default_rng([self.seed, source, epoch]).permutation(size)
            self._perm_cache[key] = perm
        return int(perm[offset])


class MixtureBatchSampler:
    """A DataLoader `batch_sampler` over steps [start_step, end_step) of a CoTrainingMixture.

    Yields each step's global batch; under `accelerate` with `split_batches=True` every process
    receives its slice. Resuming at step k builds the sampler with start_step=k.
    """

    def __init__(self, mixture: CoTrainingMixture, start_step: int, end_step: int):
        self.mixture = mixture
        self.batch_size = mixture.batch_size  # accelerate's split_batches reads it
        self.drop_last = False
        self.start_step = start_step
        self.end_step = end_step

    def __iter__(self) -> Iterator[list[PlannedItem]]:
        for step in range(self.start_step, self.end_step):
            yield self.mixture.plan(step)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)
