"""`rt2edge bench`: usage errors name the option or path; a tiny end-to-end run of all three backends."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rt2edge.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from artifact_factory import make_artifact
    from rt2edge.models import build_preset

    root = tmp_path_factory.mktemp("bench-cli")
    build_preset("student-s").save_pretrained(root / "student-s")
    artifact, _ = make_artifact(root / "tiny")
    return root, root / "student-s", artifact


def test_missing_path_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["bench", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "nope" in result.output and "no such" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, option", [(["--steps", "0"], "--steps"), (["--backends", "tflite"], "--backends"),
                                          (["--rates", "3,fast"], "--rates"), (["--rates", "-1"], "--rates")])
def test_bad_options_name_the_option(tmp_path, args, option):
    result = runner.invoke(app, ["bench", str(tmp_path), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and option in result.output


def test_bench_end_to_end(sources):
    root, checkpoint, artifact = sources
    out = root / "report"
    result = runner.invoke(app, [
        "bench", str(checkpoint), str(artifact), "--out", str(out), "--steps", "4", "--rounds", "2", "--warmup", "1",
        "--frames", "2", "--reference", str(checkpoint), "--episodes", "1", "--max-episode-steps", "2",
        "--machine-budget-s", "0.4", "--devices", "jetson-agx-orin-64gb,jetson-orin-nano-8gb"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stderr carries transformers progress bars
    assert [r["variant"] for r in summary["variants"]] == ["student-s/eager", "student-s/hf-generate", "tiny/runtime"]
    report = json.loads((out / "bench.json").read_text())
    assert report["baseline"] == "student-s/hf-generate"
    by = {v["label"]: v for v in report["variants"]}
    assert by["student-s/hf-generate"]["ratios"]["hz_median"] == pytest.approx(1.0)
    runtime = by["tiny/runtime"]
    assert runtime["ratios"]["hz_median"] == pytest.approx(
        runtime["timing"]["hz_median"] / by["student-s/hf-generate"]["timing"]["hz_median"])
    for v in report["variants"]:  # interleaved: 2 blocks of 2 timed steps each
        assert v["timing"]["steps"] == 4 and v["timing"]["info"]["rounds"] == 2
        assert v["memory"]["window"] == "load + warm-up"
    for label in ("student-s/eager", "student-s/hf-generate"):
        torch_variant = by[label]
        assert {"vision", "prefill", "decode", "overhead"} <= set(torch_variant["timing"]["stages"])
        assert len(torch_variant["timing"]["decode_steps_by_index"]) == 7
        assert torch_variant["roofline"]["cost_source"] == "config"
        assert torch_variant["provider"] == "torch-cpu"
    # eager runs the reference's own code path on the same frames: it must agree exactly
    assert by["student-s/eager"]["fidelity"]["token_agreement"] == 1.0
    assert {p["device"] for p in runtime["projection"]} == {"jetson-agx-orin-64gb", "jetson-orin-nano-8gb"}
    assert report["reference"]["success"]["episodes"] == 2
    assert (out / "bench.html").stat().st_size > 10_000 and (out / "bench.md").is_file()
