"""Language-grounding pre-training of a whole VLA policy on simulator frames (research step for #3).

Every policy trained on the built-in data so far is language-blind (`rt2edge eval --language-probe`:
it heads for the named object in ~50% of asks): the action loss alone does not teach it to bind
"the yellow sphere" to the yellow sphere in ~10,000 steps on a CPU. This adds the referring-expression
signal real VLMs get before robot data (PaliGemma's detection / referring pre-training), from the
simulator's ground truth: besides the action tokens, a pointer head is trained to say which of the
8 x 8 image patches holds the centre of the object the instruction names.

Where the pointer reads:
  image  the decoder's last hidden state at each image token (one logit per patch). The image
         tokens must see the instruction: a prefix-LM (PaliGemma family) or a LLaVA-style model
         whose prompt puts the instruction first (`PromptFormat.instruction_first`).
  last   the last prompt position (the one that predicts the first action token), 64-way; any layout.

Frames are the pre-grasp steps of short expert rollouts with DART noise (the gripper anywhere, the
named object not yet held), rendered by the project's own simulator; nothing is downloaded. The
language probe (`rt2edge eval --language-probe`, seen instructions on scenes it never trained on)
is the metric. The pointer head is dropped when saving: the
output is a plain checkpoint for `rt2edge distill finetune --init`.

    python scripts/grounding_pretrain.py --init runs/init/dense-pick2 --out runs/init/grounded \\
        --instruction-first --steps 2000 --families pick --objects 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dense_vision_pretrain import MIN_STEPS, noisy_expert_step, one_cycle, patch_of  # scripts/ is on sys.path
from rt2edge.evaluation import VLAPolicyAdapter, probe_language
from rt2edge.models import VLAPolicy
from rt2edge.sim import TabletopEnv

class FrameSource:
    """Pre-grasp frames of noisy expert rollouts: (images, instructions, expert actions, patches)."""

    def __init__(self, families, objects, image_size: int, grid: int, seed: int):
        self.env = TabletopEnv(image_size=image_size, families=families, object_counts=objects)
        self.grid = grid
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int):
        images, texts, actions, patches = [], [], [], []
        while len(images) < n:
            obs, _ = self.env.reset(seed=int(self.rng.integers(2**31)))
            for _ in range(int(self.rng.integers(0, 6))):  # 0 = the first frame
                obs = noisy_expert_step(self.env, self.rng)
            scene, task = self.env.scene, self.env.task
            if scene.held is not None:  # the pointer is about finding the object, before it is held
                continue
            target = scene.objects[task.target]
            images.append(obs["image"])
            texts.append(task.instruction)
            actions.append(self.env.expert_action())
            patches.append(patch_of(target.x, target.y, self.grid)[0])
        return np.stack(images), texts, np.stack(actions), torch.tensor(patches)


def pointer_logits(policy: VLAPolicy, batch: dict, hidden: torch.Tensor, head: nn.Module, at: str) -> torch.Tensor:
    """(B, patches) pointer logits from the decoder's last hidden state."""
    if at == "last":  # the position that predicts the first action token
        rows = torch.arange(hidden.shape[0])
        return head(hidden[rows, batch["action_positions"][:, 0] - 1])
    is_image = batch["input_ids"] == policy.prompt.image_token_id
    return head(hidden[is_image].view(hidden.shape[0], -1, hidden.shape[-1])).squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", type=Path, required=True, help="a policy checkpoint (e.g. a dense-pretrained init)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pointer-weight", type=float, default=1.0)
    parser.add_argument("--pointer-at", choices=("image", "last"), default="image")
    parser.add_argument("--instruction-first", action="store_true",
                        help="switch the policy's prompt to the instruction before the image (kept when saved)")
    parser.add_argument("--families", default=None, help="comma-separated (default: all)")
    parser.add_argument("--objects", default="3,4")
    parser.add_argument("--probe-scenes", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.steps < MIN_STEPS:
        parser.error(f"--steps must be >= {MIN_STEPS} (the one-cycle schedule needs a warm-up and a decay step)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    policy = VLAPolicy.from_pretrained(args.init)
    if args.instruction_first:
        policy.prompt = dataclasses.replace(policy.prompt, instruction_first=True)
    if args.pointer_at == "image" and not (policy.family == "paligemma" or policy.prompt.instruction_first):
        parser.error("--pointer-at image needs image tokens that see the instruction: a paligemma-family "
                     "policy or an instruction-first prompt")
    vision = policy.model.config.vision_config
    grid = vision.image_size // vision.patch_size
    if grid * grid != policy.prompt.num_image_tokens:  # e.g. a CLIP tower's extra CLS token
        parser.error(f"the pointer needs one image token per patch: {policy.prompt.num_image_tokens} tokens "
                     f"for {grid} x {grid} patches")
    hidden = policy.model.config.text_config.hidden_size
    head = nn.Linear(hidden, grid * grid if args.pointer_at == "last" else 1)
    families = None if args.families is None else tuple(args.families.split(","))
    objects = tuple(int(o) for o in args.objects.split(","))
    source = FrameSource(families, objects, vision.image_size, grid, args.seed)
    params = [p for p in policy.model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, args.lr, weight_decay=0.01)
    schedule = one_cycle(optimizer, args.lr, args.steps)

    def probe() -> dict:
        policy.eval()
        with torch.no_grad():
            result = probe_language(VLAPolicyAdapter(policy), scenes=args.probe_scenes, seed=args.seed + 1,
                                    families=families, object_counts=objects)
        policy.train()
        return {"follows": round(result.follows, 3), "changes": round(result.changes, 3)}

    print(json.dumps({"step": 0, **probe()}), flush=True)
    policy.train()
    start, window = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        images, texts, actions, patches = source.batch(args.batch_size)
        batch = policy.build_training_batch(images, texts, actions)
        out = policy.model(**policy.model_inputs(batch), use_cache=False, output_hidden_states=True)
        logits = pointer_logits(policy, batch, out.hidden_states[-1], head, args.pointer_at)
        pointer = nn.functional.cross_entropy(logits, patches)
        loss = out.loss + args.pointer_weight * pointer
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        window.append((out.loss.item(), pointer.item(), float((logits.argmax(-1) == patches).float().mean())))
        if step % args.eval_every == 0 or step == args.steps:
            action_loss, pointer_loss, pointer_acc = np.mean(window, axis=0)
            window = []
            print(json.dumps({"step": step, "action_loss": round(action_loss, 4), "pointer_loss": round(pointer_loss, 4),
                              "pointer_accuracy": round(pointer_acc, 3), **probe(),
                              "elapsed_s": round(time.perf_counter() - start, 1)}), flush=True)
    policy.save_pretrained(args.out)
    print(json.dumps({"saved": str(args.out)}))


if __name__ == "__main__":
    main()
