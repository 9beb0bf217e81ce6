"""`rt2edge data ...`: make and inspect episode datasets with the built-in simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from rt2edge.commands import bad_option, int_list, user_errors
from rt2edge.errors import ConfigError

_OPTION_OF_FIELD = {"object_counts": "objects"}


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Episode datasets (LeRobot layout) from the built-in simulator.",
                           no_args_is_help=True)

    @data_app.command("generate")
    def generate(
        episodes: int = typer.Option(..., "--episodes", help="Episodes to have in the dataset."),
        out: Path = typer.Option(..., "--out", help="Dataset folder (resumed if it exists)."),
        seed: int = typer.Option(0, "--seed"),
        image_size: int = typer.Option(64, "--image-size"),
        split: str = typer.Option("train", "--split", help="train or heldout instructions."),
        families: Optional[str] = typer.Option(None, "--families",
                                               help="Comma-separated task families (default all)."),
        objects: str = typer.Option("3,4", "--objects",
                                    help="Objects per scene, comma-separated choices (2..5)."),
        action_noise: float = typer.Option(0.0, "--action-noise",
                                           help="DART noise on executed moves (relative std)."),
        move_noise: float = typer.Option(0.0, "--move-noise",
                                         help="DART noise on executed moves (additive std, metres)."),
        gripper_noise: float = typer.Option(0.0, "--gripper-noise",
                                            help="DART noise on the gripper: probability per step that the "
                                                 "executed command is flipped (labels stay the expert's)."),
        start_anywhere: float = typer.Option(0.0, "--start-anywhere",
                                             help="Probability that an episode's gripper starts over a random "
                                                  "point of the table instead of near the robot's base."),
        relabel_carry: bool = typer.Option(False, "--relabel-carry/--no-relabel-carry",
                                           help="Follow each family with a destination by an episode of "
                                                "carry frames labelled for another destination of the "
                                                "scene, under the instruction naming it (marked relabeled)."),
        max_steps: int = typer.Option(60, "--max-steps"),
    ) -> None:
        """Run the scripted expert and write successful episodes as a LeRobot dataset."""
        from rt2edge.data.generate import GenerateConfig, generate as run

        try:
            cfg = GenerateConfig(
                out=str(out), episodes=episodes, seed=seed, image_size=image_size, split=split,
                families=None if families is None else tuple(f.strip() for f in families.split(",")),
                object_counts=tuple(int_list(objects, "object_counts")),
                action_noise=action_noise, move_noise=move_noise, gripper_noise=gripper_noise,
                start_anywhere=start_anywhere, relabel_carry=relabel_carry, max_steps=max_steps,
            )

            def progress(done: int, total: int) -> None:
                if done == total or done % 100 == 0:
                    typer.echo(f"episodes {done}/{total}", err=True)

            report = run(cfg, progress=progress)
        except ConfigError as exc:
            raise bad_option(exc, _OPTION_OF_FIELD) from exc
        typer.echo(json.dumps(report.to_dict(), indent=2))

    @data_app.command("dagger")
    def dagger(
        base: Path = typer.Option(..., "--base", help="Dataset the round extends (`data generate` or an "
                                                       "earlier round); read, never changed."),
        policy: Path = typer.Option(..., "--policy", help="Checkpoint or deploy artifact that drives."),
        episodes: int = typer.Option(..., "--episodes", help="On-policy episodes this round adds."),
        out: Path = typer.Option(..., "--out", help="The aggregated dataset (resumed if it exists)."),
        seed: int = typer.Option(0, "--seed"),
        expert_mix: float = typer.Option(0.0, "--expert-mix",
                                         help="Probability per step that the expert's action is executed "
                                              "instead of the policy's (DAgger's beta)."),
        num_envs: int = typer.Option(8, "--num-envs", help="Envs stepped at once by a checkpoint."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
        loop_escape: Optional[float] = typer.Option(
            None, "--loop-escape", help="A deploy artifact drives with the runtime's loop escape at this "
                                        "temperature (see `rt2edge eval --loop-escape`). Default: greedy."),
    ) -> None:
        """DAgger: the policy drives, the scripted expert labels every state; writes the base's
        episodes plus the on-policy ones as one dataset for `distill finetune`."""
        from rt2edge.data.dagger import DaggerConfig, dagger as run

        if threads is not None and (policy / "rt2edge.json").is_file():
            import torch

            torch.set_num_threads(threads)
        def progress(done: int, total: int) -> None:
            if done == total or done % 100 == 0:
                typer.echo(f"episodes {done}/{total}", err=True)

        with user_errors():  # a bad base or policy folder: one line, exit 2
            try:
                report = run(DaggerConfig(base=str(base), policy=str(policy), out=str(out), episodes=episodes,
                                          seed=seed, expert_mix=expert_mix, num_envs=num_envs,
                                          loop_escape=loop_escape),
                             progress=progress)
            except ConfigError as exc:
                raise bad_option(exc) from exc
        typer.echo(json.dumps(report.to_dict(), indent=2))

    @data_app.command("info")
    def info(path: Path = typer.Argument(..., help="Dataset folder.")) -> None:
        """Summarize a dataset: episodes, frames, tasks, action statistics."""
        from rt2edge.data.dataset import EpisodeDataset

        ds = EpisodeDataset(path)
        stats = ds.action_statistics()
        families: dict[str, int] = {}
        for record in ds.episodes:
            families[record.get("family", "?")] = families.get(record.get("family", "?"), 0) + 1
        typer.echo(json.dumps({
            "episodes": len(ds.episode_indices), "frames": len(ds), "tasks": len(ds.tasks),
            "fps": ds.fps, "families": families, "action_names": ds.action_names,
            "action_statistics": stats.to_dict(),
        }, indent=2))

    app.add_typer(data_app, name="data")
