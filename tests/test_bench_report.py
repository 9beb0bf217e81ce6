"""The bench report: a real run on tiny artifacts, its JSON, and the pages rendered from it.

One module-scoped `bench.run` (two ONNX artifacts on the runtime, one of them the reference, one
closed-loop episode per split) feeds every test; the HTML page's figures are checked number by
number against the JSON they claim to plot.
"""

from __future__ import annotations

import base64
import copy
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from bench import BenchConfig, run
from bench.report import REPORT_HTML, REPORT_JSON, REPORT_MD, SCHEMA_VERSION, load_report
from rt2edge.errors import ArtifactError, ConfigError

STEPS, FRAMES = 4, 3


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    from artifact_factory import make_artifact

    root = tmp_path_factory.mktemp("bench-report")
    a, _ = make_artifact(root / "tiny-a", seed=0)
    b, _ = make_artifact(root / "tiny-b", seed=1)
    cfg = BenchConfig(sources=[a, b], out=root / "report", steps=STEPS, warmup=1, frames=FRAMES,
                      reference=a, episodes=1, max_episode_steps=3, machine_budget_s=0.4)
    path = run(cfg)
    return path, load_report(path)


class FigureCollector(HTMLParser):
    """Every <figure data-figure>: its PNG (decoded) and the JSON of the data it plots."""

    def __init__(self):
        super().__init__()
        self.figures: dict[str, dict] = {}
        self._current: str | None = None
        self._in_data = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self._current = attrs["data-figure"]
            self.figures[self._current] = {"png": None, "data": ""}
        elif tag == "img" and self._current:
            prefix = "data:image/png;base64,"
            assert attrs["src"].startswith(prefix)  # self-contained: nothing fetched
            self.figures[self._current]["png"] = base64.b64decode(attrs["src"][len(prefix):])
        elif tag == "script" and attrs.get("class") == "figure-data":
            self._in_data = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_data = False
        elif tag == "figure":
            self._current = None

    def handle_data(self, data):
        if self._in_data and self._current:
            self.figures[self._current]["data"] += data


def _figures(html: str) -> dict[str, dict]:
    parser = FigureCollector()
    parser.feed(html)
    return {k: {"png": v["png"], "spec": json.loads(v["data"])} for k, v in parser.figures.items()}


def _series(spec: dict) -> dict[str, dict]:
    return {s["name"]: s for s in spec["series"]}


# ------------------------------------------------------------------------------ the JSON
def test_report_json_holds_every_measurement(bench_run):
    path, report = bench_run
    assert report["schema_version"] == SCHEMA_VERSION and path.name == REPORT_JSON
    labels = [v["label"] for v in report["variants"]]
    assert labels == ["tiny-a/runtime", "tiny-b/runtime"]
    assert report["observations"]["frames"] == FRAMES and "TabletopEnv" in report["observations"]["source"]
    for v in report["variants"]:
        t = v["timing"]
        assert t["steps"] == STEPS and len(t["samples_s"]) == STEPS and t["warmup"] == 1
        assert set(t["deadline_miss"]) == {"3", "5", "10"}
        assert {"preprocess", "vision", "prefill", "decode", "postprocess"} <= set(t["stages"])
        assert len(t["decode_steps_by_index"]) == 7  # 8 tokens: prefill + 7 decoder runs
        assert t["hz_median"] == pytest.approx(1 / t["latency"]["p50_s"])
        assert t["cpu"]["count"] == STEPS and t["cpu_share"] > 0 and t["hz_cpu_median"] > 0
        assert v["provider"] == "CPUExecutionProvider" and v["threads"] == 1 and v["precision"] == "fp32"
        assert v["prefix_cache_size"] == 0  # image-first prompts: no text before the image to cache
        assert v["size_bytes"] > 0 and v["memory"]["peak_rss_mb"] > 0
        assert v["ratios"] is None  # no hf-generate baseline in this run
        decode = v["roofline"]["stages"]["decode"]
        assert decode["runs"] == 7 and decode["measured_s"] == t["stages"]["decode"]["p50_s"]
        assert decode["fraction"] == pytest.approx(decode["bound_s"] / decode["measured_s"])
        assert decode["fraction_with_overhead"] > decode["fraction"]
        assert v["roofline"]["cost_source"] == "onnx"
        assert len(v["projection"]) == 5 and all("estimate" in p["label"] for p in v["projection"])
        assert v["success"]["episodes"] == 2  # one episode per split


