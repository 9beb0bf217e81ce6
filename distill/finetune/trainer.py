"""RT-2 co-fine-tuning loop on `accelerate`: one code path for 1 CPU core and `accelerate launch`
on many GPUs / nodes (DDP). The entry point is `distill.finetune.run(cfg)`.

[Contract] Reproducible across interruptions: the batch of step k is a pure function of
(seed, k) (mixture.py), the model / optimizer / scheduler / RNG states are restored by
`accelerator.load_state`, so N steps in one run and N/2 + resume + N/2 give the same weights.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.finetune import checkpointing, losses, setup
from distill.finetune.augment import ImageAugmentation
from distill.finetune.config import FinetuneConfig
from distill.finetune.data import CoTrainingDataset, RawItem, build_vqa_pool, collate_raw
from distill.finetune.mixture import CoTrainingMixture, MixtureBatchSampler
from distill.finetune.run_control import GracefulStop, publish_checkpoint, trim_log
from rt2edge.errors import ConfigError
from rt2edge.optional import require

LOG_FILENAME = "train_log.jsonl"


@dataclass
class FinetuneResult:
    out: str
    step: int  # optimizer steps completed (over all runs)
    completed: bool  # reached cfg.steps and wrote the final checkpoint
    stopped_early: bool  # max_steps_per_run or a SIGTERM/SIGINT: resume to continue
    resumed_from: int | None
    last_log: dict[str, Any] | None
    wall_s: float


class FinetuneTrainer:
    """Builds everything in __init__ (collective under accelerate), trains in `run()`."""

    def __init__(self, cfg: FinetuneConfig):
        self.torch = torch = require("torch", extra="toolkit", purpose="fine-tuning")
        accelerate = require("accelerate", extra="toolkit", purpose="fine-tuning")
        from accelerate.utils import DataLoaderConfiguration, set_seed

        from rt2edge.data import EpisodeDataset

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
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out)
            trim_log(self.out / LOG_FILENAME, self.start.step)
        set_seed(cfg.seed)

        robot = EpisodeDataset(cfg.data)
        self.policy = setup.build_policy(cfg, robot.action_statistics(), Path(cfg.data).resolve().name or "default")
        vqa = build_vqa_pool(cfg.vqa_pool_size, cfg.seed, robot[0].image.shape[0]) if cfg.vqa_ratio > 0 else None
        mixture = CoTrainingMixture(len(robot), 0 if vqa is None else len(vqa), cfg.batch_size, cfg.vqa_ratio, cfg.seed)
        self.end_step = cfg.steps if cfg.max_steps_per_run is None else min(
            cfg.steps, self.start.step + cfg.max_steps_per_run)
        loader = torch.utils.data.DataLoader(
            CoTrainingDataset(robot, vqa, ImageAugmentation() if cfg.augment else None),
            batch_sampler=MixtureBatchSampler(mixture, self.start.step, self.end_step), collate_fn=collate_raw)

        self.policy.model.train()
        probe = CoTrainingDataset(robot, vqa, None)
        self.frozen = setup.freeze_unused_parameters(self.policy, [probe[i] for i in mixture.plan(0)])
        if self.frozen:
            setup.log.info("not training %d parameters no output depends on: %s", len(self.frozen), self.frozen)
        optimizer = setup.make_optimizer(torch, self.policy.model, cfg)
        warmup = cfg.effective_warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: setup.warmup_cosine(s, warmup, cfg.steps, cfg.min_lr_ratio))
        self.model, self.optimizer, self.loader, self.scheduler = acc.prepare(
            self.policy.model, optimizer, loader, scheduler)
        if self.resume_dir is not None:
            checkpointing.load_checkpoint(acc, self.resume_dir)
        tok = self.policy.action_tokenizer
        self.action_ids = torch.as_tensor(tok.allowed_ids, device=acc.device)
        self.dim_names = [tok.name_of(d) for d in range(tok.tokens_per_action)]

    # --------------------------------------------------------------------------- one step
    def train_step(self, items: list[RawItem]) -> tuple[losses.LossSums, Any, float]:
        """Forward, backward, clip, AdamW, schedule. Returns (loss sums, grad norm, lr used)."""
        acc = self.accelerator
        batch, is_vqa = setup.model_batch(self.policy, items)
        inputs = self.policy.model_inputs(batch)
        labels = inputs.pop("labels")
        with acc.autocast():
            logits = self.model(**inputs, use_cache=False).logits
        ce_sum, sums = losses.token_losses(logits, labels, is_vqa, self.action_ids, len(self.dim_names))
        # Mean over every labelled token of the *global* batch. DDP averages gradients over the
        # processes, hence the factor: the result equals the 1-process loss on the whole batch.
        n_tokens = (sums.action_tokens + sums.vqa_tokens).float()
        n_global = acc.reduce(n_tokens, "sum") if acc.num_processes > 1 else n_tokens
        acc.backward(ce_sum * acc.num_processes / n_global.clamp(min=1))
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums, grad_norm, lr

    # --------------------------------------------------------------------------- the loop
    def run(self) -> FinetuneResult:
        cfg, acc, torch = self.cfg, self.accelerator, self.torch
        t0 = time.perf_counter()
        step, samples = self.start.step, self.start.samples_seen
        window = torch.zeros(5 + 2 * len(self.dim_names), device=acc.device)
        window_t0, last_log = t0, None
        progress = require("tqdm.auto", extra="toolkit").tqdm(
            total=cfg.steps, initial=step, disable=not (cfg.progress and acc.is_main_process),
            desc="finetune", unit="step", dynamic_ncols=True)
        with GracefulStop() as stop:
            for items in self.loader:
                sums, grad_norm, lr = self.train_step(items)
                step, samples = step + 1, samples + cfg.batch_size
                window += sums.stack()
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
        return FinetuneResult(out=str(self.out), step=step, completed=completed, stopped_early=not completed,
                              resumed_from=self.start.step if self.resume_dir else None, last_log=last_log,
                              wall_s=time.perf_counter() - t0)

    def _log(self, step: int, window: Any, lr: float, grad_norm: float, samples_per_s: float | None,
             elapsed: float) -> dict[str, Any]:
        acc = self.accelerator
        totals = (acc.reduce(window, "sum") if acc.num_processes > 1 else window).tolist()
        row = log_row(step, totals, self.dim_names, lr, grad_norm, samples_per_s, elapsed)
        if acc.is_main_process:
            with open(self.out / LOG_FILENAME, "a") as f:
                f.write(json.dumps(row) + "\n")
        return row


def log_row(step: int, totals: list[float], dim_names: list[str], lr: float, grad_norm: float,
            samples_per_s: float | None, elapsed: float) -> dict[str, Any]:
    """One train_log.jsonl row from the summed LossSums of a logging window (all processes)."""
    action_ce, action_n, correct, vqa_ce, vqa_n = totals[:5]
    k = len(dim_names)
    per_dim = {name: round(c / max(1.0, n), 4)
               for name, c, n in zip(dim_names, totals[5:5 + k], totals[5 + k:5 + 2 * k])}
    return {
        "step": step,
        "loss": (action_ce + vqa_ce) / max(1.0, action_n + vqa_n),
        "action_loss": action_ce / max(1.0, action_n),
        "action_accuracy": correct / max(1.0, action_n),
        "action_accuracy_per_dim": per_dim,
        "vqa_loss": vqa_ce / vqa_n if vqa_n else None,
        "vqa_token_fraction": vqa_n / max(1.0, action_n + vqa_n),
        "lr": lr,
        "grad_norm": grad_norm,
        "samples_per_s": samples_per_s,
        "elapsed_s": round(elapsed, 3),
    }


def train(cfg: FinetuneConfig) -> FinetuneResult:
    return FinetuneTrainer(cfg).run()
