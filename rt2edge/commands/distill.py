"""`rt2edge distill ...`: the training stage. RT-2 co-fine-tuning, the teacher cache, knowledge
distillation from it, and the teacher-vs-student comparison.

Each command only parses options into the stage's config and calls its one entry function.
On several GPUs / nodes run the same command under accelerate, unchanged:
    accelerate launch --multi_gpu --num_processes 8 -m rt2edge.cli distill finetune --data DATA ...
(several CPU processes: `ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node N ...`;
accelerate treats a CPU-only multi-process job as distributed only with that variable set).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from rt2edge.commands import bad_option, user_errors
from rt2edge.commands.training_options import training_options
from rt2edge.errors import ConfigError

# ConfigError fields -> the option that sets them, where the names differ
ALIASES = {"student.n_bins": "student", "student.num_dims": "student", "student.terminate": "student",
           "student.statistics": "student", "students": "student"}


def _run(make_config: Callable[[], Any], entry: Callable[[Any], Any]) -> Any:
    """Build the config and run the entry; a bad value (also one found during the run, e.g. a
    resume with other settings) is a usage error on its option, other typed errors one line."""
    with user_errors():
        try:
            return entry(make_config())
        except ConfigError as exc:
            raise bad_option(exc, ALIASES) from exc


def _report_training(result: Any, steps: int) -> None:
    typer.echo(json.dumps(vars(result), indent=2))
    if not result.completed:
        typer.echo(f"stopped at step {result.step}/{steps}; run the same command to resume", err=True)


def register(app: typer.Typer) -> None:
    distill_app = typer.Typer(help="Training: RT-2 co-fine-tuning, teacher cache, knowledge distillation.",
                              no_args_is_help=True)

    @distill_app.command("finetune")
    @training_options()
    def finetune(
        data: Path = typer.Option(..., "--data", help="Episode dataset folder (`rt2edge data generate`)."),
        out: Path = typer.Option(..., "--out", help="Run folder: final checkpoint, log, resumable state."),
        preset: Optional[str] = typer.Option(None, "--preset",
                                             help="Fresh model: teacher, student-m, student-s, paligemma-tiny."),
        init: Optional[Path] = typer.Option(None, "--init", help="Start from this checkpoint instead."),
        training: dict = None,
    ) -> None:
        """Co-fine-tune a VLA policy on robot frames mixed with VQA (RT-2), resumable."""
        from distill.finetune import FinetuneConfig, run

        result = _run(lambda: FinetuneConfig(
            data=str(data), out=str(out), preset=preset if (preset or init) else "teacher",
            init=None if init is None else str(init), **training), run)
        _report_training(result, training["steps"])

    @distill_app.command("cache")
    def cache(
        teacher: Path = typer.Option(..., "--teacher", help="Teacher checkpoint folder."),
        data: Path = typer.Option(..., "--data", help="Episode dataset folder."),
        out: Path = typer.Option(..., "--out", help="Cache folder (resumes when it holds the same cache)."),
        top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep the k most likely bins per token "
                                                                  "(default: all bins, fp16)."),
        shard_size: int = typer.Option(1024, "--shard-size", help="Frames per shard file."),
        batch_size: int = typer.Option(32, "--batch-size", help="Frames per teacher forward."),
        max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Cache the first N frames only."),
        greedy: bool = typer.Option(True, "--greedy/--no-greedy", help="Also store the teacher's greedy decode."),
        device_map: Optional[str] = typer.Option(None, "--device-map",
                                                 help="Shard a large teacher: auto, balanced, cpu (HF device_map)."),
        dtype: str = typer.Option("float32", "--dtype", help="Teacher weights: float32, bfloat16, float16."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Run a teacher once over the frames; store its action-bin distributions (sharded, resumable)."""
        from distill.cache import CacheConfig, run

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        result = _run(lambda: CacheConfig(
            teacher=str(teacher), data=str(data), out=str(out), top_k=top_k, shard_size=shard_size,
            batch_size=batch_size, max_frames=max_frames, greedy=greedy, device_map=device_map, dtype=dtype,
            progress=progress), run)
        typer.echo(json.dumps(asdict(result), indent=2))

    @distill_app.command("train")
    @training_options(augment=False)
    def train(
        cache: Path = typer.Option(..., "--cache", help="Teacher cache (`rt2edge distill cache`)."),
        out: Path = typer.Option(..., "--out", help="Run folder: student checkpoint, log, resumable state."),
        student: Optional[str] = typer.Option(None, "--student", help="Preset name or checkpoint folder."),
        from_teacher: Optional[Path] = typer.Option(None, "--from-teacher",
                                                    help="Student = this checkpoint with layers dropped."),
        keep_every: int = typer.Option(2, "--keep-every", help="With --from-teacher: keep every k-th layer."),
        data: Optional[Path] = typer.Option(None, "--data", help="The cache's dataset, if it moved."),
        loss: str = typer.Option("kl", "--loss", help="kl (forward), rkl (reverse) or jsd."),
        temperature: float = typer.Option(2.0, "--temperature", help="Softmax temperature T (loss x T^2)."),
        alpha: float = typer.Option(0.5, "--alpha", help="Weight of the ground-truth CE; KD gets 1 - alpha."),
        training: dict = None,
    ) -> None:
        """Distill the cache's teacher into a student (KD on action bins + VQA co-training), resumable."""
        from distill.kd import DistillConfig, run

        result = _run(lambda: DistillConfig(
            cache=str(cache), out=str(out), student=student,
            from_teacher=None if from_teacher is None else str(from_teacher), keep_every=keep_every,
            data=None if data is None else str(data), loss=loss, temperature=temperature, alpha=alpha,
            **training), run)
        _report_training(result, training["steps"])

    @distill_app.command("compare")
    def compare_command(
        teacher: Path = typer.Option(..., "--teacher", help="Teacher checkpoint."),
        student: List[Path] = typer.Option([], "--student", help="Student checkpoint (repeat for several)."),
        data: Path = typer.Option(..., "--data", help="Dataset to take held-out frames from."),
        cache: Optional[Path] = typer.Option(None, "--cache", help="Skip the episodes this cache holds."),
        frames: int = typer.Option(500, "--frames", help="Held-out frames to score."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report here."),
    ) -> None:
        """Parameters and action-token agreement with the teacher on held-out frames."""
        from distill.kd.compare import CompareConfig, compare, save_report

        report = _run(lambda: CompareConfig(
            teacher=str(teacher), students=[str(s) for s in student], data=str(data),
            cache=None if cache is None else str(cache), frames=frames), compare)
        if json_out is not None:
            save_report(report, json_out)
        typer.echo(json.dumps(report["models"], indent=2))

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
