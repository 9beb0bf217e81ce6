"""How well a policy's move direction fits a dataset's move labels, before and after the grasp
(research step for #3).

`rt2edge eval --expert-agreement` counts whole-action agreement per phase in closed loop; this
asks the narrower question of whether the policy has learnt *where to move* on frames it was
trained on. For every frame whose label moves in x / y it takes the cosine between the policy's
x / y move and the label's, split by the state's `holding` flag: "approach" (heading for the named
object) and "carry" (heading for its destination: a mat, a flag, the reference object). A policy
that has learnt a phase scores near 1 there; one that moves at random, near 0.

    python scripts/move_fit.py runs/all-r2 runs/data/tabletop-q-r2 --episodes 150 --threads 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ALIGNED_COS = 0.9  # "moves the label's way": within ~25 degrees


def move_fit(labels: np.ndarray, predicted: np.ndarray, holding: np.ndarray) -> dict[str, dict[str, float]]:
    """Per phase ("approach": not holding, "carry": holding) over the frames whose label moves in
    x / y (labels: (n, >= 2) actions; predicted: (n, >= 2) moves): frames, mean cosine of the
    predicted x / y move with the label's, and the fraction
    within ALIGNED_COS. A predicted move of zero has cosine 0."""
    label_xy, pred_xy = np.asarray(labels)[:, :2], np.asarray(predicted)[:, :2]
    label_norm, pred_norm = np.linalg.norm(label_xy, axis=1), np.linalg.norm(pred_xy, axis=1)
    moving = label_norm > 1e-9
    cos = np.zeros(len(label_xy))
    both = moving & (pred_norm > 1e-9)
    cos[both] = (label_xy[both] * pred_xy[both]).sum(axis=1) / (label_norm[both] * pred_norm[both])
    out = {}
    for phase, rows in (("approach", moving & ~holding), ("carry", moving & holding)):
        out[phase] = {"frames": int(rows.sum()),
                      "mean_cos": round(float(cos[rows].mean()), 3) if rows.any() else None,
                      "aligned": round(float((cos[rows] > ALIGNED_COS).mean()), 3) if rows.any() else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy", type=Path, help="a checkpoint or a deploy artifact")
    parser.add_argument("data", type=Path, help="a dataset folder (LeRobot layout) with a 'holding' state")
    parser.add_argument("--episodes", type=int, default=150, help="the first N episodes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.episodes < 1 or args.batch_size < 1:
        parser.error("--episodes and --batch-size must be >= 1")

    from rt2edge.data.dataset import EpisodeDataset
    from rt2edge.evaluation import load_policy
    from rt2edge.evaluation.policies import first_frame_moves

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    dataset = EpisodeDataset(args.data)
    names = dataset.state_names
    if "holding" not in names:
        parser.error(f"{args.data}: observation.state has no 'holding' (names: {names})")
    view = dataset.select_episodes(dataset.episode_indices[:args.episodes])
    images, instructions = view.load_images(), view.instructions
    predicted = first_frame_moves(load_policy(args.policy), images, instructions, args.batch_size)
    holding = view.states[:, names.index("holding")] > 0.5
    print(json.dumps({"policy": str(args.policy), "frames": len(images),
                      **move_fit(view.actions, predicted, holding)}))


if __name__ == "__main__":
    main()
