"""EpisodeDataset: random access, views, splits, statistics, and LeRobot datasets not written
by rt2edge (v2.x and v3.0 layouts, path-only images, other image keys)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rt2edge.data import DatasetError, EpisodeDataset, GenerateConfig, generate
from rt2edge.errors import ConfigError


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 10, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_foreign(root: Path, version: str = "v2.1", image_key: str = "observation.images.top",
                  image_dtype: str = "image", path_only: bool = False) -> None:
    """A small LeRobot dataset as LeRobot writes it: 2 episodes of 3 frames, 7-dim actions."""
    (root / "meta").mkdir(parents=True)
    features = {
        image_key: {"dtype": image_dtype, "shape": [8, 10, 3], "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": [2], "names": {"motors": ["a", "b"]}},
        "action": {"dtype": "float32", "shape": [7], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    data_path = ("data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet" if version != "v3.0"
                 else "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet")
    info = {"codebase_version": version, "total_episodes": 2, "total_frames": 6, "fps": 30,
            "chunks_size": 1000, "data_path": data_path, "features": features}
    (root / "meta/info.json").write_text(json.dumps(info))
    tables = []
    for ep in range(2):
        rows = []
        for fi in range(3):
            value = 40 * ep + 10 * fi
            if path_only:
                rel = f"images/ep{ep}_f{fi}.png"
                (root / "images").mkdir(exist_ok=True)
                (root / rel).write_bytes(png(value))
                image = {"bytes": None, "path": rel}
            else:
                image = {"bytes": png(value), "path": None}
            rows.append({image_key: image, "observation.state": [float(fi), 1.0],
                         "action": [float(value)] * 7, "episode_index": ep, "frame_index": fi,
                         "task_index": ep})
        tables.append(pa.Table.from_pylist(rows))
    if version == "v3.0":
        (root / "data/chunk-000").mkdir(parents=True)
        # episodes stored out of order in one file: the reader sorts by (episode, frame)
        pq.write_table(pa.concat_tables(tables[::-1]), root / "data/chunk-000/file-000.parquet")
        pq.write_table(pa.table({"task": ["stack", "wipe"], "task_index": [0, 1]}),
                       root / "meta/tasks.parquet")
    else:
        for ep, table in enumerate(tables):
            path = root / data_path.format(episode_chunk=0, episode_index=ep)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
        (root / "meta/tasks.jsonl").write_text(
            '{"task_index": 0, "task": "stack"}\n{"task_index": 1, "task": "wipe"}\n')


@pytest.mark.parametrize("version, path_only", [("v2.1", False), ("v2.0", True), ("v3.0", False)])
def test_reads_lerobot_written_datasets(tmp_path, version, path_only):
    write_foreign(tmp_path, version=version, path_only=path_only)
    ds = EpisodeDataset(tmp_path)
    assert len(ds) == 6 and ds.episode_indices == [0, 1]
    frame = ds[4]
    assert (frame.episode_index, frame.frame_index, frame.instruction) == (1, 1, "wipe")
    assert frame.image.shape == (8, 10, 3) and frame.image[0, 0, 0] == 50
    assert np.array_equal(frame.state, [1.0, 1.0]) and ds.state_names == ["a", "b"]
    assert ds[2].done and not ds[1].done
    # no terminate flag named: all 7 dims are continuous
    assert ds.action_statistics().num_dims == 7
    assert ds.action_statistics(terminate=True).num_dims == 6


def test_video_datasets_are_refused_by_name(tmp_path):
    write_foreign(tmp_path, image_dtype="video")
    with pytest.raises(DatasetError, match="video"):
        EpisodeDataset(tmp_path)


def test_missing_column_and_missing_file_are_named(tmp_path):
    write_foreign(tmp_path / "a")
    path = tmp_path / "a/data/chunk-000/episode_000001.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["task_index"]), path)
    with pytest.raises(DatasetError, match="task_index"):
        EpisodeDataset(tmp_path / "a")
    write_foreign(tmp_path / "b")
    (tmp_path / "b/data/chunk-000/episode_000000.parquet").unlink()
    with pytest.raises(DatasetError, match="episode_000000"):
        EpisodeDataset(tmp_path / "b")
    with pytest.raises(DatasetError):
        EpisodeDataset(tmp_path / "nowhere")


def _edit_episode(root: Path, episode: int, edit) -> None:
    path = root / f"data/chunk-000/episode_{episode:06d}.parquet"
    rows = pq.read_table(path).to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _set_action(frame: int, values):
    def edit(rows):
        rows[frame]["action"] = values
    return edit


def _set_image(frame: int, image: bytes):
    def edit(rows):
        rows[frame]["observation.images.top"] = {"bytes": image, "path": None}
    return edit


def _small_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("edit, field, message", [
    (_set_action(2, [0.0, 0.0, float("nan"), 0.0, 0.0, 0.0, 0.0]), "action", r"episode 1, frame 2: dim 2 \(2\) is nan"),
    (_set_action(1, [0.0] * 9), "action", r"episode 1, frame 1: 9 values, episode 0, frame 0 has 7"),
    (_set_action(0, None), "action", r"episode 1, frame 0: no value"),
    (_set_image(1, _small_png()), "observation.images.top",
     r"episode 1, frame 1: the image is 6x10 \(HxW\), info.json's observation.images.top shape \[8, 10, 3\] is 8x10"),
    (lambda rows: [r.pop("observation.state") for r in rows], "observation.state",
     r"column missing in data/chunk-000/episode_000001.parquet"),
])
def test_bad_frames_are_refused_naming_episode_frame_and_field(tmp_path, edit, field, message):
    """Rows of another width would otherwise slide values into the wrong dims, a NaN surface
    steps into training, an odd image fail a batch without saying where."""
    write_foreign(tmp_path)
    _edit_episode(tmp_path, 1, edit)
    with pytest.raises(DatasetError, match=message) as info:
        EpisodeDataset(tmp_path)
    assert info.value.field == field


def test_terminate_flag_and_counts_and_info_are_checked(tmp_path):
    write_foreign(tmp_path / "a")
    info = json.loads((tmp_path / "a/meta/info.json").read_text())
    info["features"]["action"]["names"] = ["x", "y", "z", "roll", "pitch", "yaw", "terminate"]
    (tmp_path / "a/meta/info.json").write_text(json.dumps(info))
    _edit_episode(tmp_path / "a", 0, _set_action(1, [0.0] * 6 + [0.7]))
    with pytest.raises(DatasetError, match=r"episode 0, frame 1: the terminate flag is 0.7"):
        EpisodeDataset(tmp_path / "a")
    write_foreign(tmp_path / "b", version="v3.0")  # several episodes per file: a lost file only shows in counts
    info = json.loads((tmp_path / "b/meta/info.json").read_text())
    (tmp_path / "b/meta/info.json").write_text(json.dumps({**info, "total_frames": 9}))
    with pytest.raises(DatasetError, match=r"lists 9, the data files hold 6") as err:
        EpisodeDataset(tmp_path / "b")
    assert err.value.field == "total_frames"
    (tmp_path / "b/meta/info.json").write_text('{"features": ')
    with pytest.raises(DatasetError, match="cannot be read"):
        EpisodeDataset(tmp_path / "b")
    (tmp_path / "b/meta/info.json").write_text(json.dumps({**info, "total_episodes": "2",
                                                           "data_path": "data/episode_{episode_index}.parquet"}))
    with pytest.raises(DatasetError, match="total_episodes"):
        EpisodeDataset(tmp_path / "b")


def test_image_key_choice(tmp_path):
    write_foreign(tmp_path)
    with pytest.raises(ConfigError, match="image_key"):
        EpisodeDataset(tmp_path, image_key="observation.images.wrist")


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory) -> EpisodeDataset:
    root = tmp_path_factory.mktemp("sim") / "ds"
    generate(GenerateConfig(out=str(root), episodes=10, seed=2))
    return EpisodeDataset(root)


def test_random_access_and_negative_index(sim_dataset):
    ds = sim_dataset
    last = ds[-1]
    assert last.done and last.episode_index == 9 and last.action[7] == 1
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert ds.has_terminate() and ds.action_names[-1] == "terminate"
    episode = ds.episode(3)
    images = episode.load_images()
    assert images.shape == (len(episode), 64, 64, 3)
    assert np.array_equal(images[2], episode[2].image)
    assert episode.instructions == [episode[i].instruction for i in range(len(episode))]


def test_split_is_disjoint_seeded_and_complete(sim_dataset):
    train, val = sim_dataset.split(val_fraction=0.2, seed=0)
    assert len(val.episode_indices) == 2 and len(train.episode_indices) == 8
    assert not set(train.episode_indices) & set(val.episode_indices)
    assert len(train) + len(val) == len(sim_dataset)
    again, _ = sim_dataset.split(val_fraction=0.2, seed=0)
    assert again.episode_indices == train.episode_indices
    frame = val[0]
    assert frame.episode_index == val.episode_indices[0] and frame.frame_index == 0
    stats = train.action_statistics()
    assert np.allclose(stats.max, train.actions[:, :7].max(0))
    with pytest.raises(ConfigError, match="val_fraction"):
        sim_dataset.split(val_fraction=1.0)
    with pytest.raises(ConfigError, match="episode_indices"):
        sim_dataset.select_episodes([99])
