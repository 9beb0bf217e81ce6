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

Frames are rendered by the project's own simulator (nothing is downloaded): by default the
pre-grasp steps of short expert rollouts with DART noise (the gripper anywhere, the named object
not yet held). `--phases all` draws frames from whole noisy episodes, the pointer marking where the
expert is heading (the object, then its destination: a mat, a flag, the reference object);
`--phases carry` keeps only the frames that hold the named object (the destination alone);
`--offset-weight` adds a regression of that goal's offset from the gripper, in steps, the metric
distance that the action labels (clipped to one step) carry only on the last step of a move;
`--dagger F` takes a fraction F of every batch from the policy's own rollouts, labelled by the
expert (DAgger). The language probe (`rt2edge eval --language-probe`, seen instructions on scenes
it never trained on) is the metric of grounding; `rt2edge eval` of the output the closed-loop one.
The heads are dropped when saving: the output is a plain checkpoint (for `rt2edge eval`, `export`,
or `rt2edge distill finetune --init`).

    python scripts/grounding_pretrain.py --init runs/init/dense-pick2 --out runs/init/grounded \\
        --instruction-first --steps 2000 --families pick --objects 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

# scripts/ is on sys.path
from dense_vision_pretrain import DART_NOISE_M, MIN_STEPS, noisy_expert_step, one_cycle, patch_of
from rt2edge.evaluation import VLAPolicyAdapter, probe_language
from rt2edge.models import VLAPolicy
from rt2edge.sim import TabletopEnv, expert_goal_xy, is_success

MAX_OFFSET_STEPS = 8.0  # the offset head's label is clipped here: farther goals all read "far"


class FrameSource:
    """Labelled frames: images, instructions, expert actions, the patch of where the expert is heading
    (`expert_goal_xy`) and that goal's offset from the gripper in max-step units.

    phases "pregrasp": 0-5 noisy expert steps into an episode, the named object not yet held (the
        pointer marks the object); "all": up to `per_episode` frames drawn from a whole noisy expert
        episode up to its first successful step (the pointer marks the object, then the destination);
        "carry": the frames of such episodes that hold the named object (the pointer marks the destination).
    dagger: the fraction of frames from episodes that `act` (the policy being trained) drives in
        `dagger_envs` environments at once, labelled by the expert at every state the policy reaches
        (DAgger): the states a cloned policy drifts into, which no expert rollout visits.
    """

    def __init__(self, families, objects, image_size: int, grid: int, seed: int, phases: str = "pregrasp",
                 per_episode: int = 8, act: Callable | None = None, dagger: float = 0.0,
                 dagger_envs: int = 8, dagger_steps: int = 30, move_noise: float = DART_NOISE_M):
        if dagger and (act is None or phases != "all"):
            raise ValueError("dagger frames need a policy to act and phases='all'")

        def make_env() -> TabletopEnv:
            return TabletopEnv(image_size=image_size, families=families, object_counts=objects)
        self.env = make_env()
        self.grid = grid
        self.rng = np.random.default_rng(seed)
        self.phases = phases
        self.per_episode = per_episode
        self.move_noise = move_noise
        self.act, self.dagger, self.dagger_steps = act, dagger, dagger_steps
        self.policy_envs = [make_env() for _ in range(dagger_envs)] if dagger else []
        self._policy_frames: list[tuple] = []

    def _frame(self, env: TabletopEnv, obs) -> tuple:
        scene, task = env.scene, env.task
        goal = expert_goal_xy(scene, task)
        offset = np.clip((goal - scene.ee[:2]) / env.max_step, -MAX_OFFSET_STEPS, MAX_OFFSET_STEPS)
        return (obs["image"], task.instruction, env.expert_action(),
                patch_of(goal[0], goal[1], self.grid)[0], offset)

    def _sample(self, frames: list[tuple], k: int) -> list[tuple]:
        keep = self.rng.choice(len(frames), size=min(k, len(frames)), replace=False)
        return [frames[i] for i in keep]

    def _pregrasp(self) -> list[tuple]:
        obs, _ = self.env.reset(seed=int(self.rng.integers(2**31)))
        for _ in range(int(self.rng.integers(0, 6))):  # 0 = the first frame
            obs = noisy_expert_step(self.env, self.rng, self.move_noise)
        if self.env.scene.held is not None:  # the pointer is about finding the object, before it is held
            return []
        return [self._frame(self.env, obs)]

    def _episode(self) -> list[tuple]:
        env = self.env
        obs, _ = env.reset(seed=int(self.rng.integers(2**31)))
        frames, steps = [], 0
        while True:
            # "carry": only the frames that hold the named object (moving it to its destination, releasing)
            if self.phases != "carry" or env.scene.held == env.task.target:
                frames.append(self._frame(env, obs))
            if is_success(env.scene, env.task) or steps + 1 >= env.max_steps:
                break
            obs, steps = noisy_expert_step(env, self.rng, self.move_noise), steps + 1
        return self._sample(frames, self.per_episode)

    def _policy_episodes(self) -> list[tuple]:
        """One batched rollout of the policy in every DAgger env, `2 * per_episode` frames from each."""
        envs = self.policy_envs
        obs = [env.reset(seed=int(self.rng.integers(2**31)))[0] for env in envs]
        frames: list[list[tuple]] = [[] for _ in envs]
        live = list(range(len(envs)))
        for _ in range(self.dagger_steps):
            for i in live:
                frames[i].append(self._frame(envs[i], obs[i]))
            live = [i for i in live if not is_success(envs[i].scene, envs[i].task)]
            if not live:
                break
            actions = self.act(np.stack([obs[i]["image"] for i in live]), [envs[i].task.instruction for i in live])
            for i, action in zip(live, np.asarray(actions, dtype=np.float64)):
                action = action.copy()
                action[7] = 0.0  # label on until success or the step cap, whatever the policy thinks
                obs[i] = envs[i].step(action)[0]
        return [f for episode in frames for f in self._sample(episode, 2 * self.per_episode)]

    def batch(self, n: int):
        n_policy = int(self.rng.binomial(n, self.dagger)) if self.dagger else 0
        while len(self._policy_frames) < n_policy:
            self._policy_frames += self._policy_episodes()
            self.rng.shuffle(self._policy_frames)
        frames, self._policy_frames = self._policy_frames[:n_policy], self._policy_frames[n_policy:]
        while len(frames) < n:
            frames += self._pregrasp() if self.phases == "pregrasp" else self._episode()
        images, texts, actions, patches, offsets = zip(*frames[:n])
        return (np.stack(images), list(texts), np.stack(actions), torch.tensor(patches),
                torch.tensor(np.stack(offsets), dtype=torch.float32))


