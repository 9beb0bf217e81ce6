"""Dense, simulator-supervised pre-training of a preset's vision tower (research step for #3).

The action-class probe (scripts/vision_probe.py) gives a tower two labels per image; this gives
it one per patch, CenterNet-style, from the simulator's ground truth: for each of the 8 x 8
patches, which object (colour x shape) has its centre there and where inside the patch, which
landmark (a mat's colour, a flag's country: the destinations of four of the six families) has its
centre there, and whether the gripper is there (with its sub-patch offset, its height level and
whether it is closed). It is the simulator's stand-in for the detection/localization pre-training real VLM
towers get (PaliGemma's <loc> tokens): the patch tokens learn "what is here, exactly where",
which a pick-and-place policy needs and the action loss teaches slowly.

Frames are the steps of short expert rollouts with DART noise (so the gripper
is anywhere, open or holding), rendered by the project's own simulator; nothing is downloaded.

    python scripts/dense_vision_pretrain.py --preset student-s --frames 20000 --steps 2000 \
        --families pick --objects 2 --statistics runs/data/pick2-4k --save-init runs/init/dense
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rt2edge.models.presets import PRESETS
from rt2edge.sim import TabletopEnv
from rt2edge.sim.experts import perturb_action
from rt2edge.sim.world import COLOURS, COUNTRIES, SHAPES, START_Z

COLOUR_IDS = {c: i for i, c in enumerate(COLOURS)}
SHAPE_IDS = {s: i for i, s in enumerate(SHAPES)}
OBJECT_CLASSES = 1 + len(COLOURS) * len(SHAPES)  # 0: no object centre in this patch
COUNTRY_IDS = {c: i for i, c in enumerate(COUNTRIES)}
# 0: no landmark centre in this patch; then the mats by colour, then the flags by country: the
# destinations of move_to_mat / move_to_flag. The tower finds them easily (recall 0.99), and the
# policies built on it carry no better (README item 14): what is slow to learn is in the decoder.
LANDMARK_CLASSES = 1 + len(COLOURS) + len(COUNTRIES)


GRIPPER_STATES = 4  # (low, high) x (open, closed)


def patch_of(x: float, y: float, grid: int) -> tuple[int, float, float]:
    """Table (x, y) -> (patch index in raster order, offset inside the patch in [-0.5, 0.5])."""
    col_f, row_f = (x + 0.5) * grid, (0.5 - y) * grid  # image rows grow downwards
    col, row = min(int(col_f), grid - 1), min(int(row_f), grid - 1)
    return row * grid + col, col_f - col - 0.5, row_f - row - 0.5


DART_NOISE_M = 0.04  # metres of noise on each executed move: the gripper visits off-expert states


def noisy_expert_step(env: TabletopEnv, rng: np.random.Generator, move_noise: float = DART_NOISE_M) -> dict:
    """One step of the expert's move plus DART noise (never terminating); the new observation."""
    action = perturb_action(env.expert_action(), rng, additive=move_noise)
    action[7] = 0.0
    return env.step(action)[0]


MIN_STEPS = 3  # OneCycleLR divides by zero when either phase is empty: 2 steps are too few


