"""Names in a recipe that only a stage knows, checked before the first stage runs: a typo in the
quantize section fails in a second, not after the teacher trained for ten minutes.

The stage registries are imported here (lazily, like the stage functions do): model presets
(rt2edge.models, torch), quantization methods (quantize.registry), Jetson profiles (bench.devices).
"""

from __future__ import annotations

from pathlib import Path

from rt2edge.errors import ConfigError
from rt2edge.pipeline.recipe import Recipe


def _check_model(field: str, name: str, presets: list[str]) -> None:
    if name not in presets and not Path(name).is_dir():
        raise ConfigError(field, f"{name!r} is neither a preset ({', '.join(presets)}) nor a checkpoint folder")


def check_names(recipe: Recipe) -> None:
    from rt2edge.models.presets import PRESETS

    presets = sorted(PRESETS)
    if not recipe.teacher.path:
        if recipe.teacher.preset not in presets:
            raise ConfigError("teacher.preset", f"unknown preset {recipe.teacher.preset!r}; presets: {presets}")
    for name in recipe.student.students:
        _check_model("student.students", name, presets)
    from rt2edge.pipeline.stages import student_name

    names = [student_name(s) for s in recipe.student.students]
    if "teacher" in names or len(set(names)) != len(names):
        raise ConfigError("student.students", f"student folder names must be distinct and not 'teacher', "
                                              f"got {names}")

    from quantize.registry import get_method, known_methods

    methods = known_methods()
    unknown = [m for m in recipe.quantize.methods if m not in methods]
    if unknown:
        raise ConfigError("quantize.methods", f"unknown methods {unknown}; known: {methods}")
    from quantize.config import check_keep_groups

    check_keep_groups(recipe.quantize.keep, "quantize.keep")
    onnx_methods = [m for m in recipe.quantize.methods if get_method(m).reads_artifact]
    if onnx_methods and recipe.export.precision != "fp32":
        from quantize.onnx_artifact import SOURCE_PRECISIONS

        raise ConfigError("export.precision", f"the ONNX methods {onnx_methods} quantize an fp32 export "
                                              f"({list(SOURCE_PRECISIONS)}), got {recipe.export.precision!r}")
    if recipe.quantize.keep_sensitive and not onnx_methods:
        raise ConfigError("quantize.keep_sensitive", "the per-layer sensitivity pass is for the ONNX methods; "
                                                     f"{recipe.quantize.methods} are all bitsandbytes ones")

    if recipe.bench.devices:
        from bench.devices import load_devices

        known = sorted(load_devices())
        unknown = [d for d in recipe.bench.devices if d not in known]
        if unknown:
            raise ConfigError("bench.devices", f"unknown Jetson profiles {unknown}; known: {known}")
