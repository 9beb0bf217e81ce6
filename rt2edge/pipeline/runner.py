"""The stage runner: stages in order, each skipped when its `.done.json` still matches, resumed
when it was interrupted, redone (with everything after it) when its recipe section changed.

    OUT/<stage>/.started.json   written before a stage runs: its fingerprint
    OUT/<stage>/.done.json      written (atomically) when it finished: fingerprint, run id,
                                outputs (paths relative to OUT), wall time

A stage's fingerprint hashes its recipe section and the run id of the stage before it. A run id
is new each time a stage finishes, so re-running any stage (a changed section, a deleted
`.done.json`) changes the fingerprint of every later stage and they run again: make's rule, with
"newer" meaning "finished in another run". A stage folder whose `.started.json` matches the
current fingerprint is continued through the stage's own resume (training checkpoints, data
episodes, cache shards, finished sub-outputs); one whose fingerprint differs is deleted first,
because a stage refuses to resume a run made with other settings.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from rt2edge.atomic import atomic_write_json
from rt2edge.errors import ConfigError, Rt2EdgeError
from rt2edge.pipeline.recipe import STAGES, Recipe

DONE_FILE = ".done.json"
STARTED_FILE = ".started.json"
FORMAT_VERSION = 1


class PipelineInterrupted(Rt2EdgeError):
    """A stage stopped before finishing (Ctrl-C, SIGTERM); running the same command resumes it."""

    def __init__(self, stage: str, detail: str = ""):
        self.stage = stage
        super().__init__(f"stage {stage!r} was interrupted{': ' + detail if detail else ''}; "
                         "run the same command again to resume")


class Listener(Protocol):
    """What the progress display is told. Every method is optional in spirit: see NullListener."""

    def stage_skipped(self, index: int, total: int, stage: str, record: Mapping[str, Any]) -> None: ...
    # how: 'fresh', 'resume', 'redo', or 'skip' (the recipe does not need the stage)
    def stage_started(self, index: int, total: int, stage: str, how: str) -> None: ...
    def stage_status(self, stage: str, text: str) -> None: ...
    def stage_finished(self, index: int, total: int, stage: str, record: Mapping[str, Any]) -> None: ...
    def stage_failed(self, index: int, total: int, stage: str, error: BaseException, wall_s: float) -> None: ...


class NullListener:
    def stage_skipped(self, index: int, total: int, stage: str, record: Mapping[str, Any]) -> None:
        pass

    def stage_started(self, index: int, total: int, stage: str, how: str) -> None:
        pass

    def stage_status(self, stage: str, text: str) -> None:
        pass

    def stage_finished(self, index: int, total: int, stage: str, record: Mapping[str, Any]) -> None:
        pass

    def stage_failed(self, index: int, total: int, stage: str, error: BaseException, wall_s: float) -> None:
        pass


@dataclass
class StageContext:
    """What a stage function gets: the run folder, the recipe, earlier stages' outputs."""

    root: Path
    recipe: Recipe
    outputs: dict[str, dict[str, Any]]  # stage -> its .done outputs (paths relative to root)
    status: Callable[[str], None] = lambda text: None

    def dir(self, stage: str) -> Path:
        return self.root / stage

    def path(self, stage: str, key: str) -> Path:
        """An earlier stage's output path (relative ones are under the run folder)."""
        return self.root / self.outputs[stage][key]

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.root))


# A stage function does its work in ctx.dir(stage) and returns its outputs (JSON values).
StageFn = Callable[[StageContext], dict[str, Any]]


@dataclass
class PipelineResult:
    root: Path
    records: dict[str, dict[str, Any]]  # stage -> .done record
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return sum(self.records[s]["wall_s"] for s in self.ran)


