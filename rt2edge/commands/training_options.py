"""The options every resumable training command shares (`distill finetune`, `distill train`).

    @distill_app.command("train")
    @training_options(augment=False)
    def train(cache: Path = typer.Option(...), ..., training: dict = None) -> None:
        cfg = DistillConfig(cache=str(cache), ..., **training)

adds --steps, --batch-size, --lr, ... --resume/--no-resume, --threads to the command's own
options and hands them to the command as one `training` dict of config fields. The defaults are
`distill.finetune.config.TrainingConfig`'s (a test keeps them equal; the CLI does not import the
stage to read them), overridable per command (KD's --no-augment). --threads is applied here
(torch CPU threads) and is not a config field.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Optional

import typer

# field: (option declaration, type, default, help)
OPTIONS: dict[str, tuple[str, Any, Any, str]] = {
    "steps": ("--steps", int, 1000, "Optimizer steps in all."),
    "batch_size": ("--batch-size", int, 32, "Global batch (split across processes)."),
    "lr": ("--lr", float, 1e-4, "Peak learning rate (AdamW, warm-up + cosine)."),
    "weight_decay": ("--weight-decay", float, 0.01, ""),
    "warmup_steps": ("--warmup-steps", Optional[int], None, "Default: 5% of --steps."),
    "min_lr_ratio": ("--min-lr-ratio", float, 0.1, "The cosine ends at lr x this."),
    "max_grad_norm": ("--max-grad-norm", float, 1.0, ""),
    "vqa_ratio": ("--vqa-ratio", float, 0.25, "Share of each batch that is VQA."),
    "vqa_pool_size": ("--vqa-pool-size", int, 4096, ""),
    "augment": ("--augment/--no-augment", bool, True, "Random shift + colour jitter."),
    "seed": ("--seed", int, 0, ""),
    "mixed_precision": ("--mixed-precision", str, "no", "no, bf16 or fp16."),
    "checkpoint_every": ("--checkpoint-every", int, 250, ""),
    "keep_checkpoints": ("--keep-checkpoints", int, 2, "Training states kept in training_state/."),
    "log_every": ("--log-every", int, 10, ""),
    "resume": ("--resume/--no-resume", Optional[bool], None,
               "Default: resume when --out holds a checkpoint. --resume requires one, "
               "--no-resume refuses to touch a folder that has one."),
    "max_steps_per_run": ("--max-steps-per-run", Optional[int], None,
                          "Checkpoint and stop after this many steps (time-limited jobs)."),
    "progress": ("--progress/--no-progress", bool, True, ""),
}
RESUME_MODES = {None: "auto", True: "require", False: "never"}


def training_options(**overrides: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    unknown = sorted(set(overrides) - set(OPTIONS))
    if unknown:
        raise ValueError(f"not training options: {unknown}")

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        hints = typing.get_type_hints(command)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(command).parameters.values() if p.name != "training"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                   default=typer.Option(overrides.get(name, default), decl, help=text or None))
                 for name, (decl, kind, default, text) in OPTIONS.items()]
        added.append(inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[int],
                                       default=typer.Option(None, "--threads", min=1, help="torch CPU threads.")))

        def wrapper(**kwargs: Any) -> None:
            training = {name: kwargs.pop(name) for name in OPTIONS}
            training["resume"] = RESUME_MODES[training["resume"]]
            threads = kwargs.pop("threads")
            if threads is not None:
                import torch

                torch.set_num_threads(threads)
            command(**kwargs, training=training)

        wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
        wrapper.__signature__ = inspect.Signature([*own, *added])  # what typer reads
        wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *added]}
        return wrapper

    return decorate
