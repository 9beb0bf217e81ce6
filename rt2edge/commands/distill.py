"""`rt2edge distill ...`: training stages (RT-2 co-fine-tuning; later: teacher cache, student KD).

The command only parses options into the stage's config and calls its one entry function.
On several GPUs / nodes run the same command under accelerate, unchanged:
    accelerate launch --multi_gpu --num_processes 8 -m rt2edge.cli distill finetune --data DATA ...
(several CPU processes: `ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node N ...`;
accelerate treats a CPU-only multi-process job as distributed only with that variable set).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from rt2edge.commands import bad_option, user_errors
from rt2edge.errors import ConfigError


def register(app: typer.Typer) -> None:
    distill_app = typer.Typer(help="Training: RT-2 co-fine-tuning of a VLA policy.", no_args_is_help=True)

    @distill_app.command("finetune")
    def finetune(
        data: Path = typer.Option(..., "--data", help="Episode dataset folder (`rt2edge data generate`)."),
        out: Path = typer.Option(..., "--out", help="Run folder: final checkpoint, log, resumable state."),
        preset: Optional[str] = typer.Option(None, "--preset",
                                             help="Fresh model: teacher, student-m, student-s, paligemma-tiny."),
        init: Optional[Path] = typer.Option(None, "--init", help="Start from this checkpoint instead."),
        steps: int = typer.Option(1000, "--steps", help="Optimizer steps in all."),
        batch_size: int = typer.Option(32, "--batch-size", help="Global batch (split across processes)."),
        lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate (AdamW, warm-up + cosine)."),
        weight_decay: float = typer.Option(0.01, "--weight-decay"),
        warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Default: 5% of --steps."),
        vqa_ratio: float = typer.Option(0.25, "--vqa-ratio", help="Share of each batch that is VQA."),
        vqa_pool_size: int = typer.Option(4096, "--vqa-pool-size"),
        augment: bool = typer.Option(True, "--augment/--no-augment", help="Random shift + colour jitter."),
        seed: int = typer.Option(0, "--seed"),
        mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, bf16 or fp16."),
        checkpoint_every: int = typer.Option(250, "--checkpoint-every"),
        log_every: int = typer.Option(10, "--log-every"),
        resume: Optional[bool] = typer.Option(
            None, "--resume/--no-resume",
            help="Default: resume when --out holds a checkpoint. --resume requires one, "
                 "--no-resume refuses to touch a folder that has one."),
        max_steps_per_run: Optional[int] = typer.Option(
            None, "--max-steps-per-run", help="Checkpoint and stop after this many steps (time-limited jobs)."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Co-fine-tune a VLA policy on robot frames mixed with VQA (RT-2), resumable."""
        from distill.finetune import FinetuneConfig, run

        try:
            cfg = FinetuneConfig(
                data=str(data), out=str(out), preset=preset if (preset or init) else "teacher",
                init=None if init is None else str(init), steps=steps, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, warmup_steps=warmup_steps, vqa_ratio=vqa_ratio,
                vqa_pool_size=vqa_pool_size, augment=augment, seed=seed, mixed_precision=mixed_precision,
                checkpoint_every=checkpoint_every, log_every=log_every,
                resume={None: "auto", True: "require", False: "never"}[resume],
                max_steps_per_run=max_steps_per_run, progress=progress)
        except ConfigError as exc:
            raise bad_option(exc) from exc
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        try:
            result = run(cfg)
        except ConfigError as exc:  # e.g. a resume whose settings differ from the checkpoint's
            raise bad_option(exc) from exc
        typer.echo(json.dumps({k: v for k, v in vars(result).items()}, indent=2))
        if not result.completed:
            typer.echo(f"stopped at step {result.step}/{cfg.steps}; run the same command to resume",
                       err=True)

    @distill_app.command("snapshot")
    def snapshot_command(
        run_dir: Path = typer.Argument(..., help="A `distill finetune` run folder (finished or not)."),
        out: Path = typer.Option(..., "--out", help="Checkpoint folder to write."),
        step: Optional[int] = typer.Option(None, "--step", help="Default: the newest saved step."),
    ) -> None:
        """Turn a saved training step into a checkpoint (for `rt2edge eval` while training runs)."""
        from distill.finetune.snapshot import snapshot

        with user_errors():
            typer.echo(f"checkpoint: {snapshot(run_dir, out, step)}")

    app.add_typer(distill_app, name="distill")