def one_cycle(optimizer: torch.optim.Optimizer, lr: float, steps: int):
    """OneCycleLR with 5% warm-up, at least 2 steps of it (with fewer, OneCycleLR divides by zero)."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=max(0.05, 2 / steps))


def make_frames(n: int, image_size: int, grid: int, families, objects, seed: int):
    """Render n frames with dense labels: objects (n, P) class, offsets (n, P, 2), landmarks (n, P)
    class, gripper (n,) patch, gripper offset (n, 2), gripper state (n,): height level + 2 x closed."""
    env = TabletopEnv(image_size=image_size, families=families, object_counts=objects)
    rng = np.random.default_rng(seed)
    images = np.zeros((n, image_size, image_size, 3), np.uint8)
    obj_cls = np.zeros((n, grid * grid), np.int64)
    obj_off = np.zeros((n, grid * grid, 2), np.float32)
    landmark = np.zeros((n, grid * grid), np.int64)
    grip = np.zeros(n, np.int64)
    grip_off = np.zeros((n, 2), np.float32)
    grip_state = np.zeros(n, np.int64)
    i = 0
    while i < n:  # every step of a noisy expert rollout is a frame: resets cost most of the time
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        for _ in range(int(rng.integers(1, 16))):
            if i == n:
                break
            images[i] = obs["image"]
            for obj in env.scene.objects:
                p, dx, dy = patch_of(obj.x, obj.y, grid)
                obj_cls[i, p] = 1 + COLOUR_IDS[obj.colour] * len(SHAPES) + SHAPE_IDS[obj.shape]
                obj_off[i, p] = (dx, dy)
            for mat in env.scene.mats:
                landmark[i, patch_of(mat.x, mat.y, grid)[0]] = 1 + COLOUR_IDS[mat.colour]
            for flag in env.scene.flags:
                landmark[i, patch_of(flag.x, flag.y, grid)[0]] = 1 + len(COLOURS) + COUNTRY_IDS[flag.country]
            ex, ey, ez = env.scene.ee
            grip[i], *offset = patch_of(ex, ey, grid)
            grip_off[i] = offset
            # Open or closed decides between the grasp frame (close) and the hold frame (lift); a
            # policy that cannot tell them holds the object at grasp height forever (README item 12;
            # the renderer drew them nearly alike until item 13's fix).
            grip_state[i] = int(ez > START_Z / 2) + 2 * int(env.scene.gripper_closed)
            i += 1
            obs = noisy_expert_step(env, rng)
    return images, obj_cls, obj_off, landmark, grip, grip_off, grip_state


class DenseHeads(nn.Module):
    """Per patch: object class, object offset, gripper-here logit, gripper offset, gripper state,
    and with `landmarks` the landmark class (off: the layer, its initialization and so every figure
    of the runs before item 14 are as they were)."""

    def __init__(self, tower: nn.Module, width: int, landmarks: bool = False):
        super().__init__()
        self.tower = tower
        self.out = nn.Linear(width, OBJECT_CLASSES + 2 + 1 + 2 + GRIPPER_STATES
                             + (LANDMARK_CLASSES if landmarks else 0))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.out(self.tower(pixel_values=pixels).last_hidden_state)  # (B, P, outputs)


def heads(pred: torch.Tensor, grip: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """DenseHeads' output split into (object logits, object offsets) per patch, (gripper-here
    logits over patches, gripper offset, gripper-state logits) read at the gripper's patch, and
    landmark logits per patch (None without the landmark head)."""
    k = OBJECT_CLASSES
    at_grip = pred[torch.arange(len(pred)), grip]
    landmark = pred[..., k + 5 + GRIPPER_STATES:]
    return (pred[..., :k], pred[..., k:k + 2], pred[..., k + 2], at_grip[:, k + 3:k + 5],
            at_grip[:, k + 5:k + 5 + GRIPPER_STATES], landmark if landmark.shape[-1] else None)


def _sparse_class_loss(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per-patch cross-entropy; centres sit in a few of the patches: weight them up or "nothing
    here" wins for long."""
    return (nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), classes.reshape(-1),
                                        reduction="none") * (1 + 9 * (classes > 0).reshape(-1))).mean()


def _recall(logits: torch.Tensor, classes: torch.Tensor) -> float:
    present = classes > 0
    return float((logits.argmax(-1)[present] == classes[present]).float().mean())


def losses(pred: torch.Tensor, obj_cls, obj_off, landmark, grip, grip_off, grip_state) -> dict[str, torch.Tensor]:
    obj_logits, obj_pos, grip_logits, grip_pos, state_logits, landmark_logits = heads(pred, grip)
    has_obj = obj_cls > 0
    parts = {"object": _sparse_class_loss(obj_logits, obj_cls)}
    if landmark_logits is not None:  # second, as in the run of item 14 (the sum's order)
        parts["landmark"] = _sparse_class_loss(landmark_logits, landmark)
    return {
        **parts,
        "object_offset": nn.functional.l1_loss(obj_pos[has_obj], obj_off[has_obj]),
        "gripper": nn.functional.cross_entropy(grip_logits, grip),  # softmax over patches
        "gripper_offset": nn.functional.l1_loss(grip_pos, grip_off),
        "gripper_state": nn.functional.cross_entropy(state_logits, grip_state),
    }


