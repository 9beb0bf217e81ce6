"""`rt2edge data generate / info` and the no-torch rule for rt2edge.sim and rt2edge.data."""

from __future__ import annotations

import json
import subprocess
import sys

import typer
from typer.testing import CliRunner

from rt2edge.commands import data


def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """test root"""

    data.register(root)
    return root


def test_generate_then_info(tmp_path):
    out = tmp_path / "ds"
    runner = CliRunner()
    result = runner.invoke(app(), ["data", "generate", "--episodes", "2", "--out", str(out),
                                   "--seed", "3", "--families", "pick, move_to_flag"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["episodes"] == 2 and report["expert_success_rate"] == 1.0
    info = runner.invoke(app(), ["data", "info", str(out)])
    assert info.exit_code == 0, info.output
    summary = json.loads(info.stdout)
    assert summary["families"] == {"pick": 1, "move_to_flag": 1}
    assert len(summary["action_statistics"]["q01"]) == 7


def test_bad_option_is_reported_by_name(tmp_path):
    result = CliRunner().invoke(app(), ["data", "generate", "--episodes", "1", "--out",
                                        str(tmp_path), "--split", "validation"])
    assert result.exit_code != 0 and "--split" in result.output


def test_bad_object_counts_name_the_option(tmp_path):
    result = CliRunner().invoke(app(), ["data", "generate", "--episodes", "1", "--out",
                                        str(tmp_path), "--objects", "3,x"])
    assert result.exit_code != 0 and "--objects" in result.output


def test_sim_and_data_do_not_import_torch():
    code = ("import sys, rt2edge.sim, rt2edge.data, rt2edge.data.vqa; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
