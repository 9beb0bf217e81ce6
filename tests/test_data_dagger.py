"""`rt2edge data dagger`: a policy drives, the scripted expert labels; base + on-policy episodes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rt2edge.data import DatasetError, EpisodeDataset, GenerateConfig, generate
from rt2edge.data.dagger import DaggerConfig, dagger
from rt2edge.errors import ArtifactError, ConfigError
from rt2edge.sim import TabletopEnv

BASE_EPISODES = 3
MAX_STEPS = 40  # a drifting policy never ends an episode: keep the step limit short


class DriftPolicy:
    """Always moves +x with the gripper open, batched and stateless: it never finishes a task,
    so every state after the first step is one the expert's own runs do not visit."""

    name = "drift"
    terminate = 0.0

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        return np.array([0.1, 0, 0, 0, 0, 0, -1, self.terminate], np.float64)


class QuitterPolicy(DriftPolicy):
    """Terminates on its first step: the wrong terminate DAgger is there to correct."""

    terminate = 1.0

    def act_batch(self, images: np.ndarray, instructions: list[str]) -> np.ndarray:
        return np.stack([self.act(image, text) for image, text in zip(images, instructions)])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base") / "ds"
    generate(GenerateConfig(out=str(root), episodes=BASE_EPISODES, seed=2, max_steps=MAX_STEPS))
    return root


@pytest.fixture()
def policy_dir(tmp_path) -> Path:
    """DaggerConfig.policy names a folder (its bytes are the round's identity); the drift policy
    is handed over by `load_policy`."""
    folder = tmp_path / "drift"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"drift v1")
    return folder


def run(base: Path, policy: Path, out: Path, episodes: int = 6, driver: type = DriftPolicy, **kwargs) -> object:
    cfg = DaggerConfig(base=str(base), policy=str(policy), out=str(out), episodes=episodes, **kwargs)
    return dagger(cfg, load_policy=lambda _path, **_options: driver())


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_base_episodes_come_first_unchanged_and_on_policy_ones_after(base, policy_dir, tmp_path):
    before = files_of(base)
    out = tmp_path / "round1"
    report = run(base, policy_dir, out, expert_mix=0.5, seed=4)
    assert files_of(base) == before  # the base is read, never changed
    ds, base_ds = EpisodeDataset(out), EpisodeDataset(base)
    assert ds.episode_indices == list(range(BASE_EPISODES + 6))
    for index in range(BASE_EPISODES):
        name = f"data/chunk-000/episode_{index:06d}.parquet"
        assert os.path.samefile(out / name, base / name)  # a hard link: no bytes copied
    assert len(base_ds) == int(np.sum(ds.episode_index < BASE_EPISODES))
    records = ds.episodes[BASE_EPISODES:]
    assert all(r["on_policy"] for r in records) and not any("on_policy" in r for r in ds.episodes[:BASE_EPISODES])
    assert report.episodes == 6 and report.generated == 6 and report.base_episodes == BASE_EPISODES
    assert report.frames == sum(r["length"] for r in records)
    assert 0 < report.expert_executed < 1  # a mix of both drivers
    assert report.reached_rate == np.mean([r["success"] for r in records])
    generation = json.loads((out / "meta/generation.json").read_text())
    (round_,) = generation["on_policy"]
    assert round_["first_episode"] == BASE_EPISODES and round_["expert_mix"] == 0.5
    assert generation["expert"]["episodes"] == BASE_EPISODES  # the expert's own runs only
    assert ds.action_statistics().q01.shape == base_ds.action_statistics().q01.shape


