"""`rt2edge pipeline`: the main job in one command, resumable.

    from rt2edge.pipeline import load_recipe, run_pipeline
    result = run_pipeline(load_recipe("recipe.toml"), "runs/pipeline")

data -> teacher -> cache -> student(s) -> export -> quantize -> bench, each stage in its own
folder with a `.done.json` (runner.py), configured by a recipe (recipe.py, default.toml). The
stages are imported inside the stage functions (stages.py), so this package imports no torch.
"""

from __future__ import annotations

from rt2edge.lazy import lazy_getattr

_EXPORTS = {
    "Recipe": "rt2edge.pipeline.recipe", "load_recipe": "rt2edge.pipeline.recipe",
    "default_recipe": "rt2edge.pipeline.recipe", "recipe_from_dict": "rt2edge.pipeline.recipe",
    "STAGES": "rt2edge.pipeline.recipe",
    "run_pipeline": "rt2edge.pipeline.runner", "PipelineInterrupted": "rt2edge.pipeline.runner",
    "PipelineResult": "rt2edge.pipeline.runner",
    "check_names": "rt2edge.pipeline.checks",
    "summary_rows": "rt2edge.pipeline.summary", "read_report": "rt2edge.pipeline.summary",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr("rt2edge.pipeline", _EXPORTS)
