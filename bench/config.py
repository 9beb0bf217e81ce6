"""BenchConfig: everything `bench.run` needs, validated where it is made, written next to the report.

    cfg = BenchConfig(sources=["runs/ckpt", "runs/artifact"], out="runs/bench")
    report_json = bench.run(cfg)

A checkpoint (rt2edge.json) is benched with every backend in `backends` that takes checkpoints
(eager, hf-generate); an artifact (manifest.json) with the runtime. Sources are told apart by the
file that marks them, never by their name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rt2edge.checks import check_finite, check_int, check_known_keys
from rt2edge.errors import ConfigError

CHECKPOINT_BACKENDS = ("eager", "hf-generate")
ARTIFACT_BACKENDS = ("runtime",)
BASELINE_BACKEND = "hf-generate"  # what ratios are taken against: the loop a user writes first
CONFIG_FILE = "bench_config.json"


@dataclass
class BenchConfig:
    """Options of `rt2edge bench SOURCE... --out REPORT_DIR`.

    Args:
        sources: checkpoint and/or artifact folders to bench.
        out: report folder (bench.json, bench.md, bench.html, bench_config.json).
        backends: backends for checkpoints (eager, hf-generate); artifacts always use runtime.
        steps / warmup: timed control-loop steps per variant, and untimed calls before them.
        rounds: 1 = each variant timed alone, one after the other (its peak memory is its own);
            N > 1 = all variants loaded, their steps timed in N interleaved blocks, so a shared
            machine's changing load hits every variant alike (ratios stay fair on CI runners).
        frames: distinct simulator observations the loop cycles through (and fidelity compares on).
        image_size: simulator camera resolution (the policies resize to their own input size).
        threads: intra-op threads of every backend (ORT sessions, torch).
        providers: runtime backends, best first (cpu, cuda, tensorrt, engine); None = best available.
        target_rates: control rates (Hz) whose deadline-miss rate is reported.
        reference: a checkpoint or artifact every variant's tokens and actions are compared with.
        episodes: closed-loop episodes per split for the success rate (0 = no rollouts).
        max_episode_steps: episode length limit (None = the simulator's).
        seed: fixes the observations and the evaluation scenes.
        machine_budget_s: seconds the roofline probe of this machine may take.
        devices: Jetson profile keys to project onto (None = every built-in profile).
    """

    sources: Sequence[Path]
    out: Path
    backends: Sequence[str] = CHECKPOINT_BACKENDS
    steps: int = 50
    warmup: int = 5
    rounds: int = 1
    frames: int = 16
    image_size: int = 64
    threads: int = 1
    providers: str | None = None
    target_rates: Sequence[float] = (3.0, 5.0, 10.0)
    reference: Path | None = None
    episodes: int = 0
    max_episode_steps: int | None = None
    seed: int = 0
    machine_budget_s: float = 3.0
    devices: Sequence[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into the report

    def __post_init__(self) -> None:
        if isinstance(self.sources, (str, Path)):
            self.sources = [self.sources]
        self.sources = [Path(s) for s in self.sources]
        if not self.sources:
            raise ConfigError("sources", "name at least one checkpoint or artifact folder")
        if len(set(s.resolve() for s in self.sources)) != len(self.sources):
            raise ConfigError("sources", "a source is listed twice")
        self.out = Path(self.out)
        if any(self.out.resolve() == s.resolve() for s in self.sources):
            raise ConfigError("out", "must not be one of the sources (the report would land in it)")
        self.backends = tuple(self.backends)
        unknown = sorted(set(self.backends) - set(CHECKPOINT_BACKENDS))
        if not self.backends or unknown:
            raise ConfigError("backends", f"checkpoint backends must be a non-empty subset of "
                                          f"{list(CHECKPOINT_BACKENDS)}, got {list(self.backends)} "
                                          "(artifacts always run on the runtime)")
        check_int("steps", self.steps, 1, 100_000)
        check_int("warmup", self.warmup, 0, 10_000)
        check_int("rounds", self.rounds, 1, self.steps)
        check_int("frames", self.frames, 1, 10_000)
        check_int("image_size", self.image_size, 8, 1024)
        check_int("threads", self.threads, 1, 256)
        check_int("episodes", self.episodes, 0, 100_000)
        check_int("seed", self.seed, 0, 2**32 - 1)
        if self.max_episode_steps is not None:
            check_int("max_episode_steps", self.max_episode_steps, 1, 10_000)
        rates = tuple(float(r) for r in self.target_rates)
        if not rates or any(not r > 0 for r in rates):
            raise ConfigError("target_rates", f"must be positive control rates in Hz, got {list(rates)}")
        self.target_rates = rates
        check_finite("machine_budget_s", self.machine_budget_s, low=0.0, low_open=True)
        if self.reference is not None:
            self.reference = Path(self.reference)
        if self.devices is not None:
            from bench.devices import load_devices  # refuse an unknown device before hours of timing

            self.devices = tuple(self.devices)
            known = load_devices()
            unknown = [d for d in self.devices if d not in known]
            if not self.devices or unknown:
                raise ConfigError("devices", f"unknown device(s) {unknown}; known: {sorted(known)}")
        if self.providers is not None:
            from rt2edge.runtime.backends import resolve_provider

            for name in str(self.providers).split(","):
                if name.strip():
                    resolve_provider(name.strip())  # ConfigError("providers", ...) names the option

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sources"] = [str(s) for s in self.sources]
        data["out"] = str(self.out)
        data["reference"] = None if self.reference is None else str(self.reference)
        for key in ("backends", "target_rates", "devices"):
            data[key] = None if data[key] is None else list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        check_known_keys(cls, data)
        return cls(**data)
