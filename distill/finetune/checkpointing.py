"""Atomic, resumable training checkpoints on top of `accelerate`'s save_state / load_state.

Layout under the run folder:
    training_state/step-00000500/   accelerate state (model, optimizer, scheduler, RNG of every
                                    process, grad scaler) + trainer_state.json
    training_state/step-00001000/
A checkpoint is written to `.tmp-step-...` and renamed into place only when complete, so a crash
mid-write never leaves a folder that `latest_checkpoint` would pick. `trainer_state.json` is written
last inside the temp folder and is what marks a folder as complete.

[Contract] Data position == step: the batch plan is a pure function of (seed, step) (see
mixture.py), so restoring the step restores the data stream.

Multi-node: the run folder must be on a filesystem every node sees (the usual cluster setup);
every process writes its RNG file, the main process renames and prunes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rt2edge.atomic import fsync_path, fsync_tree

STATE_DIRNAME = "training_state"
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass(frozen=True)
class TrainerState:
    step: int  # optimizer steps completed; the next batch to draw is plan(step)
    samples_seen: int
    elapsed_s: float  # training wall time over all runs, for the log's samples/s

    @classmethod
    def load(cls, folder: Path) -> TrainerState:
        data = json.loads((folder / TRAINER_STATE).read_text())
        return cls(step=int(data["step"]), samples_seen=int(data["samples_seen"]),
                   elapsed_s=float(data["elapsed_s"]))


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `run_dir`, oldest first."""
    root = Path(run_dir) / STATE_DIRNAME
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / TRAINER_STATE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(accelerator: Any, run_dir: str | Path, state: TrainerState, keep: int) -> Path:
    """Save the full training state of every process; returns the final folder. Collective call."""
    root = Path(run_dir) / STATE_DIRNAME
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-step-{state.step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step-*"):  # left over from a crash while writing a step
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model via safetensors; optimizer/scheduler/RNG via torch.save
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(asdict(state), indent=2) + "\n")
        fsync_tree(tmp)  # on disk before the rename, and before the rotation deletes older steps
        if final.exists():  # re-saving a step (e.g. the final step after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(root)  # the rename itself
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, folder: Path) -> TrainerState:
    """Restore model, optimizer, scheduler and RNG states in place; returns the trainer state."""
    accelerator.load_state(str(folder))
    return TrainerState.load(folder)