def replay(out: Path, expert_mix: float, seed: int, driver: type = DriftPolicy) -> list[dict]:
    """Replay every on-policy episode of `out` in a fresh env with the same drivers; assert each
    frame is the state reached, labelled with the expert's action there. Returns the records."""
    import pyarrow.parquet as pq

    ds = EpisodeDataset(out)
    recipe = json.loads((out / "meta/generation.json").read_text())["recipe"]
    env = TabletopEnv(image_size=recipe["image_size"], max_steps=recipe["max_steps"])
    records = ds.episodes[BASE_EPISODES:]
    for record in records:
        index = record["episode_index"]
        episode = ds.episode(index)
        next_success = pq.read_table(out / f"data/chunk-000/episode_{index:06d}.parquet").column("next.success")
        obs, _ = env.reset(seed=record["seed"], options={"family": record["family"]})
        assert env.instruction == record["tasks"][0]
        rng = np.random.default_rng([seed, index, 3])
        expert_steps = 0
        for t in range(len(episode)):
            frame = episode[t]
            np.testing.assert_array_equal(frame.image, obs["image"])
            label = env.expert_action()
            np.testing.assert_allclose(frame.action, label, atol=1e-7)
            expert = label[7] >= 0.5 or rng.uniform() < expert_mix
            expert_steps += expert
            obs, _, terminated, truncated, info = env.step(label if expert else driver().act(obs["image"], ""))
            assert next_success[t].as_py() == bool(info["success"])
        assert terminated or truncated  # the episode ends where the rollout ended
        assert record["success"] == bool(info["success"]) and record["expert_executed"] == expert_steps
    return records


def test_every_frame_is_the_state_the_mixed_rollout_reached_labelled_by_the_expert(base, policy_dir, tmp_path):
    out = tmp_path / "round1"
    run(base, policy_dir, out, expert_mix=0.5, seed=4)
    replay(out, expert_mix=0.5, seed=4)


def test_a_wrong_terminate_is_executed_and_labelled_with_the_expert_s_move(base, policy_dir, tmp_path):
    out = tmp_path / "quit"
    report = run(base, policy_dir, out, driver=QuitterPolicy)
    records = replay(out, expert_mix=0.0, seed=0, driver=QuitterPolicy)
    assert all(r["length"] == 1 and not r["success"] for r in records)
    labels = EpisodeDataset(out).actions[-len(records):]
    assert np.all(labels[:, 7] == 0)  # "do not stop here"
    assert report.reached_rate == 0 and np.isnan(report.policy_terminated)


def test_the_expert_driving_alone_succeeds_and_labels_its_own_run(base, policy_dir, tmp_path):
    out = tmp_path / "expert"
    report = run(base, policy_dir, out, expert_mix=1.0)
    assert report.reached_rate == 1.0 and report.expert_executed == 1.0
    assert report.policy_terminated == 0.0  # the drifting policy never terminates itself


def test_an_interrupted_round_resumes_to_the_same_bytes(base, policy_dir, tmp_path):
    whole = tmp_path / "whole"
    run(base, policy_dir, whole, expert_mix=0.5)
    part = tmp_path / "part"
    cfg = DaggerConfig(base=str(base), policy=str(policy_dir), out=str(part), episodes=6, expert_mix=0.5)

    def stop(done: int, total: int) -> None:
        if done == BASE_EPISODES + 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dagger(cfg, progress=stop, load_policy=lambda _path: DriftPolicy())
    assert not (part / "meta/info.json").exists()
    report = run(base, policy_dir, part, expert_mix=0.5)
    assert report.generated == 3
    assert files_of(part) == files_of(whole)


def test_an_interrupted_loop_escape_round_resumes_to_the_same_bytes(base, policy_dir, tmp_path):
    """Each episode reseeds the runtime's sampling from its own seed, so a resumed round draws
    what the uninterrupted one drew."""
    from artifact_factory import make_artifact

    from rt2edge.evaluation.policies import ArtifactPolicyAdapter
    from rt2edge.runtime import LoopEscape, Policy

    root = make_artifact(tmp_path / "art")[0]
    loaded = []

    def loader(_path, **_options):  # tolerance 1: nearly every act after the first samples
        loaded.append(Policy.load(root, num_threads=1, loop_escape=LoopEscape(temperature=1.0, tolerance=1.0)))
        return ArtifactPolicyAdapter(loaded[-1])

    def config(out):
        return DaggerConfig(base=str(base), policy=str(policy_dir), out=str(out), episodes=4, loop_escape=1.0)

    whole = tmp_path / "whole"
    dagger(config(whole), load_policy=loader)
    assert loaded[0].loop.escapes > 0

    def stop(done: int, total: int) -> None:
        if done == BASE_EPISODES + 2:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        dagger(config(part), progress=stop, load_policy=loader)
    assert dagger(config(part), load_policy=loader).generated == 2
    assert files_of(part) == files_of(whole)


