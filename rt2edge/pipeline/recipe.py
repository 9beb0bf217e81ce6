"""Recipe: what `rt2edge pipeline` runs, one section per stage, read from TOML (or YAML).

    recipe = load_recipe("my_recipe.toml")      # or default_recipe()
    recipe.section("student")                   # -> StudentSection
    recipe.section_dict("student")              # what the stage's fingerprint hashes

Validation here is structural and torch-free: unknown stages and keys, wrong types and bad numbers
raise ConfigError naming `section.key`. Names that only a stage knows (model presets, quantization
methods, Jetson profiles) are checked by `rt2edge.pipeline.checks.check_names` before the first
stage runs, and every value is checked again by the stage's own config when it is built.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from rt2edge.checks import check_finite, check_range, is_int
from rt2edge.errors import ConfigError

DEFAULT_RECIPE = Path(__file__).with_name("default.toml")


def _num(low: float | None = None, high: float | None = None, *, open_low: bool = False) -> dict[str, Any]:
    return {"low": low, "high": high, "open_low": open_low}


# Each section is a flat table of scalars / lists; the defaults are default.toml's (a test keeps
# them equal), so a user's recipe only needs the keys it changes. Bounds live in field metadata so one checker
# covers every section; the stage configs repeat the finer rules (e.g. warmup < steps).
@dataclass(frozen=True)
class DataSection:
    episodes: int = field(default=120, metadata=_num(1))
    seed: int = field(default=0, metadata=_num(0))
    image_size: int = field(default=64, metadata=_num(16, 1024))
    families: list[str] = field(default_factory=list)  # empty: every task family
    object_counts: list[int] = field(default_factory=lambda: [3, 4])
    max_steps: int = field(default=60, metadata=_num(1))
    action_noise: float = field(default=0.0, metadata=_num(0.0, 1.0))


@dataclass(frozen=True)
class TeacherSection:
    path: str = ""  # an existing teacher checkpoint: used as is, nothing is trained
    preset: str = "student-m"
    steps: int = field(default=200, metadata=_num(1))
    batch_size: int = field(default=8, metadata=_num(1))
    lr: float = field(default=3e-4, metadata=_num(0.0, open_low=True))
    vqa_ratio: float = field(default=0.2, metadata=_num(0.0, 0.99))
    vqa_pool_size: int = field(default=256, metadata=_num(1))
    seed: int = field(default=0, metadata=_num(0))


@dataclass(frozen=True)
class CacheSection:
    top_k: int = field(default=0, metadata=_num(0))  # 0: keep all 256 bins
    max_frames: int = field(default=0, metadata=_num(0))  # 0: every frame of the dataset
    batch_size: int = field(default=32, metadata=_num(1))
    greedy: bool = True


@dataclass(frozen=True)
class StudentSection:
    # presets or checkpoint folders; []: no distillation, the teacher itself is deployed
    students: list[str] = field(default_factory=lambda: ["student-s"])
    steps: int = field(default=200, metadata=_num(1))
    batch_size: int = field(default=16, metadata=_num(1))
    lr: float = field(default=1e-3, metadata=_num(0.0, open_low=True))
    loss: str = "kl"
    temperature: float = field(default=2.0, metadata=_num(0.0, open_low=True))
    alpha: float = field(default=0.5, metadata=_num(0.0, 1.0))
    vqa_ratio: float = field(default=0.2, metadata=_num(0.0, 0.99))
    vqa_pool_size: int = field(default=256, metadata=_num(1))
    seed: int = field(default=0, metadata=_num(0))


@dataclass(frozen=True)
class ExportSection:
    target: str = "onnxruntime"  # fused decoder (ONNX Runtime ops); "onnx" plain, "tensorrt"
    precision: str = "fp32"
    validate_frames: int = field(default=4, metadata=_num(1))
    teacher: bool = True  # also export (and bench) the teacher; always, when it is the deployed model


@dataclass(frozen=True)
class QuantizeSection:
    methods: list[str] = field(default_factory=lambda: ["int8-dynamic", "int8-qdq", "int4-matmulnbits", "int4-qdq"])
    # module groups left unquantized (quantize.config.MODULE_GROUPS); ["head"] also quantizes vision + projector
    keep: list[str] = field(default_factory=lambda: ["vision", "projector", "head"])
    keep_sensitive: int = field(default=0, metadata=_num(0))  # ONNX methods: most sensitive layers kept fp32
    calibration_frames: int = field(default=16, metadata=_num(1))
    holdout_frames: int = field(default=32, metadata=_num(1))
    seed: int = field(default=0, metadata=_num(0))


@dataclass(frozen=True)
class BenchSection:
    steps: int = field(default=40, metadata=_num(1))
    warmup: int = field(default=5, metadata=_num(0))
    frames: int = field(default=16, metadata=_num(1))
    episodes: int = field(default=2, metadata=_num(0))  # closed-loop episodes per split
    max_episode_steps: int = field(default=40, metadata=_num(0))  # 0: the simulator's limit
    checkpoint_backends: list[str] = field(default_factory=lambda: ["hf-generate"])  # [] = artifacts only
    devices: list[str] = field(default_factory=list)  # Jetson profiles to project on; [] = all
    machine_budget_s: float = field(default=2.0, metadata=_num(0.0, open_low=True))
    seed: int = field(default=0, metadata=_num(0))


# Stage order is the run order; a stage's fingerprint chains the one before it.
SECTIONS: dict[str, type] = {
    "data": DataSection, "teacher": TeacherSection, "cache": CacheSection, "student": StudentSection,
    "export": ExportSection, "quantize": QuantizeSection, "bench": BenchSection,
}
STAGES: tuple[str, ...] = tuple(SECTIONS)
TOP_LEVEL = {"name": str, "threads": int}

# `--fast`: every stage at the smallest size that still exercises it (a smoke run in a few
# minutes); the choices (teacher, students, methods) stay the recipe's own.
FAST_OVERRIDES: dict[str, dict[str, Any]] = {
    "data": {"episodes": 8},
    "teacher": {"steps": 10, "batch_size": 8, "vqa_pool_size": 32},
    "cache": {"max_frames": 128},
    "student": {"steps": 10, "batch_size": 8, "vqa_pool_size": 32},
    "export": {"validate_frames": 2},
    "quantize": {"calibration_frames": 4, "holdout_frames": 8},
    "bench": {"steps": 10, "warmup": 2, "frames": 4, "episodes": 1, "max_episode_steps": 20,
              "machine_budget_s": 0.5},
}


@dataclass(frozen=True)
class Recipe:
    name: str
    threads: int
    data: DataSection
    teacher: TeacherSection
    cache: CacheSection
    student: StudentSection
    export: ExportSection
    quantize: QuantizeSection
    bench: BenchSection
    source: str = ""  # the file it was read from

    def section(self, stage: str) -> Any:
        if stage not in SECTIONS:
            raise ConfigError("stage", f"unknown stage {stage!r}; stages: {list(STAGES)}")
        return getattr(self, stage)

    def section_dict(self, stage: str) -> dict[str, Any]:
        return asdict(self.section(stage))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "threads": self.threads, **{s: self.section_dict(s) for s in STAGES}}

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> Recipe:
        """A copy with some keys replaced (validated like a file would be)."""
        merged = self.to_dict()
        for stage, values in overrides.items():
            if stage not in SECTIONS:
                raise ConfigError(stage, f"unknown stage; stages: {list(STAGES)}")
            merged[stage] = {**merged[stage], **values}
        return recipe_from_dict(merged, self.source)

    def fast(self) -> Recipe:
        return replace(self.with_overrides(FAST_OVERRIDES), name=f"{self.name}-fast")


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


def _check_value(where: str, kind: Any, value: Any, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(where, f"must be a list of {_type_name(item)}, got {value!r}")
        return [_check_value(f"{where}[{i}]", item, v, {}) for i, v in enumerate(value)]
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"must be true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"must be a string, got {value!r}")
        return value
    if kind is int and not is_int(value):
        raise ConfigError(where, f"must be an integer, got {value!r}")
    if kind is float:
        check_finite(where, value)
        value = float(value)
    check_range(where, value, meta.get("low"), meta.get("high"), bool(meta.get("open_low")))
    return value


def _section(stage: str, table: Any) -> Any:
    cls = SECTIONS[stage]
    if not isinstance(table, Mapping):
        raise ConfigError(stage, f"must be a table of settings, got {table!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{stage}.{unknown[0]}", f"unknown setting; [{stage}] takes {sorted(known)}")
    values = {name: _check_value(f"{stage}.{name}", hints[name], value, known[name].metadata)
              for name, value in table.items()}
    return cls(**values)


def recipe_from_dict(data: Mapping[str, Any], source: str = "") -> Recipe:
    if not isinstance(data, Mapping):
        raise ConfigError("recipe", f"must be a table of stages, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(unknown[0], f"unknown stage; a recipe has [{'], ['.join(STAGES)}] and "
                                      f"the top-level keys {sorted(TOP_LEVEL)}")
    name = _check_value("name", str, data.get("name", "recipe"), {})
    threads = _check_value("threads", int, data.get("threads", 2), _num(1, 256))
    sections = {stage: _section(stage, data.get(stage, {})) for stage in STAGES}
    _check_choices(sections)
    return Recipe(name=name, threads=threads, source=source, **sections)


def _check_choices(sections: Mapping[str, Any]) -> None:
    """The few closed choices that need no stage import (the stages check them again)."""
    teacher, student = sections["teacher"], sections["student"]
    if not teacher.path and not teacher.preset:
        raise ConfigError("teacher.preset", "set a preset to train, or `path` to an existing teacher")
    if teacher.path and not Path(teacher.path).is_dir():
        raise ConfigError("teacher.path", f"teacher checkpoint {teacher.path!r} does not exist")
    if not student.students and not teacher.path:
        raise ConfigError("student.students", "name at least one student (a preset or a checkpoint); "
                                              "[] deploys the teacher itself and needs `teacher.path`")
    if len(set(student.students)) != len(student.students):
        raise ConfigError("student.students", f"a student is listed twice: {student.students}")
    if student.loss not in ("kl", "rkl", "jsd"):
        raise ConfigError("student.loss", f"must be one of kl, rkl, jsd; got {student.loss!r}")
    if sections["export"].precision not in ("fp32", "fp16"):
        raise ConfigError("export.precision", f"must be fp32 or fp16, got {sections['export'].precision!r}")
    methods = sections["quantize"].methods
    if len(set(methods)) != len(methods):
        raise ConfigError("quantize.methods", f"a method is listed twice: {methods}")
    backends = sections["bench"].checkpoint_backends
    bad = [b for b in backends if b not in ("eager", "hf-generate")]
    if bad:
        raise ConfigError("bench.checkpoint_backends", f"unknown backends {bad}; known: eager, hf-generate")


def _parse(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        from rt2edge.optional import require

        yaml = require("yaml", extra="toolkit", purpose="YAML recipes (or write the recipe in TOML)")
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("recipe", f"{path}: not valid YAML: {exc}") from None
    from rt2edge.optional import require_toml

    toml = require_toml("TOML recipes")
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise ConfigError("recipe", f"{path}: not valid TOML: {exc}") from None


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Read and validate a recipe file; None: the built-in default recipe."""
    file = DEFAULT_RECIPE if path is None else Path(path)
    if not file.is_file():
        raise ConfigError("recipe", f"{file}: no such recipe file")
    return recipe_from_dict(_parse(file), str(file))


def default_recipe() -> Recipe:
    return load_recipe(None)


__all__ = ["Recipe", "STAGES", "SECTIONS", "FAST_OVERRIDES", "load_recipe", "default_recipe",
           "recipe_from_dict"]
