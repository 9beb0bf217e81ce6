"""`rt2edge bench SOURCE... --out REPORT_DIR` and `rt2edge bench compare OLD.json NEW.json`.

The first benches checkpoints (eager, hf-generate) and artifacts (runtime) in a closed control
loop on simulator frames and writes bench.json / bench.md / bench.html; the second compares two
reports and exits 1 on a regression (for CI). `bench run ...` is the explicit spelling of the
first; a first argument that is not a subcommand is taken as a source. The bench stage is
imported inside the commands, so `rt2edge --help` stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer
from typer.core import TyperGroup

from rt2edge.commands import bad_option, user_errors
from rt2edge.errors import ConfigError

ALIASES = {"target_rates": "rates"}  # BenchConfig fields whose option has another name


class RunByDefault(TyperGroup):
    """`rt2edge bench ARTIFACT ...` means `rt2edge bench run ARTIFACT ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _csv(text: Optional[str]) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _rates(text: str) -> list[float]:
    try:
        return [float(r) for r in _csv(text) or []]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint="--rates") from None


def _summary(path: Path) -> dict[str, Any]:
    report = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for v in report["variants"]:
        t = v["timing"]
        row = {"variant": v["label"], "provider": v["provider"], "hz_median": round(t["hz_median"], 2),
               "p99_ms": round(t["latency"]["p99_s"] * 1e3, 3),
               "decoder_roofline_fraction": (v["roofline"]["stages"].get("decode") or {}).get("fraction")}
        row["cpu_share"] = None if t.get("cpu_share") is None else round(t["cpu_share"], 2)
        if v.get("ratios"):
            row[f"hz_vs_{report['baseline']}"] = round(v["ratios"]["hz_median"], 2)
            if "hz_cpu_median" in v["ratios"]:
                row[f"cpu_hz_vs_{report['baseline']}"] = round(v["ratios"]["hz_cpu_median"], 2)
        rows.append(row)
    return {"report": str(path), "html": str(path.with_suffix(".html")), "variants": rows}


def register(app: typer.Typer) -> None:
    bench_app = typer.Typer(cls=RunByDefault, no_args_is_help=True, add_completion=False,
                            help="Control-frequency benchmark of checkpoints and artifacts; compare reports.")

    @bench_app.command("run")
    def bench_run(
        sources: List[Path] = typer.Argument(..., help="Checkpoint and/or artifact folders."),
        out: Path = typer.Option(..., "--out", help="Report folder: bench.json, bench.md, bench.html."),
        backends: str = typer.Option("eager,hf-generate", "--backends",
                                     help="Checkpoint backends (artifacts always run on the runtime)."),
        steps: int = typer.Option(50, "--steps", help="Timed control-loop steps per variant."),
        warmup: int = typer.Option(5, "--warmup", help="Untimed calls before them."),
        rounds: int = typer.Option(1, "--rounds", help="N > 1: variants timed in N interleaved blocks "
                                                      "(fair ratios on a shared machine)."),
        frames: int = typer.Option(16, "--frames", help="Simulator frames the loop cycles through."),
        threads: int = typer.Option(1, "--threads", help="Intra-op threads of every backend."),
        providers: Optional[str] = typer.Option(None, "--providers", help="Runtime backends, best first."),
        rates: str = typer.Option("3,5,10", "--rates", help="Control rates (Hz) for deadline-miss rates."),
        reference: Optional[Path] = typer.Option(None, "--reference",
                                                 help="Checkpoint/artifact to measure token agreement against."),
        episodes: int = typer.Option(0, "--episodes", help="Closed-loop episodes per split (0: none)."),
        max_episode_steps: Optional[int] = typer.Option(None, "--max-episode-steps", help="Episode limit."),
        seed: int = typer.Option(0, "--seed", help="Fixes the frames and the evaluation scenes."),
        devices: Optional[str] = typer.Option(None, "--devices", help="Jetson profiles to project onto."),
        machine_budget_s: float = typer.Option(3.0, "--machine-budget-s", help="Seconds for the roofline probe."),
    ) -> None:
        """Bench each source in a closed control loop; write JSON + Markdown + HTML reports."""
        from bench import BenchConfig, run

        try:
            cfg = BenchConfig(sources=sources, out=out, backends=_csv(backends) or [], steps=steps, warmup=warmup,
                              rounds=rounds, frames=frames, threads=threads, providers=providers,
                              target_rates=_rates(rates), reference=reference, episodes=episodes,
                              max_episode_steps=max_episode_steps, seed=seed, devices=_csv(devices),
                              machine_budget_s=machine_budget_s)
        except ConfigError as exc:
            raise bad_option(exc, ALIASES) from exc
        with user_errors():
            try:
                path = run(cfg)
            except ConfigError as exc:
                raise bad_option(exc, ALIASES) from exc
        typer.echo(json.dumps(_summary(path), indent=2))

    @bench_app.command("compare")
    def bench_compare(
        old: Path = typer.Argument(..., help="The earlier bench.json (or its folder)."),
        new: Path = typer.Argument(..., help="The later bench.json (or its folder)."),
        threshold: float = typer.Option(0.1, "--threshold", help="Relative change that counts as a regression."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Flag regressions (Hz down, p99 up, agreement or success down beyond --threshold); exit 1 on one."""
        from bench import compare_reports, load_report

        with user_errors():
            try:
                result = compare_reports(load_report(old), load_report(new), threshold)
            except ConfigError as exc:
                raise bad_option(exc) from exc
        typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.format_table())
        if result.regressed:
            raise typer.Exit(code=1)

    app.add_typer(bench_app, name="bench")
