"""The pipeline's stage functions: each turns its recipe section into the stage's own config and
calls the stage's one entry function. Stages are imported inside the functions (DESIGN.md rule 2:
rt2edge depends on no stage), so `import rt2edge.pipeline` stays torch-free.

Folder layout under the run folder (what each stage returns as outputs, relative to it):
    data/dataset                         episodes (rt2edge.data.generate)
    teacher/checkpoint                   co-fine-tuned teacher (distill.finetune), or recipe's path
    cache/cache                          teacher's action-bin distributions (distill.cache)
    student/<name>                       distilled student checkpoints (distill.kd)
    export/<model>-fp32                  deploy artifacts of the teacher and the students (export)
    quantize/<model>-<method>            quantized artifacts of the deployed models (quantize)
    quantize/<model>-fp32-tensorrt       the TensorRT-target export that int4-qdq reads, when the export
                                         stage's target is another (re-made with the quantize stage)
    bench/bench.json|.md|.html           the report (bench), fidelity vs the first deployed fp32 model
The deployed models are the students; with `student.students = []` (a trained teacher of the
user's own, `teacher.path`) the teacher itself is deployed and the runner skips the data, cache
and student stages (skip_reason). Distinct folder names matter: bench labels a variant by its folder name.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Mapping

from rt2edge.artifact import MANIFEST_FILE
from rt2edge.errors import ConfigError, ExportValidationError
from rt2edge.models.checkpoint import METADATA_FILE as CHECKPOINT_METADATA
from rt2edge.pipeline.recipe import Recipe
from rt2edge.pipeline.runner import PipelineInterrupted, StageContext

CHECKPOINT_MARKER = CHECKPOINT_METADATA  # written last by a finished training run (publish_checkpoint)
ARTIFACT_MARKER = MANIFEST_FILE  # an artifact folder appears whole (renamed into place)
QUANTIZE_MARKER = "quantize_report.json"


def _threads(recipe: Recipe) -> None:
    import torch

    torch.set_num_threads(recipe.threads)


def student_name(student: str) -> str:
    """The folder name of a student: a preset's name, or a checkpoint folder's own name."""
    return Path(student).name if ("/" in student or Path(student).is_dir()) else student


def _training_done(result: Any, stage: str, out: Path) -> dict[str, Any]:
    if not result.completed:
        raise PipelineInterrupted(stage, f"{out} stopped at step {result.step}")
    # The optimizer state (3x the weights) only serves to continue an unfinished run, which the
    # pipeline never does with a finished one; without it the run folder is the checkpoint a
    # robot team ships, and bench's size column measures that.
    from distill.finetune.checkpointing import STATE_DIRNAME

    shutil.rmtree(out / STATE_DIRNAME, ignore_errors=True)
    loss = (result.last_log or {}).get("loss")
    return {"steps": result.step, "final_loss": loss}


def skip_reason(stage: str, recipe: Recipe) -> str | None:
    """Why `recipe` does not need `stage` (the runner skips it), or None."""
    distils = bool(recipe.student.students)
    if stage == "data" and recipe.teacher.path and not distils:
        return "nothing is trained: the teacher is the user's own and no student is distilled"
    if stage in ("cache", "student") and not distils:
        return "no students to distil: the teacher itself is deployed"
    return None


def deployed(ctx: StageContext) -> dict[str, str]:
    """The models that are exported, quantized and benched, name -> checkpoint path as the stage
    outputs hold it (relative to the run folder, or absolute for a teacher of the user's own)."""
    students = ctx.outputs["student"].get("students")
    if students:
        return {name: info["checkpoint"] for name, info in students.items()}
    return {"teacher": ctx.outputs["teacher"]["checkpoint"]}


def data(ctx: StageContext) -> dict[str, Any]:
    from rt2edge.data.generate import GenerateConfig, generate

    s = ctx.recipe.data
    out = ctx.dir("data") / "dataset"
    cfg = GenerateConfig(out=str(out), episodes=s.episodes, seed=s.seed, image_size=s.image_size,
                         families=tuple(s.families) or None, object_counts=tuple(s.object_counts),
                         max_steps=s.max_steps, action_noise=s.action_noise)
    report = generate(cfg, progress=lambda done, total: ctx.status(f"episodes {done}/{total}"))
    return {"dataset": ctx.rel(out), "episodes": report.episodes, "frames": report.frames,
            "expert_success_rate": report.expert_success_rate}


def teacher(ctx: StageContext) -> dict[str, Any]:
    s = ctx.recipe.teacher
    if s.path:  # the user's own teacher: nothing to train, later stages read it where it is
        return {"checkpoint": str(Path(s.path).resolve()), "trained": False}
    from distill.finetune import FinetuneConfig, run

    _threads(ctx.recipe)
    out = ctx.dir("teacher") / "checkpoint"
    cfg = FinetuneConfig(data=str(ctx.path("data", "dataset")), out=str(out), preset=s.preset, steps=s.steps,
                         batch_size=s.batch_size, lr=s.lr, vqa_ratio=s.vqa_ratio, vqa_pool_size=s.vqa_pool_size,
                         seed=s.seed, checkpoint_every=max(1, min(50, s.steps)))
    result = run(cfg)
    return {"checkpoint": ctx.rel(out), "trained": True, **_training_done(result, "teacher", out)}


def cache(ctx: StageContext) -> dict[str, Any]:
    from distill.cache import CacheConfig, run

    s = ctx.recipe.cache
    _threads(ctx.recipe)
    out = ctx.dir("cache") / "cache"
    result = run(CacheConfig(teacher=str(ctx.path("teacher", "checkpoint")), data=str(ctx.path("data", "dataset")),
                             out=str(out), top_k=s.top_k or None, max_frames=s.max_frames or None,
                             batch_size=s.batch_size, greedy=s.greedy))
    return {"cache": ctx.rel(out), "frames": result.frames, "bytes": result.bytes}


def student(ctx: StageContext) -> dict[str, Any]:
    from distill.kd import DistillConfig, run

    s = ctx.recipe.student
    _threads(ctx.recipe)
    students: dict[str, Any] = {}
    for i, name in enumerate(s.students, start=1):
        key = student_name(name)
        out = ctx.dir("student") / key
        ctx.status(f"student {i}/{len(s.students)}: {name}")
        if (out / CHECKPOINT_MARKER).is_file():  # finished in an interrupted earlier run
            students[key] = {"checkpoint": ctx.rel(out), "reused": True}
            continue
        cfg = DistillConfig(cache=str(ctx.path("cache", "cache")), out=str(out), student=name, steps=s.steps,
                            batch_size=s.batch_size, lr=s.lr, loss=s.loss, temperature=s.temperature,
                            alpha=s.alpha, vqa_ratio=s.vqa_ratio, vqa_pool_size=s.vqa_pool_size, seed=s.seed,
                            checkpoint_every=max(1, min(50, s.steps)))
        students[key] = {"checkpoint": ctx.rel(out), **_training_done(run(cfg), "student", out)}
    return {"students": students}


def _export_artifact(ctx: StageContext, checkpoint: Path, out: Path, target: str) -> str:
    """`checkpoint` exported for `target` into `out` (kept from an interrupted earlier run)."""
    from export import ExportConfig, run

    s = ctx.recipe.export
    if not (out / ARTIFACT_MARKER).is_file():
        run(ExportConfig(checkpoint=checkpoint, out=out, target=target, precision=s.precision,
                         validate_frames=s.validate_frames))
    return ctx.rel(out)


def export(ctx: StageContext) -> dict[str, Any]:
    s = ctx.recipe.export
    _threads(ctx.recipe)
    models = {name: ctx.root / checkpoint for name, checkpoint in deployed(ctx).items()}
    if s.teacher and "teacher" not in models:
        models = {"teacher": ctx.root / ctx.outputs["teacher"]["checkpoint"], **models}
    artifacts: dict[str, str] = {}
    for i, (name, checkpoint) in enumerate(models.items(), start=1):
        ctx.status(f"exporting {name} ({i}/{len(models)})")
        artifacts[name] = _export_artifact(ctx, checkpoint, ctx.dir("export") / f"{name}-{s.precision}", s.target)
    return {"artifacts": artifacts}


def quantize(ctx: StageContext) -> dict[str, Any]:
    from quantize import QuantizeConfig, run
    from quantize.onnx_artifact import source_target
    from quantize.registry import get_method

    s = ctx.recipe.quantize
    models = deployed(ctx)
    artifacts = ctx.outputs["export"]["artifacts"]
    jobs = [(name, method) for name in models for method in s.methods]
    variants: dict[str, dict[str, str]] = {}
    exports: dict[str, str] = {}  # exports for another target, made here for a method that needs one
    for i, (name, method) in enumerate(jobs, start=1):
        out = ctx.dir("quantize") / f"{name}-{method}"
        ctx.status(f"{method} on {name} ({i}/{len(jobs)})")
        # ONNX methods quantize the exported artifact, bitsandbytes ones the torch checkpoint
        # (the sensitivity pass that keeps layers in fp32 is the ONNX methods' own).
        spec = get_method(method)
        onnx = spec.reads_artifact
        source = artifacts[name] if onnx else models[name]
        # A method whose output is for TensorRT (int4-qdq) needs the plain graphs and optimization
        # profiles of a TensorRT-target export, which an "onnxruntime" (fused) or "onnx" export
        # lacks: it quantizes a TensorRT-target export of the same model, which bench runs too.
        needed = source_target(spec.targets[0] if spec.targets else None) if onnx else None
        if needed and needed != ctx.recipe.export.target:
            key = f"{name}-{ctx.recipe.export.precision}-{needed}"
            if key not in exports:
                ctx.status(f"exporting {name} for target {needed} ({method} needs it)")
                _threads(ctx.recipe)
                try:
                    exports[key] = _export_artifact(ctx, ctx.root / models[name], ctx.dir("quantize") / key, needed)
                except ExportValidationError as exc:
                    raise ConfigError("quantize.methods", f"{method} quantizes a {needed}-target export of {name}, "
                                                          f"which failed ({exc}); drop {method} from the methods"
                                      ) from exc
            source = exports[key]
        if not (out / QUANTIZE_MARKER).is_file():
            run(QuantizeConfig(source=ctx.root / source, out=out, method=method, keep_groups=tuple(s.keep),
                               keep_sensitive=s.keep_sensitive if onnx else 0,
                               calibration_frames=s.calibration_frames, holdout_frames=s.holdout_frames,
                               seed=s.seed, threads=ctx.recipe.threads))
        variants[f"{name}-{method}"] = {"path": ctx.rel(out), "model": name, "method": method}
    return {"variants": variants, "exports": exports}


def bench(ctx: StageContext) -> dict[str, Any]:
    from bench import BenchConfig, run

    s = ctx.recipe.bench
    models = deployed(ctx)
    artifacts = ctx.outputs["export"]["artifacts"]
    sources = [ctx.root / checkpoint for checkpoint in models.values()] if s.checkpoint_backends else []
    sources += [ctx.root / rel for rel in artifacts.values()]
    sources += [ctx.root / rel for rel in ctx.outputs["quantize"].get("exports", {}).values()]
    sources += [ctx.root / v["path"] for v in ctx.outputs["quantize"]["variants"].values()]
    # Fidelity is measured against the first deployed model's fp32 artifact: what quantization must keep.
    reference = ctx.root / artifacts[next(iter(models))]
    ctx.status(f"{len(sources)} sources, {s.steps} steps each" + (f", {s.episodes} episodes per split"
                                                                  if s.episodes else ""))
    cfg = BenchConfig(sources=sources, out=ctx.dir("bench"), backends=s.checkpoint_backends or ["eager"],
                      steps=s.steps, warmup=s.warmup, frames=s.frames, threads=1, reference=reference,
                      episodes=s.episodes, max_episode_steps=s.max_episode_steps or None, seed=s.seed,
                      machine_budget_s=s.machine_budget_s, devices=s.devices or None,
                      extra={"pipeline_recipe": ctx.recipe.name})
    report = run(cfg)
    return {"report": ctx.rel(Path(report)), "markdown": ctx.rel(Path(report).with_suffix(".md")),
            "html": ctx.rel(Path(report).with_suffix(".html")), "reference": ctx.rel(reference)}


STAGE_FUNCTIONS = {"data": data, "teacher": teacher, "cache": cache, "student": student, "export": export,
                   "quantize": quantize, "bench": bench}


def _folder_digest(folder: Path) -> str:
    """Names, sizes and mtimes of a folder's files: a changed external checkpoint re-runs the
    stages that read it, without hashing gigabytes of weights on every run."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def extra_inputs(stage: str, recipe: Recipe) -> Mapping[str, Any]:
    """Inputs of a stage that are not in its recipe section (files outside the run folder)."""
    if stage == "teacher" and recipe.teacher.path:
        folder = Path(recipe.teacher.path)
        if not folder.is_dir():
            raise ConfigError("teacher.path", f"teacher checkpoint {str(folder)!r} does not exist")
        return {"teacher_files": _folder_digest(folder)}
    if stage == "student":
        return {s: _folder_digest(Path(s)) for s in recipe.student.students if Path(s).is_dir()}
    return {}