def fingerprint(stage: str, recipe: Recipe, upstream_run_id: str | None,
                extra: Mapping[str, Any] | None = None, skipped: str | None = None) -> str:
    """A skipped stage hashes its reason instead of its section: settings it does not use cannot
    re-run it (and everything after it), and turning the skip off changes the fingerprint."""
    section = {"skipped": skipped} if skipped else recipe.section_dict(stage)
    blob = {"format": FORMAT_VERSION, "stage": stage, "section": section,
            "upstream": upstream_run_id, "extra": dict(extra or {})}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def read_json(path: Path) -> dict[str, Any] | None:
    """A marker file's content, or None if it is missing or unreadable (a torn write by a crash
    cannot happen with atomic writes, but a hand-edited file can)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _prepare_dir(folder: Path, fp: str, done: dict[str, Any] | None) -> str:
    """Make `folder` ready for a stage with fingerprint `fp` (`done`: its .done.json as read, a
    stale one); returns 'fresh', 'resume' or 'redo'."""
    if not folder.exists():
        return "fresh"
    started = read_json(folder / STARTED_FILE)
    if started is None and done is None:
        if any(folder.iterdir()):
            raise ConfigError("out", f"{folder} exists but is no pipeline stage folder (no {STARTED_FILE}); "
                                     "move it away or choose another --out")
        return "fresh"
    if started is not None and started.get("fingerprint") == fp:
        (folder / DONE_FILE).unlink(missing_ok=True)
        return "resume"
    shutil.rmtree(folder)  # made with other settings: the stage would refuse to continue it
    return "redo"


class _SigtermAsInterrupt:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C does, so a stage without its own handler
    (export, quantize, bench: their outputs appear whole or not at all) stops cleanly too. The
    training stages install their own handler while they run and stop at a checkpoint."""

    def __enter__(self) -> None:
        self._previous = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread: leave signals alone
            pass

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def run_pipeline(recipe: Recipe, root: str | Path, stages: Mapping[str, StageFn] | None = None,
                 listener: Listener | None = None, until: str | None = None,
                 extra_inputs: Callable[[str, Recipe], Mapping[str, Any]] | None = None,
                 skip: Callable[[str, Recipe], str | None] | None = None) -> PipelineResult:
    """Run (or finish) the pipeline of `recipe` in `root`. `stages` defaults to the real stage
    functions (rt2edge.pipeline.stages); `until` stops after that stage. `skip(stage, recipe)`
    names why the recipe does not need a stage (None: it runs); a skipped stage's outputs are
    {"skipped": reason}."""
    if stages is None:
        from rt2edge.pipeline.checks import check_names
        from rt2edge.pipeline.stages import STAGE_FUNCTIONS, extra_inputs as default_extra, skip_reason

        check_names(recipe)  # a typo in a later section fails now, not after the teacher trained
        stages, extra_inputs, skip = STAGE_FUNCTIONS, extra_inputs or default_extra, skip or skip_reason
    order: Sequence[str] = [s for s in STAGES if s in stages]
    if until is not None:
        if until not in order:
            raise ConfigError("until", f"unknown stage {until!r}; stages: {list(order)}")
        order = order[: order.index(until) + 1]
    listener = listener or NullListener()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    result = PipelineResult(root=root, records={})
    upstream: str | None = None
    with _SigtermAsInterrupt():
        for index, stage in enumerate(order, start=1):
            reason = skip(stage, recipe) if skip else None
            fp = fingerprint(stage, recipe, upstream, None if reason or not extra_inputs
                             else extra_inputs(stage, recipe), skipped=reason)
            folder = root / stage
            done = read_json(folder / DONE_FILE)
            if done is not None and done.get("fingerprint") == fp:
                listener.stage_skipped(index, len(order), stage, done)
                result.records[stage], upstream = done, done["run_id"]
                result.skipped.append(stage)
                continue
            record = _run_stage(stage, stages[stage], recipe, root, fp, upstream, result, listener, index,
                                len(order), done, reason)
            result.records[stage], upstream = record, record["run_id"]
            result.ran.append(stage)
    return result


def _run_stage(stage: str, fn: StageFn, recipe: Recipe, root: Path, fp: str, upstream: str | None,
               result: PipelineResult, listener: Listener, index: int, total: int,
               done: dict[str, Any] | None, skip_reason: str | None = None) -> dict[str, Any]:
    folder = root / stage
    how = _prepare_dir(folder, fp, done)
    folder.mkdir(parents=True, exist_ok=True)
    started_at = _now()
    atomic_write_json(folder / STARTED_FILE, {"stage": stage, "fingerprint": fp, "started": started_at})
    listener.stage_started(index, total, stage, "skip" if skip_reason else how)  # the record keeps `how`
    ctx = StageContext(root=root, recipe=recipe,
                       outputs={s: r["outputs"] for s, r in result.records.items()},
                       status=lambda text: listener.stage_status(stage, text))
    t0 = time.perf_counter()
    try:
        outputs = {"skipped": skip_reason} if skip_reason else fn(ctx)
    except KeyboardInterrupt:
        wall = time.perf_counter() - t0
        error = PipelineInterrupted(stage)
        listener.stage_failed(index, total, stage, error, wall)
        raise error from None
    except ConfigError as exc:  # a stage config's field is a key of this stage's recipe section
        listener.stage_failed(index, total, stage, exc, time.perf_counter() - t0)
        if exc.field.startswith(f"{stage}."):
            raise
        raise ConfigError(f"{stage}.{exc.field}", str(exc).removeprefix(f"{exc.field}: ")) from exc
    except BaseException as exc:
        listener.stage_failed(index, total, stage, exc, time.perf_counter() - t0)
        raise
    record = {"stage": stage, "fingerprint": fp, "run_id": uuid.uuid4().hex, "upstream": upstream,
              "recipe_section": recipe.section_dict(stage), "outputs": outputs, "started": started_at,
              "finished": _now(), "wall_s": round(time.perf_counter() - t0, 3), "how": how}
    atomic_write_json(folder / DONE_FILE, record)
    listener.stage_finished(index, total, stage, record)
    return record
