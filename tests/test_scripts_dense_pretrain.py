"""scripts/dense_vision_pretrain.py: its per-patch labels point at what the renderer drew."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from dense_vision_pretrain import COLOUR_IDS, make_frames, patch_of  # noqa: E402

from rt2edge.sim.world import COLOURS, SHAPES  # noqa: E402


def test_patch_of_maps_table_corners_to_raster_corners():
    assert patch_of(-0.49, 0.49, 8)[0] == 0  # top left of the image
    assert patch_of(0.49, -0.49, 8)[0] == 63  # bottom right
    _, dx, dy = patch_of(-0.5 + 0.125 / 2, 0.5 - 0.125 / 2, 8)
    assert abs(dx) < 1e-9 and abs(dy) < 1e-9  # a patch centre has offset 0


def test_object_labels_sit_on_pixels_of_that_colour():
    grid, size = 8, 64
    images, obj_cls, obj_off, *_ = make_frames(12, size, grid, ("pick",), (2,), seed=3)
    colour_of = {i: c for c, i in COLOUR_IDS.items()}
    checked = 0
    for image, classes, offsets in zip(images, obj_cls, obj_off):
        for p in np.flatnonzero(classes):
            colour = colour_of[(classes[p] - 1) // len(SHAPES)]
            row = int((p // grid + 0.5 + offsets[p, 1]) * size / grid)
            col = int((p % grid + 0.5 + offsets[p, 0]) * size / grid)
            pixel = image[min(row, size - 1), min(col, size - 1)].astype(float)
            # the object's centre pixel is its colour, up to the shadow/gripper drawn over it
            nearest = min(COLOURS, key=lambda c: np.abs(pixel - COLOURS[c]).sum())
            checked += nearest == colour
    assert checked >= 0.8 * np.count_nonzero(obj_cls)


def test_gripper_state_label_is_height_level_and_closed():
    """The label separates the grasp frame (low, open) from the hold frame (low, closed)."""
    from dense_vision_pretrain import GRIPPER_STATES

    *_, grip_state = make_frames(400, 64, 8, ("pick",), (2,), seed=1)
    assert set(np.unique(grip_state)) <= set(range(GRIPPER_STATES))
    assert {0, 1, 2} <= set(np.unique(grip_state))  # low open, high open, low closed (a grasp) all occur
