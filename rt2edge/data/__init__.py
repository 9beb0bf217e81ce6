"""Episode datasets (LeRobot layout) made with the built-in simulator, and VQA co-training data.

    rt2edge data generate --episodes 600 --out data/tabletop      # CLI
    ds = EpisodeDataset("data/tabletop"); frame = ds[0]; stats = ds.action_statistics()
    train, val = ds.split(val_fraction=0.1)
"""

from __future__ import annotations

from rt2edge.data.dataset import EpisodeDataset, Frame
from rt2edge.data.generate import GenerateConfig, GenerateReport, generate
from rt2edge.data.lerobot import DatasetError
from rt2edge.data.vqa import VQASample, vqa_samples

__all__ = ["DatasetError", "EpisodeDataset", "Frame", "GenerateConfig", "GenerateReport",
           "VQASample", "generate", "vqa_samples"]
