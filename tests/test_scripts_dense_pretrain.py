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


def test_landmark_labels_sit_on_the_mat_or_flag_drawn_there():
    """Mats by colour, flags by country: each label's patch centre shows that mat's pale colour,
    and flag labels name a flag of the scene at that place (not the bare table)."""
    from dense_vision_pretrain import COUNTRY_IDS, LANDMARK_CLASSES

    from rt2edge.sim.render import TABLE_RGB, mat_fill_rgb

    grid, size = 8, 64
    images, _, _, landmark, *_ = make_frames(40, size, grid, ("move_to_mat", "move_to_flag"), (3,), seed=4)
    assert landmark.max() < LANDMARK_CLASSES
    mats = flags = mat_hits = flag_hits = 0
    for image, classes in zip(images, landmark):
        for p in np.flatnonzero(classes):
            centre = image[p // grid * 8 + 4, p % grid * 8 + 4].astype(float)
            if classes[p] <= len(COLOURS):
                mats += 1
                mat_hits += np.abs(centre - mat_fill_rgb(list(COLOURS)[classes[p] - 1])).sum() < 30
            else:
                assert classes[p] - 1 - len(COLOURS) < len(COUNTRY_IDS)
                flags += 1
                flag_hits += np.abs(centre - np.asarray(TABLE_RGB)).sum() > 30
    assert mats >= 20 and flags >= 20
    assert mat_hits >= 0.8 * mats and flag_hits >= 0.8 * flags


def test_losses_and_metrics_cover_every_head():
    import torch
    from dense_vision_pretrain import DenseHeads, losses, metrics

    labels = [torch.from_numpy(a) for a in make_frames(6, 64, 8, None, (3,), seed=5)[1:]]
    width, features = 16, torch.randn(6, 64, 16)
    base = {"object", "object_offset", "gripper", "gripper_offset", "gripper_state"}
    for landmarks in (False, True):
        model = DenseHeads(lambda pixel_values: None, width, landmarks=landmarks)
        with torch.no_grad():
            pred = model.out(features)
            parts, scores = losses(pred, *labels), metrics(pred, *labels, patch_px=8)
        assert set(parts) == base | ({"landmark"} if landmarks else set())
        assert all(torch.isfinite(v) for v in parts.values())
        assert ("landmark_recall" in scores) == landmarks and 0.0 <= scores["object_recall"] <= 1.0