def test_a_round_extends_an_earlier_round(base, policy_dir, tmp_path):
    first = tmp_path / "round1"
    run(base, policy_dir, first, episodes=2)
    second = tmp_path / "round2"
    report = run(first, policy_dir, second, episodes=2)
    rounds = json.loads((second / "meta/generation.json").read_text())["on_policy"]
    assert [r["first_episode"] for r in rounds] == [BASE_EPISODES, BASE_EPISODES + 2]
    assert report.base_episodes == BASE_EPISODES + 2
    assert EpisodeDataset(second).episode_indices == list(range(BASE_EPISODES + 4))


def test_resuming_with_another_policy_seed_or_mix_is_refused_on_that_option(base, policy_dir, tmp_path):
    out = tmp_path / "round1"
    run(base, policy_dir, out, episodes=2)
    for change, option in (({"expert_mix": 0.5}, "expert_mix"), ({"seed": 1}, "seed"),
                           ({"loop_escape": 0.5}, "loop_escape")):
        with pytest.raises(ConfigError) as refused:
            run(base, policy_dir, out, episodes=2, **change)
        assert refused.value.field == option
    (policy_dir / "weights.bin").write_bytes(b"drift v2")  # new weights at the same path
    with pytest.raises(ConfigError) as refused:
        run(base, policy_dir, out, episodes=2)
    assert refused.value.field == "policy"


def test_a_loop_escape_round_hands_the_setting_to_the_loader_and_records_it(base, policy_dir, tmp_path):
    seen = []

    def loader(path, **options):
        seen.append(options)
        return DriftPolicy()

    out = tmp_path / "round1"
    dagger(DaggerConfig(base=str(base), policy=str(policy_dir), out=str(out), episodes=1, loop_escape=0.5),
           load_policy=loader)
    assert seen[0]["loop_escape"].temperature == 0.5
    assert json.loads((out / "meta/generation.json").read_text())["on_policy"][-1]["loop_escape"] == 0.5
    with pytest.raises(ConfigError) as refused:  # greedy episodes are not mixed into an escape round
        run(base, policy_dir, out, episodes=2)
    assert refused.value.field == "loop_escape"


def test_a_gap_in_the_on_policy_episodes_is_refused(base, policy_dir, tmp_path):
    out = tmp_path / "round1"
    run(base, policy_dir, out, episodes=3)
    (out / f"data/chunk-000/episode_{BASE_EPISODES + 1:06d}.parquet").unlink()
    with pytest.raises(DatasetError, match="later ones exist"):
        run(base, policy_dir, out, episodes=3)


def test_a_base_recorded_by_an_older_version_resumes(base, policy_dir, tmp_path):
    old = tmp_path / "old-base"
    old.mkdir()
    for name, data in files_of(base).items():
        (old / name).parent.mkdir(parents=True, exist_ok=True)
        (old / name).write_bytes(data)
    generation = json.loads((old / "meta/generation.json").read_text())
    del generation["recipe"]["start_anywhere"]  # a recipe field added after that dataset was made
    (old / "meta/generation.json").write_text(json.dumps(generation))
    out = tmp_path / "round1"
    run(old, policy_dir, out, episodes=2)
    assert run(old, policy_dir, out, episodes=3).generated == 1


