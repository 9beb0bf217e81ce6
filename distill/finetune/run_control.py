"""Run-folder housekeeping of a fine-tuning run: graceful stop, final checkpoint, log trimming.

A cluster preempts a job with SIGTERM (SLURM, Kubernetes) and a person stops one with Ctrl-C;
either way the run should end at a step boundary with a checkpoint, so that requeueing the same
command resumes it. A second Ctrl-C still kills at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

from rt2edge.atomic import atomic_write_text
from rt2edge.errors import ArtifactError
from rt2edge.models.checkpoint import METADATA_FILE

STAGING_DIRNAME = ".final-staging"


class GracefulStop:
    """Context manager: SIGTERM / SIGINT set a flag that the loop checks after each step."""

    def __init__(self) -> None:
        self._flag = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self._flag = True
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts immediately
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():  # signal() works only there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self, accelerator: Any) -> bool:
        """True on every process once any process got the signal (they must stop together)."""
        if accelerator.num_processes == 1:
            return self._flag
        import torch

        flag = torch.tensor([float(self._flag)], device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item() > 0)


def publish_checkpoint(policy: Any, out: Path) -> None:
    """Write the final `save_pretrained` checkpoint into the run folder `out`.

    `save_pretrained` replaces its target folder, and `out` also holds the training state, the
    config and the log, so the model is staged in a subfolder and moved up file by file, with
    rt2edge.json (what makes a folder a checkpoint) removed first and put back last: a crash in
    between leaves a run folder that is not mistaken for a finished checkpoint.
    """
    staging = out / STAGING_DIRNAME
    if staging.exists():
        shutil.rmtree(staging)
    policy.save_pretrained(staging)
    (out / METADATA_FILE).unlink(missing_ok=True)
    for path in sorted(staging.iterdir()):
        if path.name != METADATA_FILE:
            os.replace(path, out / path.name)
    os.replace(staging / METADATA_FILE, out / METADATA_FILE)
    staging.rmdir()


def trim_log(path: Path, step: int) -> None:
    """Drop log rows after `step`: a resumed run redoes those steps and logs them again. Rows are
    appended, so a crash (or a full disk) mid-append leaves a torn last line: dropped too."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = []
    for i, line in enumerate(rows):
        try:
            parsed.append((line, json.loads(line)))
        except json.JSONDecodeError as exc:
            if i == len(rows) - 1:
                break
            raise ArtifactError(f"{path}: line {i + 1} is not JSON ({exc}); fix or remove it to resume") from exc
    kept = [line for line, row in parsed if row.get("step", 0) <= step]
    if len(kept) != len(rows):
        atomic_write_text(path, "".join(line + "\n" for line in kept))
