"""`EpisodeDataset`: random access to the frames of a LeRobot-layout dataset (numpy, no torch).

Reads what `rt2edge data generate` writes, and LeRobot datasets written by LeRobot itself where
the same columns exist (v2.x: one parquet per episode; v3.0: several episodes per file) and the
images are embedded (image features, not video). Non-image columns are loaded once into numpy
arrays; images stay encoded in memory and are decoded on access.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rt2edge.actions import ActionStatistics
from rt2edge.data import frame_checks, lerobot
from rt2edge.atomic import is_temporary
from rt2edge.data.files import read_jsonl
from rt2edge.data.lerobot import DatasetError, pa, pq
from rt2edge.errors import ConfigError

TERMINATE_NAME = "terminate"


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # uint8 (H, W, 3)
    instruction: str
    state: np.ndarray  # float32 (state_dim,), empty when the dataset has no observation.state
    action: np.ndarray  # float32 (action_dim,); for rt2edge data the last value is terminate
    episode_index: int
    frame_index: int
    task_index: int
    done: bool  # last frame of its episode


@dataclass
class _Store:
    """Everything loaded from disk, shared by all views of one dataset."""

    root: Path
    info: dict[str, Any]
    image_key: str
    images: Any  # pyarrow StructArray {bytes, path}
    states: np.ndarray
    actions: np.ndarray
    episode_index: np.ndarray
    frame_index: np.ndarray
    task_index: np.ndarray
    tasks: dict[int, str]
    episodes: dict[int, dict[str, Any]]


def _names(spec: dict[str, Any]) -> list[str]:
    names = spec.get("names")
    if isinstance(names, dict):  # some LeRobot datasets: {"motors": [...]}
        names = next(iter(names.values()), None)
    return list(names) if names else []


def _read_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    if not root.is_dir():
        raise DatasetError(str(root), "is not a folder")
    if not path.exists():
        raise DatasetError("meta/info.json", f"missing in {root}: not a LeRobot dataset, or its "
                                             "generation has not finished (rerun it to resume)")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError("meta/info.json", f"cannot be read in {root}: {exc}") from exc
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise DatasetError("meta/info.json", f"in {root} has no 'features' object: not a LeRobot dataset")
    return info


def _image_key(features: dict[str, Any], requested: str | None) -> str:
    visual = [k for k, v in features.items() if v.get("dtype") in ("image", "video")]
    key = requested or (lerobot.IMAGE_KEY if lerobot.IMAGE_KEY in visual else
                        (visual[0] if len(visual) == 1 else None))
    if key is None:
        raise ConfigError("image_key", f"the dataset has image features {visual}; choose one")
    if key not in features:
        raise ConfigError("image_key",
                          f"{key!r} is not a feature of the dataset ({sorted(features)})")
    if features[key].get("dtype") == "video":
        raise DatasetError(key, "is stored as video; only datasets with embedded images "
                                "are supported")
    return key


def _read_tasks(root: Path) -> dict[int, str]:
    if (root / "meta/tasks.jsonl").exists():
        return {int(r["task_index"]): str(r["task"]) for r in read_jsonl(root / "meta/tasks.jsonl")}
    if (root / "meta/tasks.parquet").exists():  # LeRobot v3.0: task text is the pandas index
        table = pq.read_table(root / "meta/tasks.parquet")
        text_cols = [n for n in table.column_names if n != "task_index"]
        if "task_index" not in table.column_names or not text_cols:
            raise DatasetError("meta/tasks.parquet", "needs a task_index and a task text column")
        col = "task" if "task" in text_cols else text_cols[0]
        return dict(zip(table.column("task_index").to_pylist(), table.column(col).to_pylist()))
    raise DatasetError("meta/tasks.jsonl", f"missing in {root}")


def _data_files(root: Path, info: dict[str, Any]) -> list[Path]:
    template = info.get("data_path", lerobot.DATA_PATH)
    if "{episode_index" in template:  # v2.x: one file per listed episode
        chunks = int(info.get("chunks_size", 1000))
        if not isinstance(info.get("total_episodes"), int):
            raise DatasetError("meta/info.json", "needs 'total_episodes' (an int) to find one file per episode")
        files = [lerobot.episode_file(root, i, chunks, template) for i in range(info["total_episodes"])]
        missing = [str(p.relative_to(root)) for p in files if not p.exists()]
        if missing:
            raise DatasetError(missing[0], f"missing ({len(missing)} episode files in all)")
        return files
    files = sorted(p for p in root.glob("data/**/*.parquet") if not is_temporary(p))
    if not files:
        raise DatasetError("data", f"no parquet files under {root / 'data'}")
    return files


def _load(root: Path, image_key: str | None) -> _Store:
    info = _read_info(root)
    features = info.get("features", {})
    key = _image_key(features, image_key)
    required = [key, "action", "episode_index", "frame_index", "task_index"]
    optional = [c for c in ("observation.state",) if c in features]
    tables = []
    for path in _data_files(root, info):
        names = pq.read_schema(path).names
        absent = [c for c in required + optional if c not in names]
        if absent:
            raise DatasetError(absent[0], f"column missing in {path.relative_to(root)}")
        tables.append(pq.read_table(path, columns=required + optional))
    table = pa.concat_tables(tables).combine_chunks()
    order = np.lexsort((table.column("frame_index").to_numpy(),
                        table.column("episode_index").to_numpy()))
    table = table.take(pa.array(order))
    images = table.column(key).combine_chunks()
    if not pa.types.is_struct(images.type):
        raise DatasetError(key, f"expected image structs {{bytes, path}}, got {images.type}")
    n = table.num_rows
    episode_index = table.column("episode_index").to_numpy().astype(np.int64)
    frame_index = table.column("frame_index").to_numpy().astype(np.int64)

    def where(row: int) -> str:
        return f"episode {episode_index[row]}, frame {frame_index[row]}"

    states = (lerobot.column_vectors(table.column("observation.state"), "observation.state", where)
              if optional else np.zeros((n, 0)))
    store = _Store(
        root=root, info=info, image_key=key, images=images,
        states=states.astype(np.float32),
        actions=lerobot.column_vectors(table.column("action"), "action", where).astype(np.float32),
        episode_index=episode_index, frame_index=frame_index,
        task_index=table.column("task_index").to_numpy().astype(np.int64),
        tasks=_read_tasks(root), episodes={},
    )
    _check_and_index_episodes(store)
    _check_frames(store, features)
    return store


def _check_frames(store: _Store, features: dict[str, Any]) -> None:
    episode, frame = store.episode_index, store.frame_index
    frame_checks.check_vectors(store.actions, "action", _names(features.get("action", {})), episode, frame)
    if store.states.shape[1]:
        frame_checks.check_vectors(store.states, "observation.state", _names(features["observation.state"]),
                                   episode, frame)
    frame_checks.check_image_sizes(store.images, store.image_key, features[store.image_key], episode, frame)
    frame_checks.check_counts(store.info, len(store.episodes), len(store.actions))


def _check_and_index_episodes(store: _Store) -> None:
    meta = {}
    if (store.root / "meta/episodes.jsonl").exists():
        meta = {int(r["episode_index"]): r for r in read_jsonl(store.root / "meta/episodes.jsonl")}
    ids, starts, counts = np.unique(store.episode_index, return_index=True, return_counts=True)
    for ep, start, count in zip(ids.tolist(), starts.tolist(), counts.tolist()):
        if not np.array_equal(store.frame_index[start:start + count], np.arange(count)):
            raise DatasetError("frame_index", f"episode {ep} is not numbered 0..{count - 1}")
        record = dict(meta.get(ep, {"episode_index": ep}))
        record["length"] = count
        store.episodes[ep] = record
    unknown = sorted(set(np.unique(store.task_index).tolist()) - set(store.tasks))
    if unknown:
        raise DatasetError("task_index", f"indices {unknown[:5]} are not in the task table")


class EpisodeDataset:
    """Frames of a LeRobot-layout dataset, randomly accessible: `ds[i] -> Frame`.

    Args:
        path: the dataset folder (with meta/info.json).
        image_key: the image feature to read (default: observation.image, or the only one).
    """

    def __init__(self, path: str | Path, image_key: str | None = None):
        self._init(_load(Path(path), image_key), None)

    @classmethod
    def _view(cls, store: _Store, rows: np.ndarray) -> EpisodeDataset:
        view = cls.__new__(cls)
        view._init(store, rows)
        return view

    def _init(self, store: _Store, rows: np.ndarray | None) -> None:
        self._store = store
        self._rows = np.arange(len(store.actions)) if rows is None else rows

    # ----------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return int(self._rows.shape[0])

    def __getitem__(self, i: int) -> Frame:
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"frame {i} out of range for {n} frames")
        row = int(self._rows[int(i)])
        s = self._store
        ep, fi = int(s.episode_index[row]), int(s.frame_index[row])
        return Frame(
            image=self._image(row), instruction=s.tasks[int(s.task_index[row])],
            state=s.states[row].copy(), action=s.actions[row].copy(), episode_index=ep,
            frame_index=fi, task_index=int(s.task_index[row]),
            done=fi == s.episodes[ep]["length"] - 1,
        )

    def _image(self, row: int) -> np.ndarray:
        return lerobot.decode_image(self._encoded(row), self._store.image_key)

    def _encoded(self, row: int) -> bytes:
        item = self._store.images[row].as_py()
        data = item.get("bytes")
        if data is None:  # LeRobot while recording: images beside the parquet files
            path = item.get("path")
            if not path or not (self._store.root / path).exists():
                raise DatasetError(self._store.image_key, f"frame {row} has neither bytes nor a file")
            data = (self._store.root / path).read_bytes()
        return data

    def encoded_image(self, i: int) -> bytes:
        """Frame i's image as stored (PNG bytes), not decoded: what a content fingerprint hashes."""
        return self._encoded(int(self._rows[int(i)]))

    def instruction(self, i: int) -> str:
        return self._store.tasks[int(self._store.task_index[self._rows[i]])]

    @property
    def instructions(self) -> list[str]:
        """The instruction of every frame of this view, in order."""
        return [self._store.tasks[int(t)] for t in self.task_index]

    def load_images(self) -> np.ndarray:
        """Every frame's image of this view decoded into one uint8 (N, H, W, 3) array: decode
        once, then train from memory (64x64 frames take 12 KiB each)."""
        if len(self) == 0:
            raise DatasetError(self._store.image_key, "no frames in this view")
        first = self._image(int(self._rows[0]))
        out = np.empty((len(self), *first.shape), dtype=np.uint8)
        out[0] = first
        for i, row in enumerate(self._rows[1:], start=1):
            image = self._image(int(row))
            if image.shape != first.shape:
                raise DatasetError(self._store.image_key,
                                   f"frame {i} is {image.shape}, frame 0 is {first.shape}")
            out[i] = image
        return out

    # ----------------------------------------------------------------------------- columns
    @property
    def actions(self) -> np.ndarray:
        return self._store.actions[self._rows]

    @property
    def states(self) -> np.ndarray:
        return self._store.states[self._rows]

    @property
    def episode_index(self) -> np.ndarray:
        return self._store.episode_index[self._rows]

    @property
    def frame_index(self) -> np.ndarray:
        return self._store.frame_index[self._rows]

    @property
    def task_index(self) -> np.ndarray:
        return self._store.task_index[self._rows]

    @property
    def tasks(self) -> dict[int, str]:
        return dict(self._store.tasks)

    @property
    def info(self) -> dict[str, Any]:
        return self._store.info

    @property
    def fps(self) -> float:
        return float(self._store.info.get("fps", 10))

    @property
    def action_names(self) -> list[str]:
        return _names(self._store.info["features"]["action"])

    @property
    def state_names(self) -> list[str]:
        spec = self._store.info["features"].get("observation.state")
        return _names(spec) if spec else []

    @property
    def episode_indices(self) -> list[int]:
        return sorted(set(self.episode_index.tolist()))

    @property
    def episodes(self) -> list[dict[str, Any]]:
        """episodes.jsonl records (length, tasks, family, seed, ...) of this view's episodes."""
        return [dict(self._store.episodes[e]) for e in self.episode_indices]

    # ----------------------------------------------------------------------------- views
    def select_episodes(self, episode_indices: Sequence[int]) -> EpisodeDataset:
        """A view with only the given episodes (all their frames, in order)."""
        wanted = np.asarray(list(episode_indices), dtype=np.int64)
        unknown = sorted(set(wanted.tolist()) - set(self.episode_indices))
        if unknown:
            raise ConfigError("episode_indices", f"{unknown[:5]} are not episodes of this dataset")
        return EpisodeDataset._view(self._store, self._rows[np.isin(self.episode_index, wanted)])

    def episode(self, episode_index: int) -> EpisodeDataset:
        return self.select_episodes([episode_index])

    def split(self, val_fraction: float = 0.1,
              seed: int = 0) -> tuple[EpisodeDataset, EpisodeDataset]:
        """(train, val) views with disjoint episodes, a seeded shuffle of the episode list.
        val gets round(val_fraction * episodes), at least 1 when val_fraction > 0."""
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError("val_fraction", f"must be in [0, 1), got {val_fraction}")
        ids = np.asarray(self.episode_indices)
        n_val = 0 if val_fraction == 0 else max(1, int(round(val_fraction * len(ids))))
        if n_val >= len(ids):
            raise ConfigError("val_fraction", f"leaves no training episode out of {len(ids)}")
        shuffled = np.random.default_rng(seed).permutation(ids)
        val = np.sort(shuffled[:n_val])
        train = np.sort(shuffled[n_val:])
        return self.select_episodes(train.tolist()), self.select_episodes(val.tolist())

    # ----------------------------------------------------------------------------- statistics
    def has_terminate(self) -> bool:
        names = self.action_names
        return bool(names) and names[-1] == TERMINATE_NAME

    def action_statistics(self, terminate: bool | None = None) -> ActionStatistics:
        """Statistics of this view's continuous action dims (ActionTokenizer's contract).

        terminate: whether the last action element is the terminate flag (dropped: the tokenizer
        writes it as its own token). None reads it from the action feature's names.
        """
        has_flag = self.has_terminate() if terminate is None else bool(terminate)
        actions = self.actions.astype(np.float64)
        if has_flag:
            actions = actions[:, :-1]
        if len(actions) == 0:
            raise DatasetError("action", "no frames in this view")
        return ActionStatistics.from_actions(actions)

    def __repr__(self) -> str:
        return (f"EpisodeDataset({str(self._store.root)!r}, episodes={len(self.episode_indices)}, "
                f"frames={len(self)})")
