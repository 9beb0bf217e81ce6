"""`rt2edge pipeline` end to end with the real stages at their smallest sizes: every stage runs, the
summary table prints, a re-run reuses everything, a deleted `.done.json` re-runs that stage and
the later ones, a changed recipe section re-runs from its stage. The full default recipe (about
15 min on 2 cores) is the documented command `rt2edge pipeline`, not a unit test."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rt2edge.artifact import MANIFEST_FILE
from rt2edge.cli import app
from rt2edge.pipeline.recipe import STAGES, load_recipe
from rt2edge.pipeline.runner import DONE_FILE, run_pipeline
from rt2edge.pipeline.summary import read_report, summary_rows

pytestmark = pytest.mark.slow

TINY = """
name = "tiny"
threads = 1
[data]
episodes = 3
[teacher]
preset = "student-s"
steps = 3
batch_size = 4
vqa_pool_size = 16
[cache]
max_frames = 32
[student]
students = ["student-s"]
steps = 3
batch_size = 4
vqa_pool_size = 16
[export]
validate_frames = 1
[quantize]
methods = ["int8-dynamic", "int4-matmulnbits"]
calibration_frames = 2
holdout_frames = 4
[bench]
steps = 3
warmup = 1
frames = 2
episodes = 1
max_episode_steps = 5
machine_budget_s = 0.2
"""
VARIANTS = ["student-s/hf-generate", "teacher-fp32/runtime", "student-s-fp32/runtime",
            "student-s-int8-dynamic/runtime", "student-s-int4-matmulnbits/runtime"]


def run_ids(root: Path) -> dict[str, str]:
    return {s: json.loads((root / s / DONE_FILE).read_text())["run_id"] for s in STAGES}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(recipe file, run folder, CLI output) of one full run through the CLI."""
    base = tmp_path_factory.mktemp("pipeline")
    recipe = base / "tiny.toml"
    recipe.write_text(textwrap.dedent(TINY))
    root = base / "run"
    result = CliRunner().invoke(app, ["pipeline", "--recipe", str(recipe), "--out", str(root)])
    assert result.exit_code == 0, result.output
    return recipe, root, result.output


def copy_run(root: Path, tmp_path: Path) -> Path:
    # .done outputs are relative to the run folder, so a copied run is a complete run
    return Path(shutil.copytree(root, tmp_path / "run"))


def test_every_stage_runs_and_the_table_prints(tiny: tuple[Path, Path, str]) -> None:
    _, root, output = tiny
    for stage in STAGES:
        done = json.loads((root / stage / DONE_FILE).read_text())
        assert done["stage"] == stage and done["how"] == "fresh" and done["wall_s"] >= 0
    report = root / "bench" / "bench.json"
    assert f"report: {report}" in output
    rows = summary_rows(read_report(report))
    assert [r["variant"] for r in rows] == VARIANTS
    for row in rows:
        assert row["variant"] in output and row["Hz"] in output
    # fidelity is against the fp32 student artifact: it agrees with itself exactly
    fp32 = next(r for r in rows if r["variant"] == "student-s-fp32/runtime")
    assert fp32["token agr."] == "100.0%"
    assert not (root / "student" / "student-s" / "training_state").exists()  # shipped checkpoint only


def test_rerun_reuses_every_stage(tiny: tuple[Path, Path, str], tmp_path: Path) -> None:
    recipe, root, _ = tiny
    root = copy_run(root, tmp_path)
    before = run_ids(root)
    result = run_pipeline(load_recipe(recipe), root)
    assert result.ran == [] and result.skipped == list(STAGES) and run_ids(root) == before


def test_deleted_done_reruns_that_stage_and_the_later_ones(tiny: tuple[Path, Path, str], tmp_path: Path) -> None:
    recipe, root, _ = tiny
    root = copy_run(root, tmp_path)
    before = run_ids(root)
    (root / "quantize" / DONE_FILE).unlink()
    result = run_pipeline(load_recipe(recipe), root)
    assert result.ran == ["quantize", "bench"]
    after = run_ids(root)
    assert [s for s in STAGES if after[s] != before[s]] == ["quantize", "bench"]
    assert json.loads((root / "quantize" / DONE_FILE).read_text())["how"] == "resume"
    assert [r["variant"] for r in summary_rows(read_report(root / "bench" / "bench.json"))] == VARIANTS


