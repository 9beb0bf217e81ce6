"""The LeRobot dataset layout (v2.1, images embedded in parquet), written and described here.

    meta/info.json            features (dtype/shape/names), fps, totals, chunks_size, data_path
    meta/stats.json           per feature: min/max/mean/std/count (+ q01/q99 for vectors)
    meta/episodes.jsonl       {"episode_index", "tasks", "length", + rt2edge fields}
    meta/episodes_stats.jsonl per-episode stats (LeRobot v2.1)
    meta/tasks.jsonl          {"task_index", "task"}
    data/chunk-000/episode_000000.parquet

[Contract] Image columns are structs {bytes: PNG, path: str} like Hugging Face `datasets.Image`;
the parquet schema carries the `huggingface` feature metadata so `datasets` decodes them too.
Episode files also carry the episode's record under the schema key `rt2edge.episode`, which is
what a resumed generation reads back instead of regenerating.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rt2edge.actions import ActionStatistics
from rt2edge.errors import DatasetError
from rt2edge.optional import require

pa = require("pyarrow", extra="toolkit", purpose="LeRobot parquet datasets")
import pyarrow.compute as pc  # noqa: E402  (pyarrow is present once `require` returned)
import pyarrow.parquet as pq  # noqa: E402

CODEBASE_VERSION = "v2.1"
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
IMAGE_KEY = "observation.image"
EPISODE_META_KEY = b"rt2edge.episode"
ROBOT_TYPE = "rt2edge_tabletop"


def episode_file(root: Path, index: int, chunks_size: int, template: str = DATA_PATH) -> Path:
    """Where episode `index` of a v2.x dataset lives: chunk `index // chunks_size` of `template`."""
    return root / template.format(episode_chunk=index // chunks_size, episode_index=index)


def features(image_size: int, state_names: Sequence[str],
             action_names: Sequence[str]) -> dict[str, Any]:
    """info.json "features" for the simulator's episodes."""
    scalar = {"shape": [1], "names": None}
    return {
        IMAGE_KEY: {"dtype": "image", "shape": [image_size, image_size, 3],
                    "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": [len(state_names)],
                              "names": list(state_names)},
        "action": {"dtype": "float32", "shape": [len(action_names)], "names": list(action_names)},
        "timestamp": {"dtype": "float32", **scalar},
        "frame_index": {"dtype": "int64", **scalar},
        "episode_index": {"dtype": "int64", **scalar},
        "index": {"dtype": "int64", **scalar},
        "task_index": {"dtype": "int64", **scalar},
        "next.done": {"dtype": "bool", **scalar},
        "next.success": {"dtype": "bool", **scalar},
    }


