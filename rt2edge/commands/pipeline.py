"""`rt2edge pipeline [--recipe FILE] [--out DIR] [--fast]`: the main job in one command.

data -> teacher -> cache -> student(s) -> export -> quantize -> bench, resumable: re-running the
same command skips finished stages and continues an interrupted one (rt2edge/pipeline/runner.py).
Progress goes to stderr (one line per stage; training stages show their own step bar), the report
path and the summary table to stdout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Optional

import typer

from rt2edge.commands import user_errors

# Stages that print their own progress bar (tqdm); a spinner on the same terminal would garble it.
OWN_PROGRESS = {"teacher", "cache", "student"}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class RichProgress:
    """The pipeline runner's listener: stage i/N, name, status and elapsed time on stderr."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self._live: Any = None
        self._task: Any = None
        self.rows: list[tuple[str, str, str]] = []  # (stage, status, wall) for the closing table

    def _stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = self._task = None

    def stage_skipped(self, index: int, total: int, stage: str, record: Mapping[str, Any]) -> None:
        self.console.print(f"[dim][{index}/{total}] {stage:<9} up to date (finished {record['finished']}, "
                           f"took {_duration(record['wall_s'])})[/dim]")
        self.rows.append((stage, "reused", _duration(record["wall_s"])))

    def stage_started(self, index: int, total: int, stage: str, how: str) -> None:
        if how == "skip":  # stage_finished says why it is not needed
            return
        what = {"fresh": "running", "resume": "resuming", "redo": "re-running (recipe or input changed)"}[how]
        self.console.print(f"[bold][{index}/{total}] {stage:<9}[/bold] {what}")
        if stage not in OWN_PROGRESS:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._live = Progress(SpinnerColumn(), TextColumn(f"[{index}/{total}] {stage:<9} {{task.description}}"),
                                  TimeElapsedColumn(), console=self.console, transient=True)
            self._live.start()
            self._task = self._live.add_task(what, total=None)

    def stage_status(self, stage: str, text: str) -> None:
        if self._live is not None:
            self._live.update(self._task, description=text)

    def stage_finished(self, index: int, total: int, stage: str, record: Mapping[str, Any]) -> None:
        self._stop()
        skipped = record["outputs"].get("skipped")
        if skipped:
            self.console.print(f"[dim]not needed [{index}/{total}] {stage:<9} ({skipped})[/dim]")
            self.rows.append((stage, "not needed", "-"))
            return
        self.console.print(f"[green]done[/green] [{index}/{total}] {stage:<9} in {_duration(record['wall_s'])}")
        self.rows.append((stage, "resumed" if record["how"] == "resume" else "ran", _duration(record["wall_s"])))

    def stage_failed(self, index: int, total: int, stage: str, error: BaseException, wall_s: float) -> None:
        self._stop()
        self.console.print(f"[red]stopped[/red] [{index}/{total}] {stage:<9} after {_duration(wall_s)}: "
                           f"{type(error).__name__}")


def _print_summary(progress: RichProgress, result: Any, wall_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    from rt2edge.pipeline.summary import COLUMNS, read_report, reference_label, summary_rows

    out = Console(highlight=False)
    if not out.is_terminal:  # piped into a log: no 80-column wrapping of the tables
        out = Console(highlight=False, width=200)
    stages = Table(title=f"Stages ({_duration(wall_s)} this run)", title_justify="left")
    for column in ("stage", "status", "wall"):
        stages.add_column(column)
    for row in progress.rows:
        stages.add_row(*row)
    # Reused stages count with the wall time of the run that made them: the pipeline's real cost.
    stages.add_row("total", "", _duration(sum(r["wall_s"] for r in result.records.values())))
    out.print(stages)
    bench = result.records.get("bench")
    if bench is None:
        return
    report = result.root / bench["outputs"]["report"]
    data = read_report(report)
    table = Table(title=f"Variants (agreement with {reference_label(data)})", title_justify="left")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in summary_rows(data):
        table.add_row(*(row[c] for c in COLUMNS))
    out.print(table)
    out.print(f"report: {report}  ({result.root / bench['outputs']['html']})")


def register(app: typer.Typer) -> None:
    @app.command()
    def pipeline(
        recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe file (.toml or .yaml); "
                                              "default: the built-in recipe (rt2edge/pipeline/default.toml)."),
        out: Path = typer.Option(Path("runs/pipeline"), "--out", help="Run folder, one subfolder per stage."),
        fast: bool = typer.Option(False, "--fast", help="Every stage at its smallest size (a smoke run)."),
        until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage."),
    ) -> None:
        """data -> teacher -> cache -> student -> export -> quantize -> bench, resumable: run the same
        command again to continue after an interruption; a changed recipe section re-runs from there."""
        from rt2edge.pipeline.recipe import load_recipe
        from rt2edge.pipeline.runner import PipelineInterrupted, run_pipeline

        progress = RichProgress()
        start = time.perf_counter()
        with user_errors():
            plan = load_recipe(recipe)
            plan = plan.fast() if fast else plan
            progress.console.print(f"recipe {plan.name!r} ({plan.source}) -> {out}")
            try:
                result = run_pipeline(plan, out, listener=progress, until=until)
            except PipelineInterrupted as exc:
                progress.console.print(f"[yellow]{exc}[/yellow]")
                raise typer.Exit(code=130) from exc
        _print_summary(progress, result, time.perf_counter() - start)