def test_bad_input_is_refused(base, policy_dir, tmp_path):
    with pytest.raises(ConfigError, match="expert_mix"):
        DaggerConfig(base=str(base), policy=str(policy_dir), out=str(tmp_path / "o"), episodes=1, expert_mix=1.5)
    with pytest.raises(ConfigError, match="out"):
        DaggerConfig(base=str(base), policy=str(policy_dir), out=str(base), episodes=1)
    with pytest.raises(ConfigError, match="episodes"):
        DaggerConfig(base=str(base), policy=str(policy_dir), out=str(tmp_path / "o"), episodes=0)
    for temperature, mix in ((0.0, 0.0), (float("inf"), 0.0), ("hot", 0.0), (1.0, 0.5)):
        with pytest.raises(ConfigError) as refused:
            DaggerConfig(base=str(base), policy=str(policy_dir), out=str(tmp_path / "o"), episodes=1,
                         loop_escape=temperature, expert_mix=mix)
        assert refused.value.field == "loop_escape"
    with pytest.raises(ConfigError, match="policy"):
        run(base, tmp_path / "no-such-policy", tmp_path / "o")
    not_a_policy = tmp_path / "empty"
    not_a_policy.mkdir()
    with pytest.raises(ArtifactError):  # the real loader; nothing is written before it is checked
        dagger(DaggerConfig(base=str(base), policy=str(not_a_policy), out=str(tmp_path / "o"), episodes=1))
    assert not (tmp_path / "o").exists()
    plain = tmp_path / "plain"  # a dataset without the simulator recipe
    plain.mkdir()
    (plain / "meta").mkdir()
    (plain / "meta/info.json").write_text((base / "meta/info.json").read_text())
    with pytest.raises(DatasetError, match="generation.json"):
        run(plain, policy_dir, tmp_path / "o")
    with pytest.raises(DatasetError, match="meta/info.json"):
        run(tmp_path / "missing", policy_dir, tmp_path / "o")


def test_cli_round_with_a_real_artifact_and_loop_escape(base, tiny_llava_artifact, tmp_path):
    from test_data_cli import app

    out = tmp_path / "round1"
    result = CliRunner().invoke(app(), ["data", "dagger", "--base", str(base), "--policy", str(tiny_llava_artifact),
                                        "--episodes", "2", "--out", str(out), "--loop-escape", "0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "meta/generation.json").read_text())["on_policy"][-1]["loop_escape"] == 0.5
    assert len(EpisodeDataset(out).episode_indices) == BASE_EPISODES + 2


def test_cli_round_with_a_real_checkpoint(base, tiny_llava_checkpoint, tmp_path):
    from test_data_cli import app

    out = tmp_path / "round1"
    result = CliRunner().invoke(app(), ["data", "dagger", "--base", str(base), "--policy",
                                        str(tiny_llava_checkpoint), "--episodes", "2", "--out", str(out),
                                        "--num-envs", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["episodes"] == 2 and report["base_episodes"] == BASE_EPISODES
    ds = EpisodeDataset(out)
    assert len(ds.episode_indices) == BASE_EPISODES + 2
    bad = CliRunner().invoke(app(), ["data", "dagger", "--base", str(base), "--policy", str(tiny_llava_checkpoint),
                                     "--episodes", "2", "--out", str(out), "--expert-mix", "2"])
    assert bad.exit_code != 0 and "--expert-mix" in bad.output
    escape = CliRunner().invoke(app(), ["data", "dagger", "--base", str(base), "--policy", str(tiny_llava_checkpoint),
                                        "--episodes", "2", "--out", str(tmp_path / "e"), "--loop-escape", "0.5"])
    assert escape.exit_code == 2 and "export it" in escape.output and not (tmp_path / "e").exists()
    missing = CliRunner().invoke(app(), ["data", "dagger", "--base", str(tmp_path / "nope"), "--policy",
                                         str(tiny_llava_checkpoint), "--episodes", "2", "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "meta/info.json" in missing.output and "Traceback" not in missing.output
