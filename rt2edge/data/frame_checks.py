"""Checks of a loaded dataset's frames, run once at load: a bad value is refused naming its
episode, frame and field, instead of failing (or silently training on it) deep inside a run.

- actions and states: finite; the terminate flag (an action named "terminate" last) 0 or 1;
- images: every embedded PNG has the size of the first frame (and of `info.json`'s feature shape
  when it gives one), read from the PNG header alone, so a 290k-frame dataset is checked in well
  under a second without decoding a pixel (other encodings are checked when decoded);
- the frame and episode counts of `info.json` (LeRobot v3 keeps several episodes per file, so a
  missing file would otherwise just shrink the dataset).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rt2edge.data.lerobot import DatasetError, pa, pc

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TERMINATE_NAME = "terminate"


def _where(episode_index: np.ndarray, frame_index: np.ndarray, row: int) -> str:
    return f"episode {int(episode_index[row])}, frame {int(frame_index[row])}"


def check_vectors(values: np.ndarray, field: str, names: list[str], episode_index: np.ndarray,
                  frame_index: np.ndarray) -> None:
    """Every value finite; a trailing `terminate` dim (when `names` says so) in {0, 1}."""
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        row, dim = (int(v) for v in bad[0])
        label = names[dim] if dim < len(names) else str(dim)
        raise DatasetError(field, f"{_where(episode_index, frame_index, row)}: dim {dim} ({label}) is "
                                  f"{values[row, dim]} ({len(bad)} non-finite values in all)")
    if field == "action" and names and names[-1] == TERMINATE_NAME and values.shape[1] == len(names):
        flag = values[:, -1]
        off = np.flatnonzero((flag != 0) & (flag != 1))
        if off.size:
            row = int(off[0])
            raise DatasetError(field, f"{_where(episode_index, frame_index, row)}: the terminate flag is "
                                      f"{float(flag[row]):.4g}, expected 0 or 1 ({off.size} frames in all)")


def png_sizes(images: Any) -> tuple[np.ndarray, np.ndarray]:
    """(height, width) per row from the IHDR of embedded PNG bytes; -1 where a row holds no PNG
    bytes (another encoding, or a path to a file)."""
    data = images.field("bytes")
    heights, widths = np.full(len(data), -1, np.int64), np.full(len(data), -1, np.int64)
    if not (pa.types.is_binary(data.type) or pa.types.is_large_binary(data.type)):
        return heights, widths  # e.g. every image a path beside the parquet files (null bytes)
    heads = pc.binary_slice(data, 0, 24).to_pylist()  # 24 bytes a row, not the pixels
    rows = np.array([i for i, h in enumerate(heads) if h is not None and len(h) == 24 and h[:8] == PNG_SIGNATURE],
                    np.int64)
    if rows.size:
        head = np.frombuffer(b"".join(heads[i] for i in rows), np.uint8).reshape(-1, 24)
        size = head[:, 16:24].astype(np.int64)  # IHDR: width, height, big-endian uint32
        widths[rows] = (size[:, 0] << 24) | (size[:, 1] << 16) | (size[:, 2] << 8) | size[:, 3]
        heights[rows] = (size[:, 4] << 24) | (size[:, 5] << 16) | (size[:, 6] << 8) | size[:, 7]
    return heights, widths


def check_image_sizes(images: Any, key: str, feature: dict[str, Any], episode_index: np.ndarray,
                      frame_index: np.ndarray) -> None:
    heights, widths = png_sizes(images)
    known = np.flatnonzero(heights >= 0)
    if not known.size:
        return
    shape = feature.get("shape") or []
    if len(shape) == 3 and all(isinstance(d, int) for d in shape):
        # LeRobot writes image shapes (H, W, C); some tools write (C, H, W).
        expected = (shape[0], shape[1]) if shape[2] == 3 else (shape[1], shape[2])
        source = f"info.json's {key} shape {list(shape)}"
    else:
        first = int(known[0])
        expected = (int(heights[first]), int(widths[first]))
        source = f"{_where(episode_index, frame_index, first)}"
    off = known[(heights[known] != expected[0]) | (widths[known] != expected[1])]
    if off.size:
        row = int(off[0])
        raise DatasetError(key, f"{_where(episode_index, frame_index, row)}: the image is "
                                f"{heights[row]}x{widths[row]} (HxW), {source} is {expected[0]}x{expected[1]} "
                                f"({off.size} frames in all)")


def check_counts(info: dict[str, Any], episodes: int, frames: int) -> None:
    for key, loaded in (("total_episodes", episodes), ("total_frames", frames)):
        listed = info.get(key)
        if isinstance(listed, int) and listed != loaded:
            raise DatasetError(key, f"meta/info.json lists {listed}, the data files hold {loaded} "
                                    "(a data file missing, or one from another dataset)")
