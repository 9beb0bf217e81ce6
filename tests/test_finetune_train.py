"""Co-fine-tuning runs on a tiny LLaVA-style preset: loss falls, resume == uninterrupted run."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402

from distill.finetune import FinetuneConfig, run  # noqa: E402
from distill.finetune.checkpointing import checkpoint_dirs  # noqa: E402
from distill.finetune.run_control import GracefulStop, trim_log  # noqa: E402
from distill.finetune.setup import freeze_unused_parameters, warmup_cosine  # noqa: E402
from rt2edge.errors import ConfigError  # noqa: E402
from rt2edge.models import VLAPolicy  # noqa: E402
from rt2edge.models import presets  # noqa: E402
from rt2edge.models.families import VLMSize  # noqa: E402

torch.set_num_threads(1)

TINY = presets.Preset("llava", VLMSize(
    vision_hidden_size=64, vision_layers=1, vision_heads=2, vision_intermediate_size=128,
    hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
    image_size=32, patch_size=8), text_vocab_size=512)


@pytest.fixture(autouse=True)
def tiny_preset(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "test-tiny", TINY)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from rt2edge.data import GenerateConfig, generate

    out = tmp_path_factory.mktemp("data") / "tabletop"
    generate(GenerateConfig(out=str(out), episodes=6, seed=0))
    return str(out)


def config(dataset, out, **kw) -> FinetuneConfig:
    base = dict(data=dataset, out=str(out), preset="test-tiny", steps=8, batch_size=4, lr=2e-3,
                vqa_ratio=0.25, vqa_pool_size=16, log_every=1, checkpoint_every=100, progress=False)
    base.update(kw)
    return FinetuneConfig(**base)


def log_rows(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_a_short_run_lowers_the_loss_and_writes_a_checkpoint(dataset, tmp_path):
    out = tmp_path / "run"
    result = run(config(dataset, out, steps=24, batch_size=8, warmup_steps=2))
    assert result.completed and result.step == 24
    rows = log_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 25))
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first - 0.5, (first, last)
    assert all(r["vqa_loss"] is not None for r in rows[::4])  # r * B = 2 VQA samples per step
    assert set(rows[-1]["action_accuracy_per_dim"]) == {"x", "y", "z", "roll", "pitch", "yaw",
                                                        "gripper", "terminate"}
    saved = json.loads((out / "finetune_config.json").read_text())
    assert saved["steps"] == 24 and saved["preset"] == "test-tiny"
    policy = VLAPolicy.from_pretrained(out)  # the run folder is a loadable checkpoint
    assert policy.action_tokenizer.statistics is not None  # built with the dataset's statistics
    assert len(checkpoint_dirs(out)) >= 1


def test_interrupt_and_resume_matches_the_uninterrupted_run(dataset, tmp_path):
    full = run(config(dataset, tmp_path / "full"))
    part = run(config(dataset, tmp_path / "split", max_steps_per_run=3))
    assert not part.completed and part.stopped_early and part.step == 3
    assert not (tmp_path / "split" / "rt2edge.json").exists()  # unfinished: not a checkpoint yet
    from distill.finetune.snapshot import snapshot

    snap = VLAPolicy.from_pretrained(snapshot(tmp_path / "split", tmp_path / "snap-3"))
    assert snap.predict_action_tokens(np.zeros((1, 64, 64, 3), np.uint8), "pick up the red cube").shape == (1, 8)
    resumed = run(config(dataset, tmp_path / "split"))
    assert resumed.completed and resumed.resumed_from == 3 and resumed.step == full.step == 8
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    losses_full = [r["loss"] for r in log_rows(tmp_path / "full")]
    losses_split = [r["loss"] for r in log_rows(tmp_path / "split")]
    assert losses_split == pytest.approx(losses_full, rel=1e-6)
    again = run(config(dataset, tmp_path / "split"))  # a finished run: nothing left to do
    assert again.completed and again.step == 8 and len(log_rows(tmp_path / "split")) == 8


def test_resume_refuses_changed_settings_and_never_mode(dataset, tmp_path):
    out = tmp_path / "run"
    run(config(dataset, out, steps=4, max_steps_per_run=2))
    with pytest.raises(ConfigError) as err:
        run(config(dataset, out, steps=4, lr=1e-2))
    assert err.value.field == "lr"
    with pytest.raises(ConfigError) as err:
        run(config(dataset, out, steps=4, resume="never"))
    assert err.value.field == "resume"
    with pytest.raises(ConfigError) as err:
        run(config(dataset, tmp_path / "fresh", resume="require"))
    assert err.value.field == "resume"


class DropoutTrainer:
    """A finetune trainer whose model draws random numbers in its forward (dropout on the
    projector output): resume must restore the random stream exactly."""

    @staticmethod
    def make(cfg):
        from distill.finetune.trainer import FinetuneTrainer

        class Trainer(FinetuneTrainer):
            def build_policy(self, robot):
                policy = super().build_policy(robot)
                projector = policy.model.model.multi_modal_projector
                projector.register_forward_hook(lambda m, i, o: torch.nn.functional.dropout(o, 0.2, m.training))
                return policy

        return Trainer(cfg).run()


def test_resume_with_a_stochastic_model_matches_the_uninterrupted_run(dataset, tmp_path):
    kw = dict(steps=6, vqa_ratio=0.0)
    DropoutTrainer.make(config(dataset, tmp_path / "full", **kw))
    DropoutTrainer.make(config(dataset, tmp_path / "split", max_steps_per_run=3, **kw))
    DropoutTrainer.make(config(dataset, tmp_path / "split", **kw))
    a, b = (load_file(tmp_path / run_ / "model.safetensors") for run_ in ("full", "split"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_a_non_finite_loss_stops_the_run_before_the_weights_take_it(dataset, tmp_path):
    from distill.finetune.checkpointing import TrainerState, latest_checkpoint
    from distill.finetune.trainer import FinetuneTrainer
    from rt2edge.errors import TrainingDivergedError

    class NaNAtStep3(FinetuneTrainer):
        def loss_sums(self, items):
            loss, n, stats = super().loss_sums(items)
            return (loss * float("nan"), n, stats) if self.steps_done == 2 else (loss, n, stats)

    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match="step 3: the gradient norm is nan"):
        NaNAtStep3(config(dataset, out, checkpoint_every=1)).run()
    last = latest_checkpoint(out)
    assert TrainerState.load(last).step == 2  # steps 1 and 2 saved, nothing of step 3
    weights = load_file(last / "model.safetensors")
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    assert not (out / "rt2edge.json").exists()


def test_resume_on_a_changed_dataset_is_refused(tmp_path):
    from rt2edge.data import GenerateConfig, generate

    data = tmp_path / "data"
    generate(GenerateConfig(out=str(data), episodes=4, seed=0))
    run(config(str(data), tmp_path / "run", steps=4, max_steps_per_run=2))
    generate(GenerateConfig(out=str(data), episodes=6, seed=0))  # extended in place, as data generate allows
    with pytest.raises(ConfigError, match="is not the dataset this run started on") as err:
        run(config(str(data), tmp_path / "run", steps=4))
    assert err.value.field == "data"


def test_a_torn_last_log_line_is_dropped_and_a_torn_middle_line_named(tmp_path):
    from rt2edge.errors import ArtifactError

    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    trim_log(log, 5)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    log.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ArtifactError, match="line 2 is not JSON"):
        trim_log(log, 5)


def test_checkpoints_clear_leftovers_of_crashed_saves(dataset, tmp_path):
    """A save interrupted at another step (a SIGTERM mid-write) leaves a .tmp-step folder: the next
    save removes it, and only finished steps count as checkpoints."""
    out = tmp_path / "run"
    stale = out / "training_state" / ".tmp-step-00000099"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half written")
    run(config(dataset, out, steps=2, checkpoint_every=1))
    assert not stale.exists()
    assert [d.name for d in checkpoint_dirs(out)] == ["step-00000001", "step-00000002"]  # keep_checkpoints 2


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 4, 20, 0.1) == pytest.approx(0.2)
    assert warmup_cosine(4, 4, 20, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(20, 4, 20, 0.1) == pytest.approx(0.1)
    values = [warmup_cosine(s, 4, 20, 0.1) for s in range(4, 21)]
    assert values == sorted(values, reverse=True)


def test_sigterm_requests_a_graceful_stop():
    class OneProcess:
        num_processes = 1

    with GracefulStop() as stop:
        assert not stop.requested(OneProcess())
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested(OneProcess())
    assert signal.getsignal(signal.SIGTERM) is not stop._handler  # handler restored


def test_trim_log_drops_rows_after_the_resumed_step(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)))
    trim_log(path, 3)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]


def test_rt2edge_distill_finetune_command(dataset, tmp_path):
    from typer.testing import CliRunner

    from rt2edge.cli import app

    out = tmp_path / "cli-run"
    args = ["distill", "finetune", "--data", dataset, "--preset", "test-tiny", "--out", str(out),
            "--steps", "2", "--batch-size", "4", "--vqa-pool-size", "8", "--log-every", "1", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{"):])["completed"] is True
    assert (out / "rt2edge.json").is_file() and len(log_rows(out)) == 2
    bad = CliRunner().invoke(app, args[:-1] + ["--vqa-ratio", "1.0"])
    assert bad.exit_code == 2 and "vqa" in bad.output.lower()


def test_parameters_no_output_reaches_are_frozen(dataset, tmp_path):
    # LLaVA reads SigLIP's last hidden state before its post-layernorm: DDP would refuse it.
    run(config(dataset, tmp_path / "run", steps=1))
    from distill.finetune.data import CoTrainingDataset, build_vqa_pool
    from distill.finetune.mixture import CoTrainingMixture
    from rt2edge.data import EpisodeDataset

    policy = presets.build_preset("test-tiny")
    robot = EpisodeDataset(dataset)
    data = CoTrainingDataset(robot, build_vqa_pool(4, 0, 64), None)
    frozen = freeze_unused_parameters(policy, [data[i] for i in CoTrainingMixture(len(robot), 4, 4, 0.25, 0).plan(0)])
    assert frozen and all("post_layernorm" in name for name in frozen)
    assert all(p.grad is None for p in policy.model.parameters())


DDP_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from rt2edge.models import presets
sys.path.insert(0, {tests!r})
from test_finetune_train import TINY
presets.PRESETS["test-tiny"] = TINY
from distill.finetune import FinetuneConfig, run
kw = dict(max_steps_per_run=int(sys.argv[2])) if len(sys.argv) > 2 else {{}}
run(FinetuneConfig(data={data!r}, out=sys.argv[1], preset="test-tiny", steps=4, batch_size=4, lr=2e-3,
                   vqa_pool_size=16, log_every=1, progress=False, **kw))
"""


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RT2EDGE_SLOW_TESTS") != "1",
                    reason="two torchrun processes, ~15-35 s: set RT2EDGE_SLOW_TESTS=1")
def test_two_process_ddp_with_resume_matches_one_process(dataset, tmp_path):
    """`torchrun` with 2 gloo processes (what `accelerate launch` does on GPUs), interrupted and
    resumed, gives the 1-process result: the global batch is split, the loss is the global mean."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), data=dataset))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    subprocess.run([sys.executable, str(script), str(one)], check=True, env=env, capture_output=True,
                   timeout=180)
    two = tmp_path / "two"
    for extra in (["2"], []):
        # --standalone: a private rendezvous on a free port, so parallel test runs cannot meet
        subprocess.run(["torchrun", "--standalone", "--nproc_per_node", "2", str(script), str(two), *extra],
                       check=True, env=env, capture_output=True, timeout=180)
    assert sorted(p.name for p in (two / "training_state").iterdir())[-1] == "step-00000004"
    assert (two / "training_state" / "step-00000004" / "random_states_1.pkl").is_file()
    assert [r["loss"] for r in log_rows(two)] == pytest.approx([r["loss"] for r in log_rows(one)], rel=1e-5)
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
