"""Knowledge distillation runs on tiny models: the KD loss falls, an interrupted run resumes to
identical weights, students with other tokenizers / families work, the CLI and the comparison."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402

from distill.cache import CacheConfig  # noqa: E402
from distill.cache import run as build_cache  # noqa: E402
from distill.kd import DistillConfig, run  # noqa: E402
from distill_factory import TINY_PRESETS, make_dataset, make_teacher, run_torchrun  # noqa: E402
from rt2edge.errors import ConfigError  # noqa: E402
from rt2edge.models import ActionVocabConfig, VLAPolicy, presets  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def tiny_presets(monkeypatch):
    for name, preset in TINY_PRESETS.items():
        monkeypatch.setitem(presets.PRESETS, name, preset)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    data = make_dataset(root / "data", episodes=6)  # 65 frames
    teacher = make_teacher(root / "teacher", data)
    # the first 40 frames (4 episodes and a bit) are cached; the rest is held out for `compare`
    build_cache(CacheConfig(teacher=teacher, data=data, out=str(root / "cache"), max_frames=40,
                            shard_size=16, batch_size=8, progress=False))
    return {"data": data, "teacher": teacher, "cache": str(root / "cache")}


def config(setup, out, **kw) -> DistillConfig:
    base = dict(cache=setup["cache"], out=str(out), student="kd-student", steps=6, batch_size=8, lr=3e-3,
                vqa_ratio=0.25, vqa_pool_size=8, log_every=1, checkpoint_every=100, progress=False)
    return DistillConfig(**{**base, **kw})


def log_rows(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_a_short_distillation_lowers_the_kd_loss(setup, tmp_path):
    out = tmp_path / "run"
    result = run(config(setup, out, steps=30, alpha=0.0, temperature=1.0, warmup_steps=2))
    assert result.completed and result.step == 30
    rows = log_rows(out)
    first, last = np.mean([r["kd_loss"] for r in rows[:3]]), np.mean([r["kd_loss"] for r in rows[-3:]])
    assert last < 0.7 * first, (first, last)
    assert rows[-1]["teacher_agreement"] > rows[0]["teacher_agreement"]
    assert any(r["vqa_loss"] is not None for r in rows)  # co-trained with VQA
    saved = json.loads((out / "distill_config.json").read_text())
    assert saved["student"] == "kd-student" and saved["loss"] == "kl"
    student = VLAPolicy.from_pretrained(out)  # the run folder is a loadable checkpoint
    assert student.text_tokenizer.vocab_size != VLAPolicy.from_pretrained(setup["teacher"]).text_tokenizer.vocab_size


@pytest.mark.parametrize("loss", ["rkl", "jsd"])
def test_interrupt_and_resume_matches_the_uninterrupted_run(setup, tmp_path, loss):
    full = run(config(setup, tmp_path / "full", loss=loss))
    part = run(config(setup, tmp_path / "split", loss=loss, max_steps_per_run=3))
    assert part.stopped_early and part.step == 3
    resumed = run(config(setup, tmp_path / "split", loss=loss))
    assert resumed.completed and resumed.resumed_from == 3 and full.step == resumed.step == 6
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    assert [r["loss"] for r in log_rows(tmp_path / "split")] == pytest.approx(
        [r["loss"] for r in log_rows(tmp_path / "full")], rel=1e-6)
    with pytest.raises(ConfigError) as err:  # a resume with another loss is another experiment
        run(config(setup, tmp_path / "split", loss="kl"))
    assert err.value.field == "loss"


def test_a_cross_family_student_with_another_tokenizer(setup, tmp_path):
    out = tmp_path / "pali"
    result = run(config(setup, out, student="kd-pali", steps=3))
    assert result.completed
    student, teacher = VLAPolicy.from_pretrained(out), VLAPolicy.from_pretrained(setup["teacher"])
    assert (student.family, teacher.family) == ("paligemma", "llava")
    image = np.zeros((1, 64, 64, 3), np.uint8)
    ids = [p.encode_observations(image, "pick up the red cube")["input_ids"][0].tolist() for p in (student, teacher)]
    assert ids[0] != ids[1]  # its own prompt tokens; only the bins are shared
    assert np.isfinite([r["loss"] for r in log_rows(out)]).all()


def test_a_parallel_decoding_student_trains_through_its_action_logits(setup, tmp_path):
    """The loss only sees `policy.action_logits(batch)`: a ParallelVLAPolicy (one decoder pass per
    action, its own override) distills unchanged."""
    parallel = pytest.importorskip("rt2edge.models.parallel")
    from distill.cache import TeacherCache
    from distill.kd.students import preset_student

    cache = TeacherCache(setup["cache"])
    base = preset_student("kd-student", cache.action_tokenizer, cache.index["unnorm_key"], seed=0)
    parallel.ParallelVLAPolicy.from_autoregressive(base).save_pretrained(tmp_path / "init")
    out = tmp_path / "parallel"
    result = run(config(setup, out, student=str(tmp_path / "init"), steps=3))
    assert result.completed and np.isfinite([r["kd_loss"] for r in log_rows(out)]).all()
    assert isinstance(VLAPolicy.from_pretrained(out), parallel.ParallelVLAPolicy)


def test_a_student_with_other_action_bins_is_refused(setup, tmp_path):
    ckpt = tmp_path / "bins128"
    presets.build_preset("kd-student", action=ActionVocabConfig(n_bins=128)).save_pretrained(ckpt)
    with pytest.raises(ConfigError) as err:
        run(config(setup, tmp_path / "out", student=str(ckpt)))
    assert err.value.field == "student.n_bins"
    with pytest.raises(ConfigError) as err:
        run(config(setup, tmp_path / "out2", student="no-such-preset"))
    assert err.value.field == "student"


def test_another_dataset_is_refused(setup, tmp_path):
    other = make_dataset(tmp_path / "other", episodes=2)
    with pytest.raises(ConfigError) as err:
        run(config(setup, tmp_path / "out", data=other))
    assert err.value.field == "data"


def test_cli_train_from_teacher_and_compare(setup, tmp_path):
    from typer.testing import CliRunner

    from rt2edge.cli import app

    out = tmp_path / "dropped"
    args = ["distill", "train", "--cache", setup["cache"], "--from-teacher", setup["teacher"], "--keep-every", "2",
            "--out", str(out), "--steps", "2", "--batch-size", "4", "--vqa-pool-size", "4", "--log-every", "1",
            "--loss", "jsd", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{"):])["completed"] is True
    assert json.loads((out / "distill_config.json").read_text())["augment"] is False  # KD's default
    bad = CliRunner().invoke(app, args[:-3] + ["--loss", "mse"])
    assert bad.exit_code == 2 and "--loss" in bad.output

    report_path = tmp_path / "compare.json"
    result = CliRunner().invoke(app, ["distill", "compare", "--teacher", setup["teacher"], "--student", str(out),
                                      "--data", setup["data"], "--cache", setup["cache"], "--frames", "12",
                                      "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["held_out_frames"] == 12 and report["held_out_episodes"] >= 1
    teacher_row, student_row = report["models"]
    assert teacher_row["greedy_agreement_with_teacher"]["tokens"] == 1.0
    assert teacher_row["forced_agreement_with_teacher"]["actions"] == 1.0
    assert student_row["parameters"]["total"] < teacher_row["parameters"]["total"]
    assert 0.0 <= student_row["greedy_agreement_with_teacher"]["tokens"] <= 1.0


def test_cli_training_defaults_are_the_configs():
    from dataclasses import fields

    from distill.finetune.config import TrainingConfig
    from rt2edge.commands.training_options import OPTIONS

    defaults = {f.name: f.default for f in fields(TrainingConfig) if f.name != "out"}
    assert set(OPTIONS) == set(defaults)
    assert {k: v[2] for k, v in OPTIONS.items() if k != "resume"} == {k: v for k, v in defaults.items() if k != "resume"}


DDP_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from distill_factory import register_presets
register_presets()
from distill.kd import DistillConfig, run
kw = dict(max_steps_per_run=int(sys.argv[3])) if len(sys.argv) > 3 else {}
run(DistillConfig(cache=sys.argv[1], out=sys.argv[2], student="kd-student", steps=4, batch_size=8, lr=3e-3,
                  vqa_pool_size=8, log_every=1, progress=False, **kw))
"""


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RT2EDGE_SLOW_TESTS") != "1",
                    reason="two torchrun processes: set RT2EDGE_SLOW_TESTS=1")
def test_two_process_ddp_with_resume_matches_one_process(setup, tmp_path):
    """The student's forward goes through DDP (StudentForward); 2 gloo processes, interrupted and
    resumed, reach the 1-process weights: each process scores its half of the global batch."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    run(config(setup, tmp_path / "one", steps=4, batch_size=8, vqa_pool_size=8))
    script = tmp_path / "kd_ddp.py"
    script.write_text(DDP_SCRIPT)
    for extra in (["2"], []):
        run_torchrun(script, [setup["cache"], str(tmp_path / "two"), *extra])
    assert [r["loss"] for r in log_rows(tmp_path / "two")] == pytest.approx(
        [r["loss"] for r in log_rows(tmp_path / "one")], rel=1e-5)
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
