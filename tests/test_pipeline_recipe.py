"""`rt2edge pipeline` recipes: the built-in one loads, bad ones fail with the field named, and the
runner's skip / resume / invalidation contract (with trivial stage functions: what the runner does
with any stage; tests/test_pipeline.py runs it with the real stages)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rt2edge.cli import app
from rt2edge.errors import ConfigError
from rt2edge.pipeline.checks import check_names
from rt2edge.pipeline.recipe import FAST_OVERRIDES, STAGES, default_recipe, load_recipe, recipe_from_dict
from rt2edge.pipeline.runner import DONE_FILE, STARTED_FILE, NullListener, PipelineInterrupted, run_pipeline


def write(tmp_path: Path, text: str, name: str = "recipe.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_default_recipe_loads_and_fast_shrinks_every_stage() -> None:
    recipe = default_recipe()
    assert recipe.name == "default" and not recipe.teacher.path
    assert {k: v for k, v in recipe.to_dict().items() if k in STAGES} == \
        {k: v for k, v in recipe_from_dict({}).to_dict().items() if k in STAGES}  # an empty recipe = default
    assert recipe.quantize.methods == ["int8-dynamic", "int8-qdq", "int4-matmulnbits", "int4-qdq"]
    from quantize.config import DEFAULT_KEEP

    assert recipe.quantize.keep == list(DEFAULT_KEEP)  # the pipeline keeps what `rt2edge quantize` keeps
    fast = recipe.fast()
    assert set(FAST_OVERRIDES) == set(STAGES)
    for stage, values in FAST_OVERRIDES.items():
        for key, value in values.items():
            assert getattr(fast.section(stage), key) == value
    assert fast.student.students == recipe.student.students  # sizes shrink, choices stay


@pytest.mark.parametrize("text, field", [
    ("[distil]\nsteps = 3\n", "distil"),                       # unknown stage
    ("[student]\nstepz = 3\n", "student.stepz"),               # unknown key
    ("[student]\nsteps = 0\n", "student.steps"),               # bad number
    ("[student]\nlr = -1e-3\n", "student.lr"),
    ("[teacher]\nlr = 0.0\n", "teacher.lr"),                   # open lower bound
    ("[data]\nepisodes = \"ten\"\n", "data.episodes"),         # wrong type
    ("[data]\nepisodes = true\n", "data.episodes"),            # a bool is no count
    ("[data]\nimage_size = 4096\n", "data.image_size"),        # upper bound
    ("[quantize]\nmethods = \"int8-dynamic\"\n", "quantize.methods"),  # a string, not a list
    ("[quantize]\nmethods = [\"int8-dynamic\", 8]\n", "quantize.methods[1]"),
    ("[student]\nloss = \"mse\"\n", "student.loss"),
    ("[student]\nstudents = []\n", "student.students"),
    ("[teacher]\npath = \"/no/such/teacher\"\n", "teacher.path"),
    ("[bench]\ncheckpoint_backends = [\"tensorrt\"]\n", "bench.checkpoint_backends"),
    ("threads = 0\n", "threads"),
    ("[data\n", "recipe"),                                     # not TOML
])
def test_bad_recipe_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, text))
    assert info.value.field == field


def test_the_shipped_policys_deploy_recipe_deploys_it_without_students(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # its teacher.path is relative to the repository root
    recipe = load_recipe(repo / "policies" / "deploy-six-family.toml")
    assert recipe.student.students == [] and Path(recipe.teacher.path).is_dir()
    assert recipe.quantize.keep_sensitive == 2
    check_names(recipe)
    monkeypatch.chdir(repo / "policies")
    with pytest.raises(ConfigError, match="teacher.path"):
        load_recipe(repo / "policies" / "deploy-six-family.toml")


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.toml")


def test_yaml_recipe_equals_toml(tmp_path: Path) -> None:
    toml = load_recipe(write(tmp_path, "[student]\nsteps = 7\nstudents = [\"student-m\"]\n"))
    yaml = load_recipe(write(tmp_path, "student:\n  steps: 7\n  students: [student-m]\n", "recipe.yaml"))
    assert toml.to_dict() == yaml.to_dict()


@pytest.mark.parametrize("stage, values, field", [
    ("quantize", {"methods": ["int3-magic"]}, "quantize.methods"),
    ("quantize", {"methods": ["bnb-nf4"], "keep_sensitive": 2}, "quantize.keep_sensitive"),  # ONNX methods' pass
    ("quantize", {"keep": ["vision", "encoder"]}, "quantize.keep"),
    ("quantize", {"keep": ["language"]}, "quantize.keep"),  # nothing left to quantize
    ("export", {"precision": "fp16"}, "export.precision"),  # the ONNX methods quantize an fp32 export
    ("teacher", {"preset": "giant"}, "teacher.preset"),
    ("student", {"students": ["student-xl"]}, "student.students"),
    ("student", {"students": ["teacher"]}, "student.students"),  # would clash with the teacher's artifact
    ("bench", {"devices": ["jetson-imaginary"]}, "bench.devices"),
])
def test_stage_names_checked_before_any_stage_runs(stage: str, values: dict, field: str, tmp_path: Path) -> None:
    from rt2edge.pipeline.checks import check_names

    check_names(default_recipe())
    with pytest.raises(ConfigError) as info:
        check_names(default_recipe().with_overrides({stage: values}))
    assert info.value.field == field
    with pytest.raises(ConfigError) as info:  # the Python API checks them too, before making --out
        run_pipeline(default_recipe().with_overrides({stage: values}), tmp_path / "run")
    assert info.value.field == field and not (tmp_path / "run").exists()


def test_cli_reports_a_bad_recipe_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["pipeline", "--recipe", str(write(tmp_path, "[student]\nsteps = -5\n")),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "student.steps: must be >= 1" in result.output
    assert not (tmp_path / "run").exists()


def test_pipeline_package_imports_no_torch() -> None:
    code = ("import sys, rt2edge.pipeline, rt2edge.pipeline.recipe, rt2edge.pipeline.runner, "
            "rt2edge.pipeline.summary, rt2edge.pipeline.stages\n"
            "rt2edge.pipeline.default_recipe()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ the runner's own contract
class Stages:
    """Stage functions that write one file and log each call; `interrupt` names a stage that is
    interrupted (Ctrl-C) once, after it wrote its partial file."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.interrupt: str | None = None

    def __getitem__(self, stage: str):
        def fn(ctx):
            self.calls.append(stage)
            folder = ctx.dir(stage)
            (folder / "partial.txt").write_text("x")
            if self.interrupt == stage:
                self.interrupt = None
                raise KeyboardInterrupt
            return {"file": ctx.rel(folder / "partial.txt")}
        return fn

    def __iter__(self):
        return iter(STAGES)

    def __contains__(self, stage: str) -> bool:
        return stage in STAGES


