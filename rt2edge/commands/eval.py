"""`rt2edge eval CHECKPOINT_OR_ARTIFACT`: closed-loop success rates in the built-in simulator.

A torch checkpoint (rt2edge.json) is run with torch; a deploy artifact (manifest.json) with the
robot runtime (ONNX Runtime), so the same command scores a model before and after export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rt2edge.commands import bad_option, int_list, user_errors

SPLIT_CHOICES = {"train": ("train",), "heldout": ("heldout",), "both": ("train", "heldout")}
# ConfigError fields -> the options that set them, for usage errors that name the option.
OPTION_NAMES = {"object_counts": "objects", "phase": "probe-phase", "loop_escape.temperature": "loop-escape"}


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        policy_path: Path = typer.Argument(..., help="A checkpoint folder or a deploy artifact folder."),
        episodes: int = typer.Option(24, "--episodes",
                                     help="Episodes per split, task families round-robin (24 = 4 each)."),
        seed: int = typer.Option(0, "--seed", help="Fixes every scene and instruction."),
        split: str = typer.Option("both", "--split", help="train (seen instructions), heldout or both."),
        families: Optional[str] = typer.Option(None, "--families", help="Comma-separated (default all)."),
        num_envs: int = typer.Option(8, "--num-envs", help="Envs stepped together (torch policies)."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Default: the env's limit."),
        objects: Optional[str] = typer.Option(None, "--objects",
                                              help="Objects per scene, comma-separated (default 3,4: "
                                                   "match the data's `data generate --objects`)."),
        gif: Optional[Path] = typer.Option(None, "--gif", help="Write one rollout: .gif or .png strip."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
        providers: Optional[str] = typer.Option(None, "--providers", help="Artifact backends, best first."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
        language_probe: int = typer.Option(0, "--language-probe", min=0,
                                           help="Also ask the policy on this many first frames (seen "
                                                "instructions, whatever --split) with the real instruction "
                                                "and one naming another object: does it follow the "
                                                "instruction? (0: skip)"),
        probe_phase: str = typer.Option("approach", "--probe-phase",
                                        help="What --language-probe renames: the object to move on the "
                                             "first frame (approach), or its destination on the first "
                                             "frame the expert carries it (carry)."),
        agreement: int = typer.Option(0, "--expert-agreement", min=0,
                                      help="Also run this many scenes (seen instructions, --families, "
                                           "--objects) driven by the scripted expert and by the policy, "
                                           "and report per task phase how often the policy's action is the "
                                           "expert's on each: compounding errors show as a gap. (0: skip)"),
        loop_escape: Optional[float] = typer.Option(
            None, "--loop-escape", help="Deploy artifacts: sample, at this temperature, each action taken from a "
                                        "pose the episode already acted from (the runtime's LoopEscape), instead "
                                        "of repeating a loop. Default: greedy."),
        paired_with: Optional[Path] = typer.Option(
            None, "--paired-with", help="An earlier `--json` result of the same scenes (same --seed, --episodes, "
                                        "--split, --families, --objects, --max-steps): count the episodes only "
                                        "one policy solves and test the difference (McNemar, exact)."),
    ) -> None:
        """Run a policy in TabletopEnv; print success per task family for seen and held-out instructions."""
        from rt2edge.errors import ConfigError
        from rt2edge.evaluation import evaluate, expert_agreement, load_policy, probe_language, save_rollout
        from rt2edge.evaluation.language_probe import probe_families
        from rt2edge.evaluation.paired import PairedResult, load_evaluation, paired_by_split
        from rt2edge.evaluation.rollout import default_env_factory, resolved_scene_options

        if split not in SPLIT_CHOICES:
            raise typer.BadParameter(f"must be one of {sorted(SPLIT_CHOICES)}", param_hint="--split")
        if threads is not None and (policy_path / "rt2edge.json").is_file():
            import torch

            torch.set_num_threads(threads)
        with user_errors():  # a ConfigError is a usage error of an option; other typed errors exit 2
            try:
                family_list = None if families is None else [f.strip() for f in families.split(",")]
                counts = None if objects is None else int_list(objects, "object_counts")
                other = None if paired_with is None else load_evaluation(paired_with)
                if other is not None:  # refused before the run: an env of this run says its defaults
                    env = default_env_factory(None, max_steps, counts)("train")
                    other.check_pairable(seed, env.max_steps, episodes, SPLIT_CHOICES[split],
                                         resolved_scene_options(env, family_list))
                escape = None
                if loop_escape is not None:
                    from rt2edge.runtime.loop_escape import LoopEscape

                    escape = LoopEscape(temperature=loop_escape)
                    if agreement:  # its expert-driven pass would move the robot behind the runtime's back
                        raise ConfigError("loop_escape", "cannot run with --expert-agreement: the expert "
                                                         "drives there, and the runtime tracks only its own moves")
                policy = load_policy(policy_path, providers=providers, loop_escape=escape)
                if language_probe:  # refuse a family list or phase it cannot probe before the evaluation
                    probe_families(family_list, probe_phase)
                result = evaluate(policy, episodes=episodes, seed=seed, splits=SPLIT_CHOICES[split],
                                  families=family_list, num_envs=num_envs, max_steps=max_steps,
                                  record=gif is not None, object_counts=counts)
                if language_probe:
                    result.language_probe = probe_language(policy, scenes=language_probe, seed=seed,
                                                           families=family_list, object_counts=counts,
                                                           batch_size=num_envs, phase=probe_phase)
                if agreement:
                    result.expert_agreement = expert_agreement(
                        policy, episodes=agreement, seed=seed, families=family_list, num_envs=num_envs,
                        max_steps=max_steps, object_counts=counts)
            except ConfigError as exc:
                raise bad_option(exc, OPTION_NAMES) from exc
            # Scenes that differ in a way the options do not tell (e.g. another simulator version)
            # only show after the run: it is still printed and saved, then the pairing refused.
            unpaired = None
            if other is not None:
                try:
                    other.check_pairable(seed, result.max_steps, episodes, result.splits, result.scene_options)
                    result.paired = PairedResult(other.path,
                                                 paired_by_split(result.episodes, other.episodes, result.splits))
                except ConfigError as exc:
                    unpaired = exc
        typer.echo(result.format_table())
        if json_out is not None:
            typer.echo(f"results: {result.save_json(json_out)}")
        if gif is not None and result.rollout_frames is not None:
            ep = result.rollout_episode
            typer.echo(f"rollout: {save_rollout(result.rollout_frames, gif, ep.instruction, ep.success)}")
        if unpaired is not None:
            raise bad_option(unpaired, OPTION_NAMES)
