"""`rt2edge act`: prints an action from an artifact; clear errors; exit code 1 on a safe fallback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from artifact_factory import make_artifact
from typer.testing import CliRunner

from rt2edge.cli import app
from rt2edge.optional import is_available


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("cli") / "art")[0]


@pytest.fixture()
def frame(tmp_path):
    path = tmp_path / "frame.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (24, 32, 3), np.uint8))
    return path


def test_act_prints_text_and_json(root, frame):
    runner = CliRunner()
    text = runner.invoke(app, ["act", str(root), "--image", str(frame), "--instruction", "open the drawer"])
    assert text.exit_code == 0, text.output
    assert "provider:  CPUExecutionProvider" in text.output and "action:" in text.output
    result = runner.invoke(app, ["act", str(root), "--image", str(frame), "--instruction",
                                 "open the drawer", "--json", "--providers", "cuda,cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["values"]) == 8 and len(data["tokens"]) == 8 and data["safe_fallback"] is False


@pytest.mark.skipif(not is_available("PIL"), reason="pillow not installed")
def test_act_reads_png(root, frame, tmp_path):
    from PIL import Image

    png = tmp_path / "frame.png"
    Image.fromarray(np.load(frame)).save(png)
    runner = CliRunner()
    from_png = runner.invoke(app, ["act", str(root), "--image", str(png), "--instruction", "move left", "--json"])
    from_npy = runner.invoke(app, ["act", str(root), "--image", str(frame), "--instruction", "move left", "--json"])
    assert json.loads(from_png.stdout)["tokens"] == json.loads(from_npy.stdout)["tokens"]


def test_act_errors_are_one_line(root, frame, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["act", str(root), "--image", str(frame), "--instruction", " "])
    assert bad.exit_code == 2 and "error: instruction: is empty" in bad.output
    missing = runner.invoke(app, ["act", str(root), "--image", str(tmp_path / "x.npy"), "--instruction", "go"])
    assert missing.exit_code == 2 and "no such file" in missing.output
    broken = shutil.copytree(root, tmp_path / "broken")
    (broken / "decoder.onnx").write_bytes(b"truncated")
    result = runner.invoke(app, ["act", str(broken), "--image", str(frame), "--instruction", "go"])
    assert result.exit_code == 2 and "decoder.onnx" in result.output and "truncated" in result.output
