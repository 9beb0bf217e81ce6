"""scripts/move_fit.py: the per-phase move-direction fit reads the labels' way."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from move_fit import move_fit  # noqa: E402


def _labels() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((6, 8))
    labels[:, :2] = [[0.1, 0.0], [0.0, -0.1], [0.1, 0.1], [-0.1, 0.0], [0.0, 0.1], [0.0, 0.0]]
    holding = np.array([False, False, True, True, True, True])
    return labels, holding


def test_the_labels_fit_themselves_and_their_opposite_fits_negatively():
    labels, holding = _labels()
    own = move_fit(labels, labels * 3.0, holding)  # the direction counts, not the length
    assert own["approach"] == {"frames": 2, "mean_cos": 1.0, "aligned": 1.0}
    assert own["carry"] == {"frames": 3, "mean_cos": 1.0, "aligned": 1.0}  # the still label is left out
    opposite = move_fit(labels, -labels, holding)
    assert opposite["carry"]["mean_cos"] == -1.0 and opposite["carry"]["aligned"] == 0.0


def test_a_policy_right_on_approach_only_is_told_apart_from_one_right_on_carry():
    labels, holding = _labels()
    predicted = labels.copy()
    predicted[holding, :2] = predicted[holding][:, [1, 0]] * [1, -1]  # carry moves turned 90 degrees
    fit = move_fit(labels, predicted, holding)
    assert fit["approach"]["mean_cos"] == 1.0
    assert fit["carry"]["mean_cos"] == pytest.approx(0.0, abs=1e-9) and fit["carry"]["aligned"] == 0.0


def test_a_still_prediction_has_cosine_zero_and_an_empty_phase_reads_none():
    labels, holding = _labels()
    fit = move_fit(labels, np.zeros_like(labels), np.zeros(6, bool))
    assert fit["approach"] == {"frames": 5, "mean_cos": 0.0, "aligned": 0.0}
    assert fit["carry"] == {"frames": 0, "mean_cos": None, "aligned": None}


def _run_main(monkeypatch, capsys, args: list[str]) -> str:
    import move_fit as script

    monkeypatch.setattr(sys, "argv", ["move_fit.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        script.main()
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_counts_are_refused_before_loading(monkeypatch, capsys, tmp_path):
    err = _run_main(monkeypatch, capsys, [str(tmp_path / "policy"), str(tmp_path / "data"), "--episodes", "0"])
    assert "--episodes and --batch-size must be >= 1" in err


def test_a_dataset_without_the_holding_state_is_refused_naming_it(monkeypatch, capsys, tmp_path):
    import json

    from rt2edge.data.generate import GenerateConfig, generate

    root = tmp_path / "data"
    generate(GenerateConfig(out=str(root), episodes=1, max_steps=6))
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["observation.state"]["names"] = ["ee_x", "ee_y", "ee_z", "gripper_closed", "other"]
    info_path.write_text(json.dumps(info))
    err = _run_main(monkeypatch, capsys, [str(tmp_path / "policy"), str(root)])
    assert "observation.state has no 'holding'" in err and "gripper_closed" in err
