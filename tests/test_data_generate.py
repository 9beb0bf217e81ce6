"""`rt2edge data generate`: LeRobot layout, round trip, resumability, atomicity, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rt2edge.actions import ActionStatistics
from rt2edge.data import DatasetError, EpisodeDataset, GenerateConfig, generate
from rt2edge.errors import ConfigError
from rt2edge.sim import TabletopEnv

EPISODES = 6  # one per family


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("ds") / "tabletop"
    report = generate(GenerateConfig(out=str(root), episodes=EPISODES, seed=5))
    return root, report


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_info(dataset):
    root, report = dataset
    info = json.loads((root / "meta/info.json").read_text())
    assert info["total_episodes"] == EPISODES and info["total_frames"] == report.frames
    assert info["data_path"] == "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    assert info["features"]["observation.image"] == {
        "dtype": "image", "shape": [64, 64, 3], "names": ["height", "width", "channel"]}
    assert info["features"]["action"]["shape"] == [8] and info["chunks_size"] == 1000
    for name in ("episodes.jsonl", "tasks.jsonl", "stats.json", "episodes_stats.jsonl"):
        assert (root / "meta" / name).exists()
    episodes = [json.loads(x) for x in (root / "meta/episodes.jsonl").read_text().splitlines()]
    assert [e["episode_index"] for e in episodes] == list(range(EPISODES))
    assert all(e["success"] for e in episodes)
    assert report.expert_success_rate >= 0.95 and report.generated == EPISODES


def test_parquet_columns_match_lerobot(dataset):
    import pyarrow.parquet as pq

    root, _ = dataset
    table = pq.read_table(root / "data/chunk-000/episode_000000.parquet")
    assert {"observation.image", "observation.state", "action", "episode_index", "frame_index",
            "timestamp", "task_index", "index", "next.done", "next.success"} <= set(table.column_names)
    image = table.column("observation.image")[0].as_py()
    assert set(image) == {"bytes", "path"} and image["bytes"].startswith(b"\x89PNG")
    hf = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.image"] == {"_type": "Image"}
    done = table.column("next.done").to_pylist()
    assert done[-1] and not any(done[:-1])


def test_round_trip_reproduces_the_expert(dataset):
    root, _ = dataset
    ds = EpisodeDataset(root)
    env = TabletopEnv()
    for record in ds.episodes[:3]:
        episode = ds.episode(record["episode_index"])
        obs, _ = env.reset(seed=record["seed"], options={"family": record["family"]})
        assert env.instruction == record["tasks"][0]
        for i in range(len(episode)):
            frame = episode[i]
            action = env.expert_action()
            assert frame.instruction == env.instruction
            assert np.array_equal(frame.image, obs["image"])
            assert np.array_equal(frame.state, obs["state"])
            assert np.array_equal(frame.action, action)
            obs, *_ = env.step(action)
        assert frame.done and frame.action[7] == 1


def test_statistics_match_the_data(dataset):
    root, _ = dataset
    ds = EpisodeDataset(root)
    stats = json.loads((root / "meta/stats.json").read_text())
    assert np.allclose(stats["action"]["q99"], np.quantile(ds.actions, 0.99, axis=0))
    assert np.allclose(stats["action"]["mean"], ds.actions.mean(0))
    assert set(stats["action"]) >= {"min", "max", "mean", "std", "q01", "q99"}
    expected = ActionStatistics.from_actions(ds.actions[:, :7])
    got = ds.action_statistics()
    assert got.num_dims == 7  # terminate is left to the tokenizer
    assert np.allclose(got.q01, expected.q01) and np.allclose(got.max, expected.max)


def test_resumed_generation_equals_one_shot(dataset, tmp_path):
    one_shot, _ = dataset
    resumed = tmp_path / "resumed"

    class Interrupt(Exception):
        pass

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        generate(GenerateConfig(out=str(resumed), episodes=EPISODES, seed=5), progress=stop_after_two)
    assert not (resumed / "meta/info.json").exists()  # an interrupted dataset does not look complete
    with pytest.raises(DatasetError, match="info.json"):
        EpisodeDataset(resumed)
    # a crash while writing episode 2 leaves a temporary file: never read, cleaned up
    leftover = resumed / "data/chunk-000/.episode_000002.parquet.abc123.tmp"
    leftover.write_bytes(b"half a parquet file")
    report = generate(GenerateConfig(out=str(resumed), episodes=EPISODES, seed=5))
    assert report.reused == 2 and report.generated == EPISODES - 2
    assert not leftover.exists()
    assert files_of(resumed) == files_of(one_shot)


def test_growing_a_dataset_keeps_existing_episodes(dataset, tmp_path):
    root = tmp_path / "grow"
    generate(GenerateConfig(out=str(root), episodes=2, seed=5))
    first = (root / "data/chunk-000/episode_000001.parquet").read_bytes()
    report = generate(GenerateConfig(out=str(root), episodes=3, seed=5))
    assert report.reused == 2 and (root / "data/chunk-000/episode_000001.parquet").read_bytes() == first
    assert len(EpisodeDataset(root).episode_indices) == 3


def test_resume_with_another_recipe_is_refused(dataset, tmp_path):
    root = tmp_path / "ds"
    generate(GenerateConfig(out=str(root), episodes=1, seed=5))
    with pytest.raises(ConfigError) as exc:
        generate(GenerateConfig(out=str(root), episodes=2, seed=6))
    assert exc.value.field == "seed"


@pytest.mark.parametrize("kwargs, field", [
    ({"episodes": 0}, "episodes"), ({"seed": -1}, "seed"), ({"image_size": 8}, "image_size"),
    ({"split": "val"}, "split"), ({"families": ("fly",)}, "families"),
    ({"action_noise": -0.1}, "action_noise"), ({"move_noise": 0.5}, "move_noise"),
    ({"gripper_noise": 0.6}, "gripper_noise"), ({"gripper_noise": -0.01}, "gripper_noise"),
    ({"start_anywhere": -0.1}, "start_anywhere"), ({"gripper_noise": "0.1"}, "gripper_noise"),
    ({"move_noise": float("nan")}, "move_noise"),
    ({"max_attempts": 0}, "max_attempts"), ({"relabel_carry": "yes"}, "relabel_carry"),
])
def test_bad_config_names_the_field(kwargs, field, tmp_path):
    with pytest.raises(ConfigError) as exc:
        GenerateConfig(**{"out": str(tmp_path), "episodes": 1, **kwargs})
    assert exc.value.field == field


def test_action_noise_keeps_clean_labels(tmp_path):
    report = generate(GenerateConfig(out=str(tmp_path / "noisy"), episodes=3, seed=1,
                                     families=("move_to_mat",), action_noise=0.3))
    ds = EpisodeDataset(tmp_path / "noisy")
    assert report.expert_success_rate > 0.5
    assert np.all(np.abs(ds.actions[:, :3]) <= 0.1 + 1e-6)  # labels are expert actions


def test_move_noise_shows_recoveries_with_expert_labels(tmp_path):
    """Additive noise moves axes the expert holds still, so the data gets "move back" labels that
    scaling alone never produces; the recorded actions stay the expert's half-step grid."""
    def y_labels(**noise):
        root = tmp_path / "-".join(f"{k}{v}" for k, v in noise.items())
        generate(GenerateConfig(out=str(root), episodes=12, seed=4, families=("pick",),
                                object_counts=(2,), **noise))
        return EpisodeDataset(root).actions[:, 1]

    scaled, shifted = y_labels(action_noise=0.3), y_labels(action_noise=0.3, move_noise=0.04)
    assert np.mean(shifted < 0) > np.mean(scaled < 0) + 0.05  # the gripper overshoots and returns
    assert np.allclose(shifted / 0.05, np.round(shifted / 0.05), atol=1e-4)  # still grid labels