def metrics(pred: torch.Tensor, obj_cls, obj_off, landmark, grip, grip_off, grip_state,
            patch_px: int) -> dict[str, float]:
    obj_logits, obj_pos, grip_logits, grip_pos, state_logits, landmark_logits = heads(pred, grip)
    has_obj = obj_cls > 0
    return {
        "object_recall": _recall(obj_logits, obj_cls),
        **({"landmark_recall": _recall(landmark_logits, landmark)} if landmark_logits is not None else {}),
        "object_offset_px": float((obj_pos[has_obj] - obj_off[has_obj]).abs().mean() * patch_px),
        "gripper_patch": float((grip_logits.argmax(-1) == grip).float().mean()),
        "gripper_offset_px": float((grip_pos - grip_off).abs().mean() * patch_px),
        "gripper_state": float((state_logits.argmax(-1) == grip_state).float().mean()),
        "gripper_closed": float(((state_logits.argmax(-1) >= 2) == (grip_state >= 2)).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="student-s", choices=sorted(PRESETS))
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--families", default=None, help="comma-separated (default: all)")
    parser.add_argument("--objects", default="3,4")
    parser.add_argument("--landmarks", action="store_true",
                        help="also label each patch holding a mat's or a flag's centre (README item 14)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--statistics", type=Path, default=None,
                        help="dataset whose action statistics the saved policy uses")
    parser.add_argument("--save-init", type=Path, default=None)
    args = parser.parse_args()
    if args.steps < MIN_STEPS:
        parser.error(f"--steps must be >= {MIN_STEPS} (the one-cycle schedule needs a warm-up and a decay step)")
    if (args.save_init is None) != (args.statistics is None):
        parser.error("--save-init and --statistics go together")

    from vision_probe import build_vit, save_init  # scripts/ is on sys.path when run as a script

    torch.manual_seed(args.seed)
    _, tower = build_vit(args.preset)
    size = PRESETS[args.preset].size
    grid = size.image_size // size.patch_size
    families = None if args.families is None else tuple(args.families.split(","))
    objects = tuple(int(o) for o in args.objects.split(","))
    start = time.perf_counter()
    arrays = make_frames(args.frames, size.image_size, grid, families, objects, args.seed)
    images = torch.from_numpy(arrays[0]).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # SigLIP's [-1, 1]
    labels = [torch.from_numpy(a) for a in arrays[1:]]
    print(json.dumps({"frames": args.frames, "render_s": round(time.perf_counter() - start, 1)}), flush=True)

    val = np.arange(len(images)) % 10 == 0
    train_rows, val_rows = np.flatnonzero(~val), np.flatnonzero(val)[:1000]
    model = DenseHeads(tower, size.vision_hidden_size, landmarks=args.landmarks)
    optimizer = torch.optim.AdamW(model.parameters(), args.lr)
    schedule = one_cycle(optimizer, args.lr, args.steps)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = rng.choice(train_rows, args.batch_size)
        parts = losses(model(images[batch]), *(t[batch] for t in labels))
        loss = sum(parts.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                scores = metrics(model(images[val_rows]), *(t[val_rows] for t in labels),
                                 patch_px=size.patch_size)
            model.train()
            print(json.dumps({"step": step, "loss": round(loss.item(), 4),
                              **{k: round(v, 3) for k, v in scores.items()},
                              "elapsed_s": round(time.perf_counter() - start, 1)}), flush=True)
    if args.save_init is not None:
        from rt2edge.data.dataset import EpisodeDataset

        statistics = {args.statistics.resolve().name: EpisodeDataset(args.statistics).action_statistics()}
        save_init(args.preset, tower, statistics, args.save_init, args.seed)


if __name__ == "__main__":
    main()