def _hf_feature(spec: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face `datasets` feature description of one info.json feature."""
    if spec["dtype"] == "image":
        return {"_type": "Image"}
    if spec["shape"] == [1]:
        return {"dtype": spec["dtype"], "_type": "Value"}
    return {"feature": {"dtype": spec["dtype"], "_type": "Value"}, "length": spec["shape"][0],
            "_type": "Sequence"}


_ARROW_TYPES = {"float32": pa.float32(), "int64": pa.int64(), "bool": pa.bool_()}


def arrow_schema(feats: dict[str, Any], episode_record: dict[str, Any] | None = None) -> "pa.Schema":
    fields = []
    for name, spec in feats.items():
        if spec["dtype"] == "image":
            typ = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        elif spec["shape"] == [1]:
            typ = _ARROW_TYPES[spec["dtype"]]
        else:
            typ = pa.list_(_ARROW_TYPES[spec["dtype"]])
        fields.append(pa.field(name, typ))
    hf = {"info": {"features": {name: _hf_feature(spec) for name, spec in feats.items()}}}
    meta = {b"huggingface": json.dumps(hf).encode()}
    if episode_record is not None:
        meta[EPISODE_META_KEY] = json.dumps(episode_record).encode()
    return pa.schema(fields, metadata=meta)


def encode_png(image: np.ndarray) -> bytes:
    pil = require("PIL.Image", extra="toolkit", purpose="PNG images in datasets")
    buf = io.BytesIO()
    pil.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_image(data: bytes, field: str = IMAGE_KEY) -> np.ndarray:
    pil = require("PIL.Image", extra="toolkit", purpose="images in datasets")
    try:
        with pil.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for corrupt data; name the column instead
        raise DatasetError(field, f"cannot decode image bytes ({exc})") from exc


def episode_table(columns: dict[str, Any], feats: dict[str, Any],
                  episode_record: dict[str, Any]) -> "pa.Table":
    """One episode's frames as a table; `columns[name]` are per-frame values in feature order."""
    schema = arrow_schema(feats, episode_record)
    arrays = []
    for field in schema:
        values = columns[field.name]
        if feats[field.name]["dtype"] == "image":
            values = [{"bytes": b, "path": f"frame_{i:06d}.png"} for i, b in enumerate(values)]
        elif isinstance(values, np.ndarray) and values.ndim == 2:
            values = list(values)
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_table(table: "pa.Table", path) -> None:
    pq.write_table(table, path, compression="zstd")


def column_vectors(column: "pa.ChunkedArray | pa.Array", name: str,
                   where: Callable[[int], str] = lambda row: f"row {row}") -> np.ndarray:
    """A list<float> column (fixed length per row) as an (N, D) float64 array. `where(row)` names
    a row in errors (e.g. its episode and frame)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0))
    if arr.null_count:
        raise DatasetError(name, f"{where(_first(arr.is_null()))}: no value")
    # Rows of 7 and 9 values would flatten to a multiple of the row count and slide every value
    # after the first short row into the wrong dim: check each row's own length.
    lengths = pc.list_value_length(arr)
    if pc.min(lengths).as_py() != pc.max(lengths).as_py():
        first = lengths[0].as_py()
        row = _first(pc.not_equal(lengths, first))
        raise DatasetError(name, f"{where(row)}: {lengths[row].as_py()} values, {where(0)} has {first}")
    flat = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    return flat.reshape(n, flat.size // n)


def _first(mask: "pa.Array") -> int:
    """Index of the first true value of a boolean array."""
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def read_vectors(path, name: str) -> np.ndarray:
    return column_vectors(pq.read_table(path, columns=[name]).column(name), name)


def read_episode_record(path) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    if EPISODE_META_KEY not in meta:
        raise DatasetError(str(path), "has no rt2edge episode record (not written by rt2edge?)")
    return json.loads(meta[EPISODE_META_KEY])


def vector_stats(values: np.ndarray) -> dict[str, list[float]]:
    """min/max/mean/std/q01/q99/count of an (N, D) array, per dim (the tokenizer's statistics)."""
    arr = np.asarray(values, dtype=np.float64)
    return {**ActionStatistics.from_actions(arr).to_dict(), "count": [int(arr.shape[0])]}


def image_moments(images: np.ndarray) -> dict[str, list]:
    """Per-channel sums over (N, H, W, 3) uint8 images in [0, 1] units, for exact aggregation."""
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    return {"sum": x.sum(0).tolist(), "sumsq": (x * x).sum(0).tolist(),
            "min": x.min(0).tolist(), "max": x.max(0).tolist(), "pixels": int(x.shape[0]),
            "count": int(images.shape[0])}


def image_stats(moments: Sequence[dict[str, list]]) -> dict[str, list]:
    """LeRobot image stats (per channel, shaped (3, 1, 1)) aggregated from `image_moments`."""
    pixels = sum(m["pixels"] for m in moments)
    total = np.sum([m["sum"] for m in moments], axis=0)
    total_sq = np.sum([m["sumsq"] for m in moments], axis=0)
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean * mean, 0.0))

    def chw(v) -> list:
        return [[[float(c)]] for c in v]

    return {"min": chw(np.min([m["min"] for m in moments], axis=0)),
            "max": chw(np.max([m["max"] for m in moments], axis=0)),
            "mean": chw(mean), "std": chw(std), "count": [sum(m["count"] for m in moments)]}