def last_prompt_state(batch: dict, hidden: torch.Tensor) -> torch.Tensor:
    """(B, D) the decoder state at the position that predicts the first action token."""
    return hidden[torch.arange(hidden.shape[0]), batch["action_positions"][:, 0] - 1]


def pointer_logits(policy: VLAPolicy, batch: dict, hidden: torch.Tensor, head: nn.Module, at: str) -> torch.Tensor:
    """(B, patches) pointer logits from the decoder's last hidden state."""
    if at == "last":
        return head(last_prompt_state(batch, hidden))
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
    parser.add_argument("--offset-weight", type=float, default=0.0,
                        help="weight of a regression of the goal's offset from the gripper (in steps, unclipped "
                             "up to 8): the metric distance the one-step-clipped action labels do not carry")
    parser.add_argument("--phases", choices=("pregrasp", "all", "carry"), default="pregrasp",
                        help="pregrasp: the first 0-5 steps, object not held; all: frames of whole episodes; "
                             "carry: the frames of whole episodes that hold the named object")
    parser.add_argument("--dagger", type=float, default=0.0,
                        help="fraction of each batch from the policy's own rollouts, labelled by the expert "
                             "(DAgger; needs --phases all)")
    parser.add_argument("--move-noise", type=float, default=DART_NOISE_M,
                        help="metres of N(0, M) noise on every executed expert move (DART)")
    parser.add_argument("--dagger-envs", type=int, default=8, help="environments the policy drives at once")
    parser.add_argument("--instruction-first", action="store_true",
                        help="switch the policy's prompt to the instruction before the image (kept when saved)")
    parser.add_argument("--families", default=None, help="comma-separated (default: all)")
    parser.add_argument("--objects", default="3,4")
    parser.add_argument("--probe-scenes", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if not 0.0 <= args.dagger <= 1.0:
        parser.error(f"--dagger must be a fraction in [0, 1], got {args.dagger}")
    for name in ("offset_weight", "pointer_weight", "move_noise"):
        if not getattr(args, name) >= 0.0:  # also refuses nan
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.dagger_envs < 1:
        parser.error(f"--dagger-envs must be >= 1, got {args.dagger_envs}")
    if args.dagger and args.phases != "all":
        parser.error("--dagger needs --phases all (the policy's rollouts cover whole episodes)")
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
    offset_head = nn.Linear(hidden, 2)
    families = None if args.families is None else tuple(args.families.split(","))
    objects = tuple(int(o) for o in args.objects.split(","))
    source = FrameSource(families, objects, vision.image_size, grid, args.seed, phases=args.phases,
                         act=VLAPolicyAdapter(policy).act_batch, dagger=args.dagger, dagger_envs=args.dagger_envs,
                         move_noise=args.move_noise)
    params = ([p for p in policy.model.parameters() if p.requires_grad] + list(head.parameters())
              + list(offset_head.parameters()))
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
        images, texts, actions, patches, offsets = source.batch(args.batch_size)
        batch = policy.build_training_batch(images, texts, actions)
        out = policy.model(**policy.model_inputs(batch), use_cache=False, output_hidden_states=True)
        logits = pointer_logits(policy, batch, out.hidden_states[-1], head, args.pointer_at)
        pointer = nn.functional.cross_entropy(logits, patches)
        # Huber in step units: a goal 8 steps away should not outweigh the last step's precision
        offset = nn.functional.smooth_l1_loss(offset_head(last_prompt_state(batch, out.hidden_states[-1])), offsets)
        loss = out.loss + args.pointer_weight * pointer + args.offset_weight * offset
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        window.append((out.loss.item(), pointer.item(), float((logits.argmax(-1) == patches).float().mean()),
                       offset.item()))
        if step % args.eval_every == 0 or step == args.steps:
            action_loss, pointer_loss, pointer_acc, offset_loss = np.mean(window, axis=0)
            window = []
            print(json.dumps({"step": step, "action_loss": round(action_loss, 4),
                              "pointer_loss": round(pointer_loss, 4), "pointer_accuracy": round(pointer_acc, 3),
                              "offset_loss": round(offset_loss, 4),
                              **probe(), "elapsed_s": round(time.perf_counter() - start, 1)}), flush=True)
    policy.save_pretrained(args.out)
    print(json.dumps({"saved": str(args.out)}))


if __name__ == "__main__":
    main()
