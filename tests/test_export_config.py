"""ExportConfig validation and the `rt2edge export` / `head-savings` commands (no export run)."""

from __future__ import annotations

import json

import pytest

from export.config import ExportConfig
from rt2edge.errors import ConfigError


@pytest.mark.parametrize("kwargs, field", [
    ({"precision": "int3"}, "precision"),
    ({"target": "coreml"}, "target"),
    ({"opset": 17}, "opset"),
    ({"target": "tensorrt", "opset": 24}, "opset"),  # past what the exporter writes (23)
    ({"validate_frames": 0}, "validate_frames"),
    ({"atol": -1.0}, "atol"),
    ({"min_token_agreement": 1.5}, "min_token_agreement"),
    ({"atol": float("inf")}, "atol"),  # would switch the validation gate off
    ({"rtol": float("nan")}, "rtol"),
    ({"min_token_agreement": True}, "min_token_agreement"),
    ({"build_engine": True}, "build_engine"),
    ({"max_batch": 0}, "max_batch"),
])
def test_bad_values_name_their_field(tmp_path, kwargs, field):
    with pytest.raises(ConfigError) as info:
        ExportConfig(checkpoint=tmp_path / "ckpt", out=tmp_path / "out", **kwargs)
    assert info.value.field == field


def test_tolerances_default_per_precision_and_round_trip(tmp_path):
    fp32 = ExportConfig(checkpoint=tmp_path / "c", out=tmp_path / "o")
    assert fp32.tolerance == {"atol": 1e-3, "rtol": 0.0, "min_token_agreement": 1.0}
    fp16 = ExportConfig(checkpoint=tmp_path / "c", out=tmp_path / "o", precision="fp16", target="tensorrt",
                        opset=20, atol=0.1)
    assert fp16.tolerance["atol"] == 0.1 and fp16.tolerance["rtol"] > 0
    path = fp16.write(tmp_path)
    assert ExportConfig.from_dict(json.loads(path.read_text())) == fp16


def test_cli_reports_bad_option_by_name(tmp_path):
    from typer.testing import CliRunner

    from rt2edge.cli import app

    result = CliRunner().invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "a"),
                                      "--target", "tensorrt", "--opset", "24"])
    assert result.exit_code == 2 and "--opset" in result.output


def test_cli_head_savings_for_the_7b_config():
    from typer.testing import CliRunner

    from rt2edge.cli import app

    result = CliRunner().invoke(app, ["head-savings", "--no-presets", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["openvla-7b (llama-2-7b)"]["bytes_removed"]["fp16"] == 260_046_848
