"""The co-training loop on `accelerate`, shared by RT-2 co-fine-tuning (`distill.finetune`) and
knowledge distillation (`distill.kd`): one code path for 1 CPU core and `accelerate launch` on
many GPUs / nodes (DDP, FSDP).

A subclass says what is trained and how a batch is scored; the loop owns the rest: the accelerator,
the seeded robot/VQA mixture, resume, the optimizer and schedule, logging, checkpoints, a graceful
stop and the final checkpoint.

[Contract] Reproducible across interruptions: the batch of step k is a pure function of
(seed, k) (mixture.py), the model / optimizer / scheduler / RNG states are restored by
`accelerator.load_state`, so N steps in one run and N/2 + resume + N/2 give the same weights.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from distill.finetune import checkpointing, setup
from distill.finetune.augment import ImageAugmentation
from distill.finetune.config import TrainingConfig
from distill.finetune.data import CoTrainingDataset, RawItem, build_vqa_pool, collate_raw
from distill.finetune.mixture import CoTrainingMixture, MixtureBatchSampler
from distill.finetune.run_control import GracefulStop, publish_checkpoint, trim_log
from rt2edge.errors import ConfigError, TrainingDivergedError
from rt2edge.optional import require

LOG_FILENAME = "train_log.jsonl"


@dataclass
class TrainingResult:
    out: str
    step: int  # optimizer steps completed (over all runs)
    completed: bool  # reached cfg.steps and wrote the final checkpoint
    stopped_early: bool  # max_steps_per_run or a SIGTERM/SIGINT: resume to continue
    resumed_from: int | None
    last_log: dict[str, Any] | None
    wall_s: float


class CoTrainingLoop:
    """Builds everything in __init__ (collective under accelerate), trains in `run()`.

    Subclasses implement:
      robot_frames()      the robot source: len() and [i] -> an object with image, instruction, action
      pin_robot_frames(r) optional: refuse a resume whose robot source changed
      build_policy(robot) the VLAPolicy to train
      training_module()   the nn.Module given to `accelerate.prepare` (what DDP/FSDP wraps); every
                          forward of a step must go through it, once
      probe(items)        an output that every trained parameter should reach (freezes the rest)
      loss_sums(items)    (summed loss, labelled tokens, stats vector of `window_size` sums)
      log_row(...)        a train_log.jsonl row (with "loss") from the window's summed stats
    """

    progress_desc = "train"
    window_size: int

    def __init__(self, cfg: TrainingConfig):
        self.torch = torch = require("torch", extra="toolkit", purpose="training")
        accelerate = require("accelerate", extra="toolkit", purpose="training")
        from accelerate.utils import DataLoaderConfiguration, set_seed

        self.cfg, self.out = cfg, Path(cfg.out)
        setup.reset_accelerate_state_if_single_process()
        # split_batches: `batch_size` is the global batch whatever the number of processes.
        self.accelerator = acc = accelerate.Accelerator(
            mixed_precision=cfg.mixed_precision, dataloader_config=DataLoaderConfiguration(split_batches=True))
        if cfg.batch_size % acc.num_processes:
            raise ConfigError("batch_size", f"{cfg.batch_size} is not divisible by the {acc.num_processes} processes")
        self.resume_dir = setup.resume_point(cfg, self.out)
        self.start = (checkpointing.TrainerState.load(self.resume_dir) if self.resume_dir
                      else checkpointing.TrainerState(0, 0, 0.0))
        self.steps_done = self.start.step
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out)
            trim_log(self.out / LOG_FILENAME, self.start.step)
        set_seed(cfg.seed)

        robot = self.robot_frames()
        self.pin_robot_frames(robot)
        self.policy = self.build_policy(robot)
        vqa = build_vqa_pool(cfg.vqa_pool_size, cfg.seed, robot[0].image.shape[0]) if cfg.vqa_ratio > 0 else None
        mixture = CoTrainingMixture(len(robot), 0 if vqa is None else len(vqa), cfg.batch_size, cfg.vqa_ratio, cfg.seed)
        self.end_step = cfg.steps if cfg.max_steps_per_run is None else min(
            cfg.steps, self.start.step + cfg.max_steps_per_run)
        # Its own generator: a DataLoader iterator draws a seed from the one it is given, and from
        # torch's global one by default, which `load_state` restores on resume, so every later
        # dropout mask would be one draw off an uninterrupted run's.
        loader = torch.utils.data.DataLoader(
            CoTrainingDataset(robot, vqa, ImageAugmentation() if cfg.augment else None),
            batch_sampler=MixtureBatchSampler(mixture, self.start.step, self.end_step), collate_fn=collate_raw,
            generator=torch.Generator())

        self.policy.train()
        module = self.training_module()
        probe = CoTrainingDataset(robot, vqa, None)
        items = [probe[i] for i in mixture.plan(0)]
        self.frozen = setup.freeze_unreached_parameters(module, lambda: self.probe(items))
        if self.frozen:
            setup.log.info("not training %d parameters no output depends on: %s", len(self.frozen), self.frozen)
        optimizer = setup.make_optimizer(torch, module, cfg)
        warmup = cfg.effective_warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: setup.warmup_cosine(s, warmup, cfg.steps, cfg.min_lr_ratio))
        self.model, self.optimizer, self.loader, self.scheduler = acc.prepare(module, optimizer, loader, scheduler)
        if self.resume_dir is not None:
            checkpointing.load_checkpoint(acc, self.resume_dir)

    # --------------------------------------------------------------------------- subclass hooks
    def robot_frames(self) -> Any:
        raise NotImplementedError

    def pin_robot_frames(self, robot: Any) -> None:
        """Refuse to resume on robot frames other than the run's first (default: nothing to pin)."""

    def build_policy(self, robot: Any) -> Any:
        raise NotImplementedError

    def training_module(self) -> Any:
        raise NotImplementedError

    def probe(self, items: list[RawItem]) -> Any:
        raise NotImplementedError

    def loss_sums(self, items: list[RawItem]) -> tuple[Any, Any, Any]:
        raise NotImplementedError

    def log_row(self, step: int, totals: Sequence[float], lr: float, grad_norm: float,
                samples_per_s: float | None, elapsed: float) -> dict[str, Any]:
        raise NotImplementedError

    # --------------------------------------------------------------------------- one step
    def train_step(self, items: list[RawItem]) -> tuple[Any, Any, float]:
        """Forward, backward, clip, AdamW, schedule. Returns (stats vector, grad norm, lr used)."""
        acc = self.accelerator
        loss_sum, n_tokens, stats = self.loss_sums(items)
        # Mean over every labelled token of the *global* batch. DDP averages gradients over the
        # processes, hence the factor: the result equals the 1-process loss on the whole batch.
        n_global = acc.reduce(n_tokens, "sum") if acc.num_processes > 1 else n_tokens
        acc.backward(loss_sum * acc.num_processes / n_global.clamp(min=1))
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        # A NaN/inf loss makes a NaN gradient norm (the same on every process): stop before the
        # optimizer writes NaN into the weights, which the next checkpoint would keep and the
        # rotation would make the only one left.
        if not bool(self.torch.isfinite(grad_norm)):
            raise TrainingDivergedError(f"step {self.steps_done + 1}: the gradient norm is {float(grad_norm)} "
                                        f"(lr {lr:.3g}); nothing of this step was applied. Resume from the last "
                                        f"checkpoint in {self.out} with a lower --lr or --max-grad-norm")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats, grad_norm, lr

    # --------------------------------------------------------------------------- the loop
    def run(self) -> TrainingResult:
        cfg, acc, torch = self.cfg, self.accelerator, self.torch
        t0 = time.perf_counter()
        step, samples = self.start.step, self.start.samples_seen
        window = torch.zeros(self.window_size, device=acc.device)
        window_t0, last_log = t0, None
        progress = require("tqdm.auto", extra="toolkit").tqdm(
            total=cfg.steps, initial=step, disable=not (cfg.progress and acc.is_main_process),
            desc=self.progress_desc, unit="step", dynamic_ncols=True)
        with GracefulStop() as stop:
            for items in self.loader:
                self.steps_done = step
                stats, grad_norm, lr = self.train_step(items)
                step, samples = step + 1, samples + cfg.batch_size
                window += stats
                progress.update(1)
                elapsed = self.start.elapsed_s + time.perf_counter() - t0
                if step % cfg.log_every == 0 or step == self.end_step:
                    full = step % cfg.log_every == 0  # a partial last window has no fair rate
                    rate = cfg.batch_size * cfg.log_every / (time.perf_counter() - window_t0) if full else None
                    last_log = self._log(step, window, lr, float(grad_norm), rate, elapsed)
                    progress.set_postfix(loss=f"{last_log['loss']:.3f}", samples_s=f"{rate or 0:.1f}")
                    window.zero_()
                    window_t0 = time.perf_counter()
                stopping = stop.requested(acc) or step == self.end_step
                if step % cfg.checkpoint_every == 0 or stopping:
                    checkpointing.save_checkpoint(acc, self.out, checkpointing.TrainerState(step, samples, elapsed),
                                                  keep=cfg.keep_checkpoints)
                if stopping:
                    break
        progress.close()
        completed = step >= cfg.steps
        if completed:
            acc.wait_for_everyone()
            if acc.is_main_process:
                publish_checkpoint(self.policy, self.out)
            acc.wait_for_everyone()
        return TrainingResult(out=str(self.out), step=step, completed=completed, stopped_early=not completed,
                              resumed_from=self.start.step if self.resume_dir else None, last_log=last_log,
                              wall_s=time.perf_counter() - t0)

    def _log(self, step: int, window: Any, lr: float, grad_norm: float, samples_per_s: float | None,
             elapsed: float) -> dict[str, Any]:
        acc = self.accelerator
        totals = (acc.reduce(window, "sum") if acc.num_processes > 1 else window).tolist()
        row = self.log_row(step, totals, lr, grad_norm, samples_per_s, elapsed)
        if acc.is_main_process:
            with open(self.out / LOG_FILENAME, "a") as f:
                f.write(json.dumps(row) + "\n")
        return row
