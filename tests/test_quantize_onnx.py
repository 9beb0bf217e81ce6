"""quantize.run with the ONNX methods on a real exported tiny LLaVA-style policy (CPU, no network).

One export (target tensorrt, so it carries optimization profiles) is shared by the module; each
method quantizes it once (module fixture), and the tests read the outputs: they load and act in
the robot runtime, their manifests and reports say what was done, the graphs hold what the
method promises (TensorRT's parser rules for the Q/DQ methods), and the sensitivity pass ranks
and keeps layers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")
pytest.importorskip("transformers")

import quantize  # noqa: E402
from export import ExportConfig  # noqa: E402
from export import run as export_run  # noqa: E402
from export.trt_check import check_tensorrt_compatibility  # noqa: E402
from onnx import TensorProto, numpy_helper  # noqa: E402
from quantize import QuantizeConfig  # noqa: E402
from quantize.calibration import sim_observations  # noqa: E402
from rt2edge.artifact import MANIFEST_FILE, load_manifest, sha256_file  # noqa: E402
from rt2edge.runtime import Policy  # noqa: E402

torch.set_num_threads(1)

FRAMES = 4
LANGUAGE_LAYERS = 2 * 7  # q, k, v, o, gate, up, down per decoder layer
METHODS = {
    "int8-dynamic": {},
    "int8-qdq": {"calibrate_method": "percentile"},
    "int4-matmulnbits": {"algorithm": "gptq"},
    "int4-qdq": {},  # target tensorrt
}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_llava_checkpoint) -> Path:
    return export_run(ExportConfig(checkpoint=tiny_llava_checkpoint, out=tmp_path_factory.mktemp("export") / "fp32",
                                   target="tensorrt", validate_frames=1))


def run_method(artifact: Path, out: Path, method: str, **options) -> QuantizeConfig:
    cfg = QuantizeConfig(source=artifact, out=out, method=method, calibration_frames=FRAMES,
                         holdout_frames=FRAMES, threads=1, **options)
    assert quantize.run(cfg) == out
    return cfg


@pytest.fixture(scope="module")
def outputs(artifact, tmp_path_factory) -> dict[str, QuantizeConfig]:
    return {m: run_method(artifact, tmp_path_factory.mktemp(m) / "q", m, **options) for m, options in METHODS.items()}


@pytest.fixture(params=list(METHODS))
def quantized(request, outputs) -> QuantizeConfig:
    return outputs[request.param]


def report_of(cfg: QuantizeConfig) -> dict:
    return json.loads((cfg.out / "quantize_report.json").read_text())


def decoder(cfg_or_path) -> onnx.ModelProto:
    folder = cfg_or_path.out if isinstance(cfg_or_path, QuantizeConfig) else cfg_or_path
    return onnx.load(str(folder / "decoder.onnx"))


def float_weights(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    return [tuple(i.dims) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 2]


# ------------------------------------------------------------------------------------ outputs
def test_output_is_a_verified_artifact_that_the_runtime_loads_and_acts_with(quantized, artifact):
    manifest = load_manifest(quantized.out)  # every hash checked
    assert manifest.precision == quantized.method and manifest.target == quantized.target
    record = manifest.extra["quantization"]
    assert record["method"] == quantized.method and record["graphs"]["decoder"]["quantized_layers"] == LANGUAGE_LAYERS
    assert manifest.provenance["source_artifact_sha256"] == sha256_file(artifact / MANIFEST_FILE)
    assert manifest.provenance["quantize_method"] == quantized.method
    assert {"tokenizer", "quantize_report", "quantize_config"} <= set(manifest.files)
    assert "export_report" not in manifest.files  # it described the fp32 export
    if quantized.target == "tensorrt":
        assert manifest.extra["tensorrt"]["profiles"]  # carried over for engine builds
    policy = Policy.load(quantized.out, providers=["cpu"], num_threads=1)
    for image, instruction in sim_observations(3, image_size=32, seed=7):
        action = policy.act(image, instruction)
        assert not action.safe_fallback and action.values.shape == (8,)
        assert np.all(np.isin(action.tokens, policy.action_tokenizer.allowed_ids))


def test_report_has_sizes_and_held_out_fidelity(quantized):
    report = report_of(quantized)
    before, after = report["weight_bytes"]["before"], report["weight_bytes"]["after"]
    # Decoder: 14 language layers (295 kB fp32) quantized, the action head (64 x 256) kept fp32.
    head = 64 * 256 * 4
    limit = 0.30 if quantized.bits == 8 else 0.20
    assert after["decoder"] - head < limit * (before["decoder"] - head)
    assert after["vision"] == before["vision"] and after["embed"] == before["embed"]  # kept by default
    assert report["size_on_disk"]["quantized"] < report["size_on_disk"]["source"]
    fid = report["fidelity"]
    assert fid["n_observations"] == FRAMES and fid["invalid_candidate"] == 0
    assert report["holdout"]["seed"] == 1_000_000  # never the calibration scenes (seeds 0..3)
    assert len(fid["mean_abs_error"]) == 8 and all(e >= 0 for e in fid["max_abs_error"])
    # Teacher-forced on the source's tokens, the logits move by a fraction of their size only.
    assert report["action_logits"]["rel_l2"] < (0.2 if quantized.bits == 8 else 0.6)
    assert report["latency"]["quantized"]["acts"] == FRAMES
    markdown = (quantized.out / "quantize_report.md").read_text()
    assert "Action fidelity vs the source (held-out)" in markdown and "| decoder |" in markdown
    # The verdict is the measured agreement against the bar for the method's bits, and says so.
    [check] = report["targets"]["checks"]
    floor = 0.99 if quantized.bits == 8 else 0.97
    assert (check["check"], check["bound"], check["measured"]) == ("token_agreement", floor, fid["token_agreement"])
    assert report["targets"]["met"] is (fid["token_agreement"] >= floor)
    assert "## Targets" in markdown and ("**missed**" in markdown) is not report["targets"]["met"]


def test_graphs_hold_what_the_method_promises(quantized):
    model = decoder(quantized)
    ops = [n.op_type for n in model.graph.node]
    assert (64, 256) in float_weights(model)  # the action head stays fp32
    trt = check_tensorrt_compatibility(model)  # the default bound: what `--target tensorrt` must pass
    if quantized.method == "int8-dynamic":
        assert "DynamicQuantizeLinear" in ops and not trt.ok  # CPU only: TensorRT rejects it
    elif quantized.method == "int8-qdq":
        assert ops.count("DequantizeLinear") >= 2 * LANGUAGE_LAYERS
        assert check_tensorrt_compatibility(model).ok  # symmetric, opset 18, no contrib ops
    elif quantized.method == "int4-matmulnbits":
        assert ops.count("MatMulNBits") == LANGUAGE_LAYERS and not trt.ok
    else:  # int4-qdq: TensorRT's int4 weight-only form, opset 21 (int4 + blocked DequantizeLinear)
        assert trt.ok, trt.issues
        dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        assert len(dq) == LANGUAGE_LAYERS
        assert all({a.name: a.i for a in n.attribute}["block_size"] == 32 for n in dq)
        int4 = [i for i in model.graph.initializer if i.data_type == TensorProto.INT4]
        assert len(int4) == LANGUAGE_LAYERS and all(len(n.input) == 2 for n in dq)  # no zero point


def test_int4_qdq_weights_dequantize_to_the_blocked_rtn_of_the_source(outputs, artifact):
    from quantize.primitives import fake_quantize

    source, model = decoder(artifact), decoder(outputs["int4-qdq"])
    inits = {i.name: i for i in model.graph.initializer}
    src_inits = {i.name: numpy_helper.to_array(i) for i in source.graph.initializer}
    matmuls = {n.name: n for n in source.graph.node if n.op_type == "MatMul"}
    checked = 0
    for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        codes = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[dq.input[1]])
        weight = codes * np.repeat(scale, 32, axis=0)[:codes.shape[0]]
        node = next(n for n in model.graph.node if dq.output[0] in n.input)
        original = src_inits[matmuls[node.name].input[1]]
        np.testing.assert_allclose(weight, fake_quantize(original.T, 4, 32).T, rtol=1e-6, atol=1e-7)
        checked += 1
    assert checked == LANGUAGE_LAYERS


# ------------------------------------------------------------------------------------ mixed precision
def test_sensitivity_ranks_every_layer_and_keeps_the_k_most_sensitive(artifact, tmp_path):
    cfg = run_method(artifact, tmp_path / "mixed", "int4-matmulnbits", keep_groups=["vision", "projector"],
                     keep_sensitive=2, sensitivity_frames=2)
    report = report_of(cfg)
    layers = report["sensitivity"]["layers"]
    assert len(layers) == LANGUAGE_LAYERS + 1  # the head is a candidate when it is not kept
    keys = [(-row["kl_mean"], row["top1_agreement"]) for row in layers]
    assert keys == sorted(keys) and [row["kept_fp32"] for row in layers] == [True, True] + [False] * (len(layers) - 2)
    kept = [row["label"] for row in layers[:2]]
    assert report["details"]["kept_sensitive_layers"] == kept
    model = decoder(cfg)
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) == LANGUAGE_LAYERS + 1 - 2
    kept_nodes = {row["node"] for row in layers[:2]}
    assert {n.name for n in model.graph.node if n.op_type == "MatMul"} >= kept_nodes  # still fp32 MatMuls
    if "decoder/action_head" not in kept:
        assert (64, 256) not in float_weights(model)  # --quantize-head: the head was quantized
    assert "Per-layer sensitivity" in (cfg.out / "quantize_report.md").read_text()


def test_the_cli_quantizes_an_artifact_and_runs_closed_loop_episodes(artifact, tmp_path):
    from typer.testing import CliRunner

    from rt2edge.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["quantize", str(artifact), "--method", "int8-dynamic", "--out", str(out),
                                      "--frames", "2", "--holdout-frames", "2", "--threads", "1",
                                      "--episodes", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["holdout_frames"] == 2 and set(summary["closed_loop"]["source"]) == {"train", "heldout"}
    loop = json.loads((out / "quantize_report.json").read_text())["closed_loop"]
    assert loop["episodes"] == 1 and all(0.0 <= v <= 1.0 for v in loop["quantized"].values())
    assert [c["split"] for c in loop["paired"]] == ["train", "heldout", None]
    for c in loop["paired"]:  # 1 episode per split: the counts add up to it, and match the rates
        assert c["both"] + c["only_a"] + c["only_b"] + c["neither"] == c["episodes"]
        if c["split"] is not None:
            assert c["both"] + c["only_a"] == round(loop["source"][c["split"]] * c["episodes"])
    report = (out / "quantize_report.md").read_text()
    assert "McNemar p" in report and "| all |" in report
    targets = json.loads((out / "quantize_report.json").read_text())["targets"]
    drops = {c["check"]: c["measured"] for c in targets["checks"][1:]}
    assert drops == {f"success_drop_{s}": round(loop["source"][s] - loop["quantized"][s], 9)
                     for s in ("train", "heldout")}
    assert summary["targets_met"] is targets["met"] and ("remedy" in summary) is not targets["met"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