def recipe(**overrides):
    return recipe_from_dict({}).with_overrides(overrides)


def test_runner_skips_done_stages_and_reruns_from_a_changed_section(tmp_path: Path) -> None:
    stages = Stages()
    run_pipeline(recipe(), tmp_path, stages=stages)
    assert stages.calls == list(STAGES)
    stages.calls.clear()
    result = run_pipeline(recipe(), tmp_path, stages=stages)
    assert stages.calls == [] and result.skipped == list(STAGES)
    result = run_pipeline(recipe(cache={"top_k": 8}), tmp_path, stages=stages)
    assert stages.calls == list(STAGES[STAGES.index("cache"):])
    assert result.skipped == list(STAGES[:STAGES.index("cache")])
    done = json.loads((tmp_path / "cache" / DONE_FILE).read_text())
    assert done["how"] == "redo" and done["recipe_section"]["top_k"] == 8


def test_runner_deleted_done_reruns_that_stage_and_the_later_ones(tmp_path: Path) -> None:
    stages = Stages()
    run_pipeline(recipe(), tmp_path, stages=stages)
    before = {s: json.loads((tmp_path / s / DONE_FILE).read_text())["run_id"] for s in STAGES}
    (tmp_path / "export" / DONE_FILE).unlink()
    stages.calls.clear()
    run_pipeline(recipe(), tmp_path, stages=stages)
    assert stages.calls == ["export", "quantize", "bench"]
    after = {s: json.loads((tmp_path / s / DONE_FILE).read_text())["run_id"] for s in STAGES}
    assert [s for s in STAGES if before[s] != after[s]] == ["export", "quantize", "bench"]


