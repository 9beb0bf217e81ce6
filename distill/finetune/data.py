"""The two sources of co-fine-tuning and the torch Dataset that serves a planned batch.

Robot frames come from an `rt2edge.data.EpisodeDataset` (images stay PNG-encoded in memory and
are decoded on access); VQA samples are drawn once from the seeded `rt2edge.data.vqa_samples`
stream into a fixed pool, so a resumed run sees the same pool and `vqa_pool_size` fixes its size.
Items are returned raw (numpy + text): tokenization happens in the training loop through the
policy, which owns the prompt format and the action tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from distill.finetune.augment import ImageAugmentation
from distill.finetune.mixture import ROBOT, PlannedItem

VQA_QUESTIONS_PER_SCENE = 4  # several questions per rendered scene: 4x cheaper pool generation


@dataclass(frozen=True)
class VQAPool:
    images: np.ndarray  # uint8 (N, H, W, 3)
    questions: list[str]
    answers: list[str]

    def __len__(self) -> int:
        return len(self.questions)


def build_vqa_pool(size: int, seed: int, image_size: int) -> VQAPool:
    """`size` VQA samples about train-split scenes, rendered at the robot images' size."""
    from rt2edge.data import vqa_samples

    samples = list(vqa_samples(seed=seed, image_size=image_size, split="train",
                               questions_per_scene=VQA_QUESTIONS_PER_SCENE, limit=size))
    return VQAPool(images=np.stack([s.image for s in samples]),
                   questions=[s.question for s in samples], answers=[s.answer for s in samples])


@dataclass(frozen=True)
class RawItem:
    is_vqa: bool
    image: np.ndarray  # uint8 (H, W, 3), augmented
    text: str  # instruction (robot) or question (VQA)
    action: np.ndarray | None  # robot: (action_dim,) real units
    answer: str | None  # VQA
    index: int = -1  # position in its source: KD looks up a robot frame's teacher targets by it


class CoTrainingDataset:
    """Map-style dataset indexed by `PlannedItem` (what MixtureBatchSampler yields)."""

    def __init__(self, robot: Any, vqa: VQAPool | None, augmentation: ImageAugmentation | None):
        self.robot = robot
        self.vqa = vqa
        self.augmentation = augmentation

    def __getitem__(self, item: PlannedItem) -> RawItem:
        if item.source == ROBOT:
            frame = self.robot[item.index]
            image, text, action, answer = frame.image, frame.instruction, frame.action, None
        else:
            image, text = self.vqa.images[item.index], self.vqa.questions[item.index]
            action, answer = None, self.vqa.answers[item.index]
        if self.augmentation is not None:
            image = self.augmentation(image, item.aug_seed)
        return RawItem(item.source != ROBOT, np.ascontiguousarray(image), text, action, answer, item.index)


def collate_raw(items: Sequence[RawItem]) -> list[RawItem]:
    """Keep the items as they are: the policy turns them into tensors in the training loop."""
    return list(items)