def test_gripper_noise_shows_the_experts_recovery_from_a_close_on_nothing(tmp_path):
    """A flipped gripper command closes on nothing (or drops the object); the next frame shows it
    closed and empty, labelled with the expert's recovery: open, and move on to the object."""
    def frames(**noise):
        root = tmp_path / "-".join(f"{k}{v}" for k, v in noise.items())
        generate(GenerateConfig(out=str(root), episodes=12, seed=4, families=("put_on",), **noise))
        ds = EpisodeDataset(root)
        closed_empty = (ds.states[:, 3] > 0.5) & (ds.states[:, 4] < 0.5)
        return ds, closed_empty

    clean, clean_closed_empty = frames()
    assert not clean_closed_empty.any()  # the clean expert closes only on the object, which it then holds
    noisy, closed_empty = frames(gripper_noise=0.2)
    assert closed_empty.sum() >= 3
    recovery = noisy.actions[closed_empty]
    assert np.all(recovery[:, 6] < 0)  # the expert's label: open
    assert np.any(np.abs(recovery[:, :2]).sum(axis=1) > 0)  # ... while moving on to the object
    assert set(np.unique(noisy.actions[:, 6])) <= {-1.0, 1.0}  # labels stay the expert's commands


def test_datasets_from_before_move_noise_resume(tmp_path):
    root = tmp_path / "old"
    generate(GenerateConfig(out=str(root), episodes=1, seed=5))
    path = root / "meta/generation.json"
    meta = json.loads(path.read_text())
    del meta["recipe"]["move_noise"]  # a dataset written before the field existed
    path.write_text(json.dumps(meta))
    assert generate(GenerateConfig(out=str(root), episodes=2, seed=5)).reused == 1