def test_runner_resumes_an_interrupted_stage_in_place(tmp_path: Path) -> None:
    stages = Stages()
    stages.interrupt = "student"
    with pytest.raises(PipelineInterrupted, match="student"):
        run_pipeline(recipe(), tmp_path, stages=stages)
    assert (tmp_path / "student" / STARTED_FILE).is_file() and not (tmp_path / "student" / DONE_FILE).exists()
    assert not (tmp_path / "export").exists()
    stages.calls.clear()
    run_pipeline(recipe(), tmp_path, stages=stages)
    assert stages.calls == ["student", "export", "quantize", "bench"]
    assert json.loads((tmp_path / "student" / DONE_FILE).read_text())["how"] == "resume"


def test_runner_wipes_an_interrupted_stage_whose_section_changed(tmp_path: Path) -> None:
    stages = Stages()
    stages.interrupt = "teacher"
    with pytest.raises(PipelineInterrupted):
        run_pipeline(recipe(), tmp_path, stages=stages)
    (tmp_path / "teacher" / "stale.bin").write_text("from the old settings")
    run_pipeline(recipe(teacher={"steps": 5}), tmp_path, stages=stages)
    assert not (tmp_path / "teacher" / "stale.bin").exists()
    assert json.loads((tmp_path / "teacher" / DONE_FILE).read_text())["how"] == "redo"


def test_runner_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("not the pipeline's")
    with pytest.raises(ConfigError) as info:
        run_pipeline(recipe(), tmp_path, stages=Stages())
    assert info.value.field == "out" and (tmp_path / "data" / "mine.txt").is_file()


def test_runner_names_a_stage_config_error_by_its_section(tmp_path: Path) -> None:
    def bad(ctx):
        raise ConfigError("warmup_steps", "must be < steps")

    with pytest.raises(ConfigError) as info:
        run_pipeline(recipe(), tmp_path, stages={"data": bad})
    assert info.value.field == "data.warmup_steps" and str(info.value) == "data.warmup_steps: must be < steps"


def test_runner_until_stops_after_the_stage(tmp_path: Path) -> None:
    stages = Stages()
    result = run_pipeline(recipe(), tmp_path, stages=stages, until="cache")
    assert result.ran == ["data", "teacher", "cache"] and not (tmp_path / "student").exists()
    with pytest.raises(ConfigError) as info:
        run_pipeline(recipe(), tmp_path, stages=stages, until="deploy")
    assert info.value.field == "until"


def test_runner_skips_what_deploying_a_trained_teacher_does_not_need(tmp_path: Path) -> None:
    from rt2edge.pipeline.stages import skip_reason

    teacher = tmp_path / "my-teacher"
    teacher.mkdir()
    root = tmp_path / "run"
    deploy = recipe(teacher={"path": str(teacher)}, student={"students": []})
    stages = Stages()

    class Hows(NullListener):
        seen: dict[str, str] = {}

        def stage_started(self, index, total, stage, how):
            self.seen[stage] = how

    run_pipeline(deploy, root, stages=stages, skip=skip_reason, listener=Hows())
    assert stages.calls == ["teacher", "export", "quantize", "bench"]
    assert Hows.seen == {"data": "skip", "teacher": "fresh", "cache": "skip", "student": "skip",
                         "export": "fresh", "quantize": "fresh", "bench": "fresh"}
    for stage in ("data", "cache", "student"):
        assert json.loads((root / stage / DONE_FILE).read_text())["outputs"] == {"skipped": skip_reason(stage, deploy)}
    # settings of the skipped stages are unused: changing them re-runs nothing
    stages.calls.clear()
    unused = deploy.with_overrides({"data": {"episodes": 7}, "cache": {"top_k": 8}, "student": {"steps": 9}})
    assert run_pipeline(unused, root, stages=stages, skip=skip_reason).ran == [] and stages.calls == []
    # naming a student turns the skips off: the dataset, the cache and the student are made
    run_pipeline(unused.with_overrides({"student": {"students": ["student-s"]}}), root, stages=stages,
                 skip=skip_reason)
    assert stages.calls == list(STAGES)
