"""What the ONNX path of quantize.run refuses (typed errors naming the field, nothing left behind),
and the calibration data it records, on the tiny hand-built artifacts of tests/artifact_factory.py
(real ONNX graphs and a real runtime, no torch export: each run takes a fraction of a second)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime.quantization")
pytest.importorskip("torch")  # the method registry loads the bitsandbytes handlers too
pytest.importorskip("bitsandbytes")

import quantize  # noqa: E402
from artifact_factory import make_artifact  # noqa: E402
from quantize import QuantizeConfig  # noqa: E402
from quantize.calibration import _rows, sim_observations  # noqa: E402
from quantize.onnx_probe import ArtifactProbe  # noqa: E402
from quantize.registry import _METHODS, register_method  # noqa: E402
from rt2edge.artifact import load_manifest  # noqa: E402
from rt2edge.errors import ArtifactError, ConfigError  # noqa: E402

SIZE = 16  # the factory artifact's image size
FAST = dict(calibration_frames=2, holdout_frames=2, threads=1)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder, _ = make_artifact(tmp_path_factory.mktemp("fac") / "fp32", image_size=SIZE)
    return folder


@pytest.fixture(scope="module")
def quantized(source, tmp_path_factory) -> Path:
    return quantize.run(QuantizeConfig(source=source, out=tmp_path_factory.mktemp("q") / "int8",
                                       method="int8-dynamic", **FAST))


def leftovers(folder: Path) -> list[str]:
    return sorted(p for p in os.listdir(folder) if p.startswith("."))


def scratch_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("rt2edge-quantize-")}


def test_an_already_quantized_artifact_is_refused(quantized, tmp_path):
    assert load_manifest(quantized).precision == "int8-dynamic"
    with pytest.raises(ConfigError, match="already quantized") as err:
        quantize.run(QuantizeConfig(source=quantized, out=tmp_path / "again", method="int4-matmulnbits", **FAST))
    assert err.value.field == "source" and os.listdir(tmp_path) == []


def test_an_unknown_method_is_refused_naming_the_known_ones(source, tmp_path):
    with pytest.raises(ConfigError, match="int4-qdq") as err:
        QuantizeConfig(source=source, out=tmp_path / "o", method="int3-magic")
    assert err.value.field == "method"


def test_calibration_frames_of_another_image_size_are_refused(source, tmp_path):
    wrong = sim_observations(2, image_size=2 * SIZE)
    with pytest.raises(ConfigError, match=r"\(32, 32, 3\).*\(16, 16, 3\)") as err:
        quantize.run(QuantizeConfig(source=source, out=tmp_path / "o", method="int8-qdq", **FAST), observations=wrong)
    assert err.value.field == "calibration"

    from rt2edge.data.generate import GenerateConfig, generate

    generate(GenerateConfig(out=str(tmp_path / "data32"), episodes=1, image_size=2 * SIZE, max_steps=6))
    with pytest.raises(ConfigError) as err:
        quantize.run(QuantizeConfig(source=source, out=tmp_path / "o", method="int8-qdq",
                                    calibration=str(tmp_path / "data32"), **FAST))
    assert err.value.field == "calibration" and not (tmp_path / "o").exists()


def test_a_corrupt_or_truncated_artifact_is_refused(source, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(source):
        (copy / name).write_bytes((source / name).read_bytes())
    data = bytearray((copy / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the sha256 can tell
    (copy / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        quantize.run(QuantizeConfig(source=copy, out=tmp_path / "o", method="int8-dynamic", **FAST))
    (copy / "decoder.onnx").write_bytes(bytes(data[:-10]))
    with pytest.raises(ArtifactError, match="truncated"):
        quantize.run(QuantizeConfig(source=copy, out=tmp_path / "o", method="int8-dynamic", **FAST))
    assert not (tmp_path / "o").exists() and not leftovers(tmp_path)


def test_the_method_decides_the_kind_of_source(source, tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "rt2edge.json").write_text("{}")
    with pytest.raises(ConfigError, match="export it first") as err:
        quantize.run(QuantizeConfig(source=checkpoint, out=tmp_path / "o", method="int8-qdq", **FAST))
    assert err.value.field == "method"
    with pytest.raises(ConfigError, match="quantizes a checkpoint.*is a deploy artifact") as err:
        quantize.run(QuantizeConfig(source=source, out=tmp_path / "o", method="bnb-nf4", **FAST))
    assert err.value.field == "method"


def test_a_tensorrt_output_needs_a_source_with_optimization_profiles(source, tmp_path):
    with pytest.raises(ConfigError, match="--target tensorrt") as err:
        quantize.run(QuantizeConfig(source=source, out=tmp_path / "o", method="int4-qdq", **FAST))
    assert err.value.field == "target" and os.listdir(tmp_path) == []


def test_failures_leave_nothing_behind_and_keep_an_existing_output(source, tmp_path):
    before = scratch_dirs()
    with pytest.raises(ConfigError) as err:  # raised inside the handler, after its scratch folder exists
        quantize.run(QuantizeConfig(source=source, out=tmp_path / "o", method="int4-matmulnbits",
                                    keep_sensitive=100, sensitivity_frames=1, **FAST))
    assert err.value.field == "keep_sensitive" and os.listdir(tmp_path) == []
    assert scratch_dirs() == before

    def half_then_fail(cfg, work_dir, observations):
        (work_dir / "decoder.onnx").write_bytes(b"half")
        raise RuntimeError("disk full")

    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "manifest.json").write_text("old")
    register_method("test-onnx-failing", bits=8, source="artifact")(half_then_fail)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            quantize.run(QuantizeConfig(source=source, out=tmp_path / "existing", method="test-onnx-failing",
                                        overwrite=True, **FAST))
    finally:
        _METHODS.pop("test-onnx-failing", None)
    assert os.listdir(tmp_path) == ["existing"]
    assert (tmp_path / "existing" / "manifest.json").read_text() == "old"


# ------------------------------------------------------------------------------------ calibration data
def test_recorded_feeds_are_the_runtimes_real_prefill_and_decode_inputs(source):
    manifest = load_manifest(source)
    probe = ArtifactProbe(source, manifest, threads=1)
    frames = sim_observations(2, image_size=SIZE)
    feeds = probe.record_feeds(frames)
    steps = probe.tokenizer.tokens_per_action
    assert len(feeds["vision"]) == 2 and feeds["vision"][0]["pixel_values"].shape == (1, 3, SIZE, SIZE)
    decoder = feeds["decoder"]
    assert len(decoder) == 2 * steps
    prefill = decoder[0]
    length = prefill["inputs_embeds"].shape[1]
    assert prefill["past_length"].tolist() == [0] and prefill["past.0.key"].shape[2] == 0
    for k in range(1, steps):  # decode step k: one new embedding, the cache of everything before it
        step = decoder[k]
        assert step["inputs_embeds"].shape[1] == 1 and step["past_length"].tolist() == [length + k - 1]
        assert step["past.1.value"].shape[2] == length + k - 1
    # The recorded prefill reproduces the runtime's own first bin.
    logits = probe.taps["decoder"].runner.run(prefill, ["action_logits"])[0]
    probe.policy.reset()
    assert int(np.argmax(logits)) == int(probe.policy.act(*frames[0]).bins[0])


def test_teacher_forced_logits_follow_the_given_tokens(source):
    probe = ArtifactProbe(source, load_manifest(source), threads=1)
    frames = sim_observations(2, image_size=SIZE)
    images, texts = [f[0] for f in frames], [f[1] for f in frames]
    own = probe.tokens(images, texts)
    logits = probe.logits(images, texts, own)
    assert logits.shape == (2, probe.tokenizer.tokens_per_action, probe.tokenizer.n_bins)
    assert np.array_equal(probe.tokenizer.allowed_ids[logits.argmax(-1)], own)  # its own tokens: argmax agrees
    forced = np.full_like(own, probe.tokenizer.allowed_ids[0])
    assert not np.allclose(probe.logits(images, texts, forced)[:, 1:], logits[:, 1:])  # other context


def test_held_out_dataset_rows_never_overlap_the_calibration_rows():
    for length, n_cal, n_hold in ((100, 32, 64), (10, 8, 8), (5, 5, 3)):
        calibration = _rows(length, n_cal)
        held = _rows(length, n_hold, calibration)
        assert not set(calibration) & set(held)
        assert len(held) == min(n_hold, length - len(calibration))


def test_the_report_lists_the_config_and_is_hashed(quantized):
    manifest = load_manifest(quantized)
    assert manifest.files["quantize_config"].file == "quantize_config.json"
    cfg = json.loads((quantized / "quantize_config.json").read_text())
    assert QuantizeConfig.from_dict(cfg).method == "int8-dynamic"


def test_the_cli_names_the_option_and_writes_nothing(source, tmp_path):
    from typer.testing import CliRunner

    from rt2edge.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["quantize", str(source), "--method", "int3-magic", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--method" in result.output
    result = runner.invoke(app, ["quantize", str(source), "--method", "int4-qdq", "--out", str(tmp_path / "o"),
                                 "--frames", "2", "--holdout-frames", "2"])
    assert result.exit_code == 2 and "--target" in result.output  # found while reading the source
    assert os.listdir(tmp_path) == []