def test_fidelity_against_the_reference(bench_run):
    _, report = bench_run
    same, other = report["variants"]
    assert report["reference"]["label"] == "tiny-a/runtime"
    assert same["fidelity"]["token_agreement"] == 1.0 and same["fidelity"]["action_mae"] == 0.0
    assert same["fidelity"]["frames"] == FRAMES
    assert other["fidelity"]["token_agreement"] < 1.0  # different weights, different actions
    assert other["fidelity"]["action_mae"] > 0.0
    # Closed loop, paired scene by scene with the reference: the same artifact solves the same
    # episodes (the runtime is deterministic); every pairing covers each split, then both.
    for variant in (same, other):
        paired = variant["success"]["paired_with_reference"]
        assert [c["split"] for c in paired] == ["train", "heldout", None] and paired[-1]["episodes"] == 2
        assert all(c["both"] + c["only_a"] + c["only_b"] + c["neither"] == c["episodes"] for c in paired)
    assert all(c["only_a"] == c["only_b"] == 0 and c["p_value"] == 1.0
               for c in same["success"]["paired_with_reference"])


def test_openvla_validation_is_in_every_report(bench_run):
    _, report = bench_run
    val = report["openvla_validation"]
    assert val["fitted_on"] == "int8" and sorted(val["held_out"]) == ["fp16", "int4"]
    published = {r["variant"]: r["published_ms"] for r in val["rows"]}
    assert published == {"fp16": 840.0, "int8": 471.0, "int4": 336.0}
    roles = {r["variant"]: r["role"] for r in val["rows"]}
    assert roles == {"fp16": "held-out", "int8": "fitted", "int4": "held-out"}


def test_writes_are_atomic_and_complete(bench_run):
    path, _ = bench_run
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == sorted([REPORT_JSON, REPORT_MD, REPORT_HTML, "bench_config.json"])  # no .tmp left
    cfg = json.loads((path.parent / "bench_config.json").read_text())
    assert BenchConfig.from_dict(cfg).steps == STEPS


# ------------------------------------------------------------------------------ the pages
def test_html_is_a_function_of_the_json(bench_run):
    from bench.render_html import render_html
    from bench.render_md import render_markdown

    path, report = bench_run
    assert (path.parent / REPORT_HTML).read_text() == render_html(report)
    assert (path.parent / REPORT_MD).read_text() == render_markdown(report)


def test_every_figure_plots_the_numbers_of_the_json(bench_run):
    import matplotlib.image

    path, report = bench_run
    figures = _figures((path.parent / REPORT_HTML).read_text())
    assert set(figures) == {"latency", "hz_vs_size", "pareto", "stages", "decode_steps", "roofline", "projection"}
    for fig in figures.values():
        pixels = matplotlib.image.imread(io.BytesIO(fig["png"]), format="png")
        assert pixels.ndim == 3 and pixels.std() > 0  # a drawn image, not a blank one
    variants = {v["label"]: v for v in report["variants"]}

    latency = _series(figures["latency"]["spec"])
    for label, v in variants.items():
        assert latency[label]["y"] == pytest.approx([s * 1e3 for s in v["timing"]["samples_s"]])
    size = _series(figures["hz_vs_size"]["spec"])
    for label, v in variants.items():
        assert size[label]["x"] == pytest.approx([v["size_bytes"] / 1e6])
        assert size[label]["y"] == pytest.approx([v["timing"]["hz_median"]])
    stages = _series(figures["stages"]["spec"])
    assert figures["stages"]["spec"]["categories"] == list(variants)
    for name, s in stages.items():
        assert s["y"] == pytest.approx([v["timing"]["stages"][name]["p50_s"] * 1e3 for v in variants.values()])
    steps = _series(figures["decode_steps"]["spec"])
    for label, v in variants.items():
        assert steps[label]["y"] == pytest.approx([s["p50_s"] * 1e3 for s in v["timing"]["decode_steps_by_index"]])
    roof = figures["roofline"]["spec"]
    for label, v in variants.items():
        got = _series(roof)[label]["y"]
        assert got == pytest.approx([v["roofline"]["stages"][s]["fraction"] for s in roof["categories"]])
    proj = figures["projection"]["spec"]
    assert "estimate" in proj["title"].lower()
    for label, v in variants.items():
        by = {p["device_name"]: p["hz"] for p in v["projection"]}
        assert _series(proj)[label]["y"] == pytest.approx([by[d] for d in proj["categories"]])
    pareto = _series(figures["pareto"]["spec"])
    # success when a variant succeeds at all, else agreement with the reference (random weights)
    succeeded = any(v["success"]["success_rate"] > 0 for v in variants.values())
    for label, v in variants.items():
        accuracy = v["success"]["success_rate"] if succeeded else v["fidelity"]["token_agreement"]
        assert pareto[label]["x"] == pytest.approx([v["timing"]["hz_median"]])
        assert pareto[label]["y"] == pytest.approx([accuracy])
    assert "Pareto front" in pareto


