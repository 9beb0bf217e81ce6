"""Can a vision tower see where to move? A research probe for the default-teacher problem (#3).

Trains a vision model alone, image -> the expert's x / y move (5 classes each on the simulator's
half-step grid: 0, +-0.05, +-0.1 m), on an `rt2edge data generate` dataset, and prints held-out
accuracy (10% of the episodes) every 100 steps. The instruction is not given, so the accuracy
has a ceiling below 100% whenever the scene has more than one candidate object.

    --arch vit   the preset's own SigLIP tower (same config as in the VLM), read out by two
                 learned queries; --save-init DIR then writes a fresh preset policy (with the
                 dataset's action statistics) whose vision tower holds these weights, for
                 `rt2edge distill finetune --init DIR` (vision pretraining before co-fine-tuning).
    --arch cnn   a 3-layer conv net: what a convolutional inductive bias buys on the same data.

    python scripts/vision_probe.py runs/data/pick2 --arch vit --preset student-s --steps 800 \
        --lr 1e-3 --save-init runs/init/student-s-vit
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rt2edge.data.dataset import EpisodeDataset
from rt2edge.models.presets import PRESETS, build_preset
from rt2edge.sim.world import MAX_STEP

CLASSES = 5  # -2..2 half steps


def half_step_classes(actions: np.ndarray) -> np.ndarray:
    """(N, >=2) actions in metres -> (N, 2) x / y class indices 0..4."""
    steps = np.rint(actions[:, :2] / (MAX_STEP / 2)).astype(np.int64)
    return np.clip(steps, -2, 2) + 2


class QueryReadout(nn.Module):
    """Two learned queries (x, y) attend over the tower's patch features."""

    def __init__(self, tower: nn.Module, width: int, heads: int):
        super().__init__()
        self.tower = tower
        self.queries = nn.Parameter(torch.randn(2, width) * 0.02)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = nn.Linear(width, CLASSES)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.tower(pixel_values=pixels).last_hidden_state
        read, _ = self.attention(self.queries.expand(len(pixels), -1, -1), patches, patches)
        return self.out(read)  # (B, 2, CLASSES)


class ConvProbe(nn.Module):
    def __init__(self, image_size: int):
        super().__init__()
        layers, channels = [], 3
        for width in (32, 64, 64):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        side = image_size // 8
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * side * side, 256), nn.ReLU(),
                                 nn.Linear(256, 2 * CLASSES))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels).view(len(pixels), 2, CLASSES)


def build_vit(preset: str) -> tuple[QueryReadout, nn.Module]:
    from transformers import SiglipVisionModel

    from rt2edge.models.families import VISION_TOWERS

    size = PRESETS[preset].size
    tower = SiglipVisionModel(VISION_TOWERS[size.vision_tower](size))
    return QueryReadout(tower, size.vision_hidden_size, size.vision_heads), tower


def save_init(preset: str, tower: nn.Module, statistics: dict, out: Path, seed: int) -> None:
    """A fresh preset policy ({dataset name: its action statistics}) whose vision tower is `tower`."""
    policy = build_preset(preset, statistics=statistics, seed=seed)
    policy.model.model.vision_tower.load_state_dict(tower.state_dict())
    policy.save_pretrained(out)
    print(json.dumps({"saved_init": str(out)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--arch", choices=("vit", "cnn"), default="vit")
    parser.add_argument("--preset", default="student-s", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-init", type=Path, default=None)
    args = parser.parse_args()
    if args.save_init is not None and args.arch != "vit":
        parser.error("--save-init needs --arch vit (the VLM's tower)")

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = EpisodeDataset(args.data)
    images = torch.from_numpy(data.load_images()).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # SigLIP's [-1, 1]
    labels = torch.from_numpy(half_step_classes(data.actions))
    held_out = data.episode_index % 10 == 0
    train_rows, val_rows = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    model, tower = build_vit(args.preset) if args.arch == "vit" else (ConvProbe(images.shape[-1]), None)
    optimizer = torch.optim.AdamW(model.parameters(), args.lr)
    marginal = [float(np.bincount(labels[val_rows, d].numpy()).max() / len(val_rows)) for d in (0, 1)]
    print(json.dumps({"frames": len(data), "val_frames": len(val_rows), "majority_class_xy": marginal}))

    def val_accuracy() -> list[float]:
        model.eval()
        with torch.no_grad():
            preds = torch.cat([model(images[val_rows[i:i + 256]]).argmax(-1) for i in range(0, len(val_rows), 256)])
        model.train()
        return [round(float(a), 4) for a in (preds == labels[val_rows]).float().mean(0)]

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = rng.choice(train_rows, args.batch_size)
        loss = nn.functional.cross_entropy(model(images[batch]).reshape(-1, CLASSES), labels[batch].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4), "val_accuracy_xy": val_accuracy(),
                              "elapsed_s": round(time.perf_counter() - start, 1)}), flush=True)

    if args.save_init is not None:
        statistics = {args.data.resolve().name: data.action_statistics()}
        save_init(args.preset, tower, statistics, args.save_init, args.seed)


if __name__ == "__main__":
    main()