def test_changed_section_reruns_from_its_stage(tiny: tuple[Path, Path, str], tmp_path: Path) -> None:
    recipe, root, _ = tiny
    root = copy_run(root, tmp_path)
    before = run_ids(root)
    changed = load_recipe(recipe).with_overrides({"bench": {"steps": 4}})
    result = run_pipeline(changed, root)
    assert result.ran == ["bench"] and run_ids(root)["export"] == before["export"]
    report = json.loads((root / "bench" / "bench.json").read_text())
    assert report["config"]["steps"] == 4
    assert json.loads((root / "bench" / DONE_FILE).read_text())["how"] == "redo"


POLICY = Path(__file__).resolve().parents[1] / "policies" / "tabletop-six-family"


def deploy_recipe(tmp_path: Path, quantize: str, export: str = "") -> Path:
    """TINY deploying the shipped policy itself, with these [quantize] and [export] lines."""
    recipe = tmp_path / "deploy.toml"
    recipe.write_text(textwrap.dedent(TINY).replace('preset = "student-s"', f'path = "{POLICY}"')
                      .replace('students = ["student-s"]', "students = []")
                      .replace('methods = ["int8-dynamic", "int4-matmulnbits"]', quantize)
                      .replace("[export]\n", f"[export]\n{export}"))
    return recipe


def test_a_trained_teacher_without_students_is_itself_deployed(tmp_path: Path) -> None:
    """`student.students = []` with `teacher.path`: nothing is trained or distilled; the shipped
    policy is exported, quantized and benched, fidelity measured against its own fp32 artifact."""
    policy = POLICY
    recipe = deploy_recipe(tmp_path, 'methods = ["int8-qdq", "int4-qdq"]\nkeep = ["head"]\nkeep_sensitive = 1')
    root = tmp_path / "run"
    result = run_pipeline(load_recipe(recipe), root)
    assert result.ran == list(STAGES)
    outputs = {s: json.loads((root / s / DONE_FILE).read_text())["outputs"] for s in STAGES}
    assert all(set(outputs[s]) == {"skipped"} for s in ("data", "cache", "student"))
    assert not (root / "data" / "dataset").exists() and not (root / "cache" / "cache").exists()
    assert outputs["teacher"] == {"checkpoint": str(policy), "trained": False}
    quantized = json.loads((root / "quantize" / "teacher-int8-qdq" / "quantize_report.json").read_text())
    assert len(quantized["details"]["kept_sensitive_layers"]) == 1
    # keep = ["head"]: the vision tower is quantized too
    assert quantized["details"]["kept_groups"] == ["head"]
    assert quantized["details"]["graphs"]["vision"]["quantized_layers"] > 0
    rows = summary_rows(read_report(root / "bench" / "bench.json"))
    # int4-qdq's output is for TensorRT: it reads a TensorRT-target export made for it, benched too
    assert [r["variant"] for r in rows] == ["tabletop-six-family/hf-generate", "teacher-fp32/runtime",
                                            "teacher-fp32-tensorrt/runtime", "teacher-int8-qdq/runtime",
                                            "teacher-int4-qdq/runtime"]
    assert outputs["quantize"]["exports"] == {"teacher-fp32-tensorrt": "quantize/teacher-fp32-tensorrt"}
    manifest = json.loads((root / "quantize" / "teacher-int4-qdq" / MANIFEST_FILE).read_text())
    assert manifest["target"] == "tensorrt" and manifest["precision"] == "int4-qdq"
    assert next(r for r in rows if r["variant"] == "teacher-fp32/runtime")["token agr."] == "100.0%"


def test_a_tensorrt_export_is_quantized_as_it_is(tmp_path: Path) -> None:
    """With `export.target = "tensorrt"` int4-qdq reads the export stage's own artifact: no second
    export is made, and the quantized artifact is the TensorRT one."""
    recipe = deploy_recipe(tmp_path, 'methods = ["int4-qdq"]', export='target = "tensorrt"\n')
    root = tmp_path / "run"
    run_pipeline(load_recipe(recipe).with_overrides({"bench": {"episodes": 0}}), root)
    outputs = json.loads((root / "quantize" / DONE_FILE).read_text())["outputs"]
    assert outputs["exports"] == {} and not (root / "quantize" / "teacher-fp32-tensorrt").exists()
    config = json.loads((root / "quantize" / "teacher-int4-qdq" / "quantize_config.json").read_text())
    assert Path(config["source"]) == root / "export" / "teacher-fp32"
    assert json.loads((root / "quantize" / "teacher-int4-qdq" / MANIFEST_FILE).read_text())["target"] == "tensorrt"
    rows = summary_rows(read_report(root / "bench" / "bench.json"))
    assert [r["variant"] for r in rows] == ["tabletop-six-family/hf-generate", "teacher-fp32/runtime",
                                            "teacher-int4-qdq/runtime"]