def test_tables_show_the_json_numbers(bench_run):
    path, report = bench_run
    html = (path.parent / REPORT_HTML).read_text()
    md = (path.parent / REPORT_MD).read_text()
    for page in (html, md):
        for v in report["variants"]:
            assert f"{v['timing']['hz_median']:.1f}" in page and v["label"] in page
        assert "ESTIMATE" in page and "fitted on the published int8 figure" in page
        for published in ("840", "471", "336"):
            assert published in page
        assert "only reference / only variant" in page and "McNemar p" in page


def test_pareto_front_and_empty_figures():
    from bench.figures import pareto_figure, pareto_front

    assert pareto_front([(10, 0.5), (20, 0.4), (5, 0.9), (8, 0.3)]) == [(5, 0.9), (10, 0.5), (20, 0.4)]
    spec = pareto_figure({"variants": [{"label": "x", "fidelity": None, "success": None}]})
    assert spec.empty and "no --reference" in spec.note


def test_load_report_refuses_what_it_cannot_read(tmp_path, bench_run):
    _, report = bench_run
    bad = copy.deepcopy(report)
    bad["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "new.json").write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="schema_version"):
        load_report(tmp_path / "new.json")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(ArtifactError, match="not an rt2edge bench report"):
        load_report(tmp_path / "other.json")
    with pytest.raises(ArtifactError, match="no such bench report"):
        load_report(tmp_path / "missing.json")


def test_config_is_validated_by_field(tmp_path):
    with pytest.raises(ConfigError, match="^backends"):
        BenchConfig(sources=[tmp_path / "a"], out=tmp_path / "o", backends=["runtime"])
    with pytest.raises(ConfigError, match="^target_rates"):
        BenchConfig(sources=[tmp_path / "a"], out=tmp_path / "o", target_rates=[0])
    for budget in (0.0, float("inf"), "1"):
        with pytest.raises(ConfigError, match="^machine_budget_s"):
            BenchConfig(sources=[tmp_path / "a"], out=tmp_path / "o", machine_budget_s=budget)
    with pytest.raises(ConfigError, match="^sources"):
        BenchConfig(sources=[tmp_path / "a", tmp_path / "a"], out=tmp_path / "o")
    with pytest.raises(ConfigError, match="^out"):
        BenchConfig(sources=[tmp_path / "a"], out=tmp_path / "a")
    with pytest.raises(ConfigError, match="^devices"):
        BenchConfig(sources=[tmp_path / "a"], out=tmp_path / "o", devices=["jetson-tx1"])
    with pytest.raises(ConfigError, match="^providers"):
        BenchConfig(sources=[tmp_path / "a"], out=tmp_path / "o", providers="cpu,tpu")
    with pytest.raises(ConfigError, match="^rounds"):
        BenchConfig(sources=[tmp_path / "a"], out=tmp_path / "o", steps=3, rounds=4)
    with pytest.raises(ArtifactError, match="neither a checkpoint"):
        run(BenchConfig(sources=[tmp_path], out=tmp_path / "o"))
    assert not np.any([p.name == "o" for p in tmp_path.iterdir()])  # refused before writing anything
