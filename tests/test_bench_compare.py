"""`compare_reports` / `rt2edge bench compare`: regressions flagged beyond the threshold, and only then."""

from __future__ import annotations

import copy
import json

import pytest
from typer.testing import CliRunner

from bench.compare import compare_reports
from bench.report import SCHEMA, SCHEMA_VERSION
from rt2edge.cli import app
from rt2edge.errors import ConfigError


def _variant(label: str, hz: float, p99_s: float, agreement: float | None, success: float | None) -> dict:
    return {"label": label, "backend": label.split("/")[-1],
            "timing": {"hz_median": hz, "latency": {"p50_s": 1 / hz, "p99_s": p99_s}},
            "fidelity": None if agreement is None else {"token_agreement": agreement},
            "success": None if success is None else {"success_rate": success}}


def _report(*variants: dict) -> dict:
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "variants": list(variants)}


OLD = _report(_variant("m/runtime", 100.0, 0.012, 0.98, 0.60), _variant("m/hf-generate", 20.0, 0.06, None, None))


def _edit(report: dict, label: str, path: tuple[str, ...], value: float) -> dict:
    new = copy.deepcopy(report)
    node = next(v for v in new["variants"] if v["label"] == label)
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return new


@pytest.mark.parametrize("path, value, metric", [
    (("timing", "hz_median"), 85.0, "hz_median"),                     # 15% slower
    (("timing", "latency", "p99_s"), 0.015, "p99_latency_s"),          # 25% longer tail
    (("fidelity", "token_agreement"), 0.80, "token_agreement"),
    (("success", "success_rate"), 0.45, "success_rate"),
])
def test_a_regression_is_flagged(path, value, metric):
    result = compare_reports(OLD, _edit(OLD, "m/runtime", path, value), threshold=0.1)
    assert result.regressed and [(c.variant, c.metric) for c in result.regressions] == [("m/runtime", metric)]


def test_changes_within_the_threshold_and_improvements_pass():
    new = _edit(OLD, "m/runtime", ("timing", "hz_median"), 93.0)  # 7% slower: inside 10%
    new = _edit(new, "m/runtime", ("timing", "latency", "p99_s"), 0.006)  # tail halved: better
    new = _edit(new, "m/hf-generate", ("timing", "hz_median"), 40.0)  # twice as fast: better
    result = compare_reports(OLD, new, threshold=0.1)
    assert not result.regressed
    assert "no regression beyond 10%" in result.format_table()
    assert compare_reports(OLD, new, threshold=0.05).regressed  # the same 7% fails a 5% threshold


def test_variants_in_one_report_only_are_listed_not_failed():
    new = _report(OLD["variants"][0], _variant("m/eager", 30.0, 0.05, None, None))
    result = compare_reports(OLD, new)
    assert result.only_old == ["m/hf-generate"] and result.only_new == ["m/eager"] and not result.regressed
    with pytest.raises(ConfigError, match="^threshold"):
        compare_reports(OLD, new, threshold=-0.1)


def test_cli_exit_codes(tmp_path):
    old, good, bad = tmp_path / "old.json", tmp_path / "good.json", tmp_path / "bad.json"
    old.write_text(json.dumps(OLD))
    good.write_text(json.dumps(OLD))
    bad.write_text(json.dumps(_edit(OLD, "m/runtime", ("timing", "hz_median"), 50.0)))
    runner = CliRunner()
    passed = runner.invoke(app, ["bench", "compare", str(old), str(good), "--threshold", "0.1"])
    assert passed.exit_code == 0, passed.output
    failed = runner.invoke(app, ["bench", "compare", str(old), str(bad), "--threshold", "0.1"])
    assert failed.exit_code == 1 and "REGRESSION" in failed.output and "m/runtime" in failed.output
    as_json = runner.invoke(app, ["bench", "compare", str(old), str(bad), "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["regressed"] is True
    missing = runner.invoke(app, ["bench", "compare", str(old), str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "nope.json" in missing.output