def test_relabeled_carries_head_for_the_destination_their_instruction_names(tmp_path):
    """--relabel-carry: each destination family is followed by an episode of carry frames only
    (the object held), labelled for another mat / flag of the scene under the instruction naming
    it: every move heads for that destination, not the one the expert carried to."""
    from rt2edge.sim.world import COUNTRIES

    root = tmp_path / "relabel"
    report = generate(GenerateConfig(out=str(root), episodes=8, seed=2, families=("move_to_mat", "move_to_flag"),
                                     action_noise=0.3, relabel_carry=True))
    assert report.expert_success_rate == 1.0  # relabeled episodes are not counted as the expert's runs
    meta = [json.loads(x) for x in (root / "meta/episodes.jsonl").read_text().splitlines()]
    assert [m.get("relabeled", False) for m in meta] == [False, True] * 4
    assert [m["success"] for m in meta] == [True, False] * 4
    generation = json.loads((root / "meta/generation.json").read_text())
    assert generation["relabeled_episodes"] == 4 and generation["expert"]["episodes"] == 4
    ds = EpisodeDataset(root)
    holding = ds.state_names.index("holding")
    env = TabletopEnv()
    heading = 0
    for m in meta[1::2]:
        env.reset(seed=m["seed"], options={"family": m["family"]})  # the scene the carry was in
        text, scene, task = m["tasks"][0], env.scene, env.task
        if m["family"] == "move_to_mat":
            (colour,) = [c.colour for c in scene.mats if f"{c.colour} mat" in text]
            assert colour != task.mat_colour
            goal = np.array([scene.mat(colour).x, scene.mat(colour).y])
        else:
            (country,) = [f.country for f in scene.flags if f.country in text or COUNTRIES[f.country] in text]
            assert country != task.country
            goal = np.array([scene.flag(country).x, scene.flag(country).y])
        rows = np.asarray(ds.episode_index) == m["episode_index"]
        states, actions = np.asarray(ds.states)[rows], np.asarray(ds.actions)[rows]
        assert len(actions) == m["length"] and np.all(states[:, holding] == 1.0)
        assert np.all(actions[:, 6] == 1.0) and not np.any(actions[:, 7])  # keep holding, never done
        for state, action in zip(states, actions):
            moving = np.abs(action[:2]) > 0
            assert np.all(np.sign(action[:2][moving]) == np.sign((goal - state[:2])[moving]))
            heading += int(moving.any())
    assert heading >= 8
    # the recipe records it: resuming without the option is refused
    with pytest.raises(ConfigError) as exc:
        generate(GenerateConfig(out=str(root), episodes=9, seed=2, families=("move_to_mat", "move_to_flag"),
                                action_noise=0.3))
    assert exc.value.field == "relabel_carry"
