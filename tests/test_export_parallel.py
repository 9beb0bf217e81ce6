"""A parallel-decoding policy through export.run and the robot runtime (one decoder run per act).

The tiny policy is trained for a few dozen steps on simulator frames first, so its slots predict
different bins: a graph that mixed up the slot order would then give other actions than torch.
The export (three graphs, TensorRT target, 20 observations validated) is a module fixture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

import export  # noqa: E402
from artifact_factory import make_artifact  # noqa: E402
from export.config import DEFAULT_TOLERANCES  # noqa: E402
from export.parallel_validate import validate_parallel_artifact  # noqa: E402
from export.trt_check import check_tensorrt_compatibility  # noqa: E402
from rt2edge import artifact  # noqa: E402
from rt2edge.artifact import load_manifest, write_manifest  # noqa: E402
from rt2edge.errors import ArtifactError, ExportValidationError  # noqa: E402
from rt2edge.models.parallel import ParallelVLAPolicy  # noqa: E402
from rt2edge.models.policy import VLAPolicy  # noqa: E402
from rt2edge.runtime import Policy  # noqa: E402
from rt2edge.sim import TabletopEnv  # noqa: E402
from tiny_policies import build_tiny_policy  # noqa: E402

torch.set_num_threads(1)


def simulator_frames(n: int) -> list[tuple[np.ndarray, str]]:
    env = TabletopEnv(image_size=32, split="train")
    out = []
    for episode in range(n):
        obs, _ = env.reset(seed=100 + episode)
        for _ in range(episode % 3):  # some frames mid-episode
            obs, *_ = env.step(env.expert_action())
        out.append((obs["image"], env.instruction))
    return out


def trained_policy(tokenizer) -> ParallelVLAPolicy:
    ar = build_tiny_policy(tokenizer)
    policy = ParallelVLAPolicy.from_autoregressive(ar, seed=1, copy_model=False)
    env = TabletopEnv(image_size=32, split="train")
    frames, texts, actions = [], [], []
    for episode in range(8):
        obs, _ = env.reset(seed=episode)
        for _ in range(3):
            action = env.expert_action()
            frames.append(obs["image"]), texts.append(env.instruction), actions.append(action)
            obs, *_ = env.step(action)
    batch = policy.build_training_batch(np.stack(frames), texts, np.stack(actions))
    targets = torch.from_numpy(policy.action_tokenizer.ids_to_bins(batch["action_targets"].numpy())).flatten()
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(policy.action_logits(batch).flatten(0, 1), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy.eval()


@pytest.fixture(scope="module")
def frames():
    return simulator_frames(20)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("parallel") / "ckpt"
    trained_policy(tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def policy(checkpoint):
    return VLAPolicy.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def art(checkpoint, frames, tmp_path_factory) -> Path:
    return export.run(export.ExportConfig(checkpoint=checkpoint, out=tmp_path_factory.mktemp("art") / "parallel",
                                          target="tensorrt"), observations=frames)


@pytest.fixture(scope="module")
def runtime(art):
    return Policy.load(art, providers=["cpu"], num_threads=1)


class CountingRunner:
    """A real graph runner that counts its runs and may rewrite their outputs."""

    def __init__(self, inner, edit=None):
        self.inner, self.edit, self.runs = inner, edit, 0
        self.input_names = inner.input_names

    def run(self, feeds, outputs):
        self.runs += 1
        out = self.inner.run(feeds, outputs)
        return self.edit(out) if self.edit else out


# ------------------------------------------------------------------------------------ artifact
def test_the_default_target_writes_the_parallel_decoder_plain_and_says_so(checkpoint, frames, tmp_path):
    out = export.run(export.ExportConfig(checkpoint=checkpoint, out=tmp_path / "default"), observations=frames[:2])
    assert export.ExportConfig(checkpoint=checkpoint, out=tmp_path / "x").target == "onnxruntime"
    manifest = load_manifest(out)
    assert manifest.target == "onnx"  # no fused graph: TensorRT and quantize may take it
    decoder = onnx.load(str(out / manifest.graphs["decoder"].file), load_external_data=False)
    assert {n.domain for n in decoder.graph.node} <= {"", "ai.onnx"}


def test_manifest_and_graphs_follow_the_parallel_contract(art):
    manifest = load_manifest(art)
    assert manifest.decoding == "parallel" and manifest.format_version == 2
    assert json.loads((art / "manifest.json").read_text())["decoding"] == "parallel"
    decoder = manifest.graphs["decoder"]
    assert [(t.name, t.shape) for t in decoder.inputs] == [("inputs_embeds", ("batch", "seq", 64))]
    assert [(t.name, t.dtype, t.shape) for t in decoder.outputs] == [
        ("action_logits", "float32", ("batch", 8, 256)), ("action_bins", "int64", ("batch", 8))]
    proto = onnx.load(str(art / "decoder.onnx"))
    assert [i.name for i in proto.graph.input] == ["inputs_embeds"]  # no KV cache in or out
    assert [o.name for o in proto.graph.output] == ["action_logits", "action_bins"]
    profile = manifest.extra["tensorrt"]["profiles"]["decoder"]["inputs_embeds"]
    assert profile["opt"][1] == profile["max"][1] > 1  # the one run takes the whole prompt


def test_export_validation_and_tensorrt_check_pass(art):
    report = json.loads((art / "export_report.json").read_text())
    validation = report["validation"]
    assert validation["passed"] and validation["decoding"] == "parallel" and validation["num_frames"] == 20
    assert validation["token_agreement"] == {"onnx_reference": 1.0, "runtime": 1.0, "tie_aware": 1.0}
    assert validation["max_abs_diff"]["logits"] < 1e-4 and len(validation["max_abs_diff"]["slot_logits"]) == 8
    assert validation["batch"]["groups"] >= 1 and validation["batch"]["bins_match_unbatched"]
    for graph in ("vision", "embed", "decoder"):
        assert report["target_checks"][graph]["tensorrt"]["ok"], report["target_checks"][graph]
    assert check_tensorrt_compatibility(art / "decoder.onnx").ok


def test_validation_fails_on_a_broken_decoder(art, policy, tmp_path):
    broken = Path(shutil.copytree(art, tmp_path / "broken"))
    proto = onnx.load(str(broken / "decoder.onnx"))
    for tensor in proto.graph.initializer:
        if 256 in tuple(tensor.dims) and len(tensor.dims) == 2:  # the action head
            tensor.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(tensor), tensor.name))
    onnx.save(proto, str(broken / "decoder.onnx"))
    manifest = write_manifest(broken, load_manifest(broken, verify=False))
    with pytest.raises(ExportValidationError, match="action logits max abs diff") as info:
        validate_parallel_artifact(policy, broken, manifest.model, simulator_frames(2), "fp32",
                                   DEFAULT_TOLERANCES["fp32"], run_runtime=False)
    assert not info.value.report.passed


# ------------------------------------------------------------------------------------ runtime
def test_runtime_act_equals_torch_predict_with_one_decoder_run_per_act(runtime, policy, frames):
    runtime._decoder = counter = CountingRunner(runtime._decoder)
    try:
        actions = [runtime.act(image, text) for image, text in frames]
    finally:
        runtime._decoder = counter.inner
    assert counter.runs == len(frames) == 20
    for (image, text), action in zip(frames, actions):
        assert not action.safe_fallback and action.decode_steps == () and action.timing["decode"] == 0.0
        np.testing.assert_array_equal(action.tokens, policy.predict_action_tokens(image[None], [text])[0])
        np.testing.assert_allclose(action.values, policy.predict_action(image, text), atol=1e-6)
    tokens = np.stack([a.tokens for a in actions])
    assert len({tuple(row) for row in tokens.T}) > 1  # trained: the slots do not all agree


@pytest.mark.parametrize("edit, reason", [
    (lambda out: [np.full_like(out[0], np.nan), out[1]], "non-finite"),
    (lambda out: [out[0], np.full_like(out[1], 999)], "decoder chose bins"),
    (lambda out: [out[0], out[1][:, :3]], "decoder chose bins"),
])
def test_a_bad_decoder_output_gives_the_safe_action(runtime, frames, edit, reason):
    runtime._decoder = CountingRunner(runtime._decoder, edit)
    try:
        runtime.reset(gripper=1.0)
        action = runtime.act(*frames[0])
    finally:
        runtime._decoder = runtime._decoder.inner
    assert action.safe_fallback and reason in action.reason
    assert action.values[runtime.guard.gripper_dim] == 1.0 and not action.terminate


def test_deadline_gives_the_safe_action_without_running(art, frames):
    policy = Policy.load(art, providers=["cpu"], num_threads=1, deadline_s=1e-6)
    policy._decoder = counter = CountingRunner(policy._decoder)
    action = policy.act(*frames[0])
    assert action.safe_fallback and "deadline" in action.reason and counter.runs == 0


# ------------------------------------------------------------------------------------ versions
def test_a_version_1_runtime_refuses_a_parallel_artifact(art, monkeypatch):
    monkeypatch.setattr(artifact, "FORMAT_VERSION", 1)  # the reader before parallel decoding
    with pytest.raises(ArtifactError, match=r"format_version 2 is newer than this rt2edge reads \(1\)"):
        Policy.load(art)


def _edited(art: Path, tmp_path: Path, edit) -> Path:
    folder = Path(shutil.copytree(art, tmp_path / "edited"))
    data = json.loads((folder / "manifest.json").read_text())
    edit(data)
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=1), r"'decoding' 'parallel' needs format_version >= 2"),
    (lambda d: d.update(decoding="speculative"), r"'decoding' must be one of"),
    (lambda d: d["graphs"]["decoder"]["outputs"].pop(), r"lacks the output 'action_bins'"),
    (lambda d: d["graphs"]["decoder"]["outputs"][0].update(shape=["batch", 7, 256]),
     r"action_logits has size 7 on axis 1, the manifest's configs need 8"),
])
def test_inconsistent_parallel_manifests_are_refused(art, tmp_path, edit, message):
    with pytest.raises(ArtifactError, match=message):
        load_manifest(_edited(art, tmp_path, edit), verify=False)


def test_the_new_runtime_reads_an_artifact_written_before_the_field(tmp_path):
    root, model = make_artifact(tmp_path / "old")
    data = json.loads((root / "manifest.json").read_text())
    assert data.pop("decoding") == "autoregressive" and data["format_version"] == 1
    (root / "manifest.json").write_text(json.dumps(data))
    policy = Policy.load(root, num_threads=1)
    assert policy.manifest.decoding == "autoregressive"
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    action = policy.act(image, "pick up the red block")
    assert not action.safe_fallback and len(action.decode_steps) == 7
