"""rt2edge.artifact: manifest round trip, and every way an artifact is refused before inference."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from artifact_factory import make_artifact

from rt2edge.artifact import (FORMAT_VERSION, MANIFEST_FILE, ArtifactManifest, FileSpec, GraphSpec,
                              TensorSpec, load_manifest, sha256_file, write_manifest)
from rt2edge.errors import ArtifactError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root, _ = make_artifact(tmp_path_factory.mktemp("pristine") / "art")
    return root


@pytest.fixture()
def artifact(pristine, tmp_path) -> Path:
    """A fresh copy per test, free to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "art"))


def _edit_manifest(root: Path, edit) -> None:
    data = json.loads((root / MANIFEST_FILE).read_text())
    edit(data)
    (root / MANIFEST_FILE).write_text(json.dumps(data))


def test_round_trip(artifact):
    manifest = load_manifest(artifact)
    again = ArtifactManifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again.to_dict() == manifest.to_dict()
    assert manifest.format_version == 1 <= FORMAT_VERSION  # autoregressive: readable by version-1 runtimes
    assert manifest.graphs["decoder"].sha256 == sha256_file(artifact / "decoder.onnx")
    assert manifest.graphs["vision"].bytes == (artifact / "vision.onnx").stat().st_size
    assert manifest.files["tokenizer"].sha256 == sha256_file(artifact / "tokenizer.json")
    tokenizer = manifest.action_tokenizer()
    assert tokenizer.tokens_per_action == 8 and tokenizer.n_bins == 256
    assert manifest.prompt_format().num_image_tokens == 4
    assert manifest.image_preprocessing().size == 16
    assert manifest.graphs["decoder"].input("past.1.value").shape == ("batch", 2, "past_length", 8)


def test_rewrite_is_stable_and_keeps_unknown_keys(artifact):
    _edit_manifest(artifact, lambda d: d.update(future_note={"x": 1}))
    manifest = load_manifest(artifact)
    assert manifest.extra == {"future_note": {"x": 1}}
    before = (artifact / MANIFEST_FILE).read_text()
    write_manifest(artifact, manifest)
    assert json.loads((artifact / MANIFEST_FILE).read_text()) == json.loads(before)
    assert [p.name for p in artifact.iterdir() if p.name.startswith(".manifest.")] == []
    assert oct((artifact / MANIFEST_FILE).stat().st_mode & 0o777) == oct(0o644)


def test_write_manifest_fills_hashes_and_does_not_touch_the_input(artifact):
    manifest = load_manifest(artifact)
    blank = ArtifactManifest.from_dict(manifest.to_dict())
    blank.graphs = {k: GraphSpec(v.file, v.inputs, v.outputs) for k, v in blank.graphs.items()}
    done = write_manifest(artifact, blank)
    assert blank.graphs["vision"].sha256 is None
    assert done.graphs["vision"].sha256 == manifest.graphs["vision"].sha256


def test_write_manifest_refuses_a_missing_file(artifact):
    manifest = load_manifest(artifact)
    (artifact / "embed.onnx").unlink()
    with pytest.raises(ArtifactError, match="embed.onnx: missing"):
        write_manifest(artifact, manifest)


@pytest.mark.parametrize("damage, message", [
    (lambda r: _flip_byte(r / "decoder.onnx"), r"decoder.onnx: sha256 .* does not match"),
    (lambda r: _truncate(r / "vision.onnx"), r"vision.onnx: \d+ bytes, the manifest says \d+ \(truncated"),
    (lambda r: (r / "tokenizer.json").unlink(), r"tokenizer.json: missing \(files.tokenizer"),
    (lambda r: (r / "embed.onnx").unlink(), r"embed.onnx: missing \(graphs.embed"),
    (lambda r: (r / MANIFEST_FILE).unlink(), r"manifest.json: missing"),
    (lambda r: (r / MANIFEST_FILE).write_text("{not json"), r"cannot be parsed as JSON"),
    (lambda r: _edit_manifest(r, lambda d: d.update(format_version=FORMAT_VERSION + 1)),
     rf"format_version {FORMAT_VERSION + 1} is newer than this rt2edge reads \({FORMAT_VERSION}\)"),
    (lambda r: _edit_manifest(r, lambda d: d.update(format_version="1")), r"format_version' must be an int"),
    (lambda r: _edit_manifest(r, lambda d: d.update(format="onnx-model")), r"not an rt2edge deploy artifact"),
    (lambda r: _edit_manifest(r, lambda d: d["graphs"].pop("decoder")), r"'graphs' lacks \['decoder'\]"),
    (lambda r: _edit_manifest(r, lambda d: d["graphs"]["vision"].update(file="../vision.onnx")),
     r"must be a relative path inside the artifact folder"),
    (lambda r: _edit_manifest(r, lambda d: d["graphs"]["vision"].update(sha256=None)), r"has no sha256"),
    (lambda r: _edit_manifest(r, lambda d: d["action_tokenizer"].update(n_bins=1)),
     r"'action_tokenizer' is invalid"),
    (lambda r: _edit_manifest(r, lambda d: d["model"].update(num_layers=0)), r"model.num_layers"),
    (lambda r: _edit_manifest(r, lambda d: d["graphs"]["decoder"]["outputs"][0].update(shape=["batch", 7])),
     r"action_logits has size 7 on axis 1, the manifest's configs need 256"),
    (lambda r: _edit_manifest(r, lambda d: d["graphs"]["decoder"]["inputs"].pop()),
     r"graph 'decoder' \(decoder.onnx\) lacks inputs \['past.1.value'\]"),
    # the runtime would feed caches of 3 heads to a graph of 2: every act would fail
    (lambda r: _edit_manifest(r, lambda d: d["model"].update(num_kv_heads=3)),
     r"past.0.key has size 2 on axis 1, the manifest's configs need 3"),
    (lambda r: _edit_manifest(r, lambda d: d["model"].update(prefix_lm="false")),
     r"'model.prefix_lm' must be true or false, got 'false'"),
    (lambda r: _edit_manifest(r, lambda d: d["prompt"].update(max_text_tokens=float("inf"))),
     r"'prompt' is invalid"),
    (lambda r: _edit_manifest(r, lambda d: d["action_tokenizer"]["statistics"].update(
        q01=[1.0] * 7, q99=[-1.0] * 7)), r"'q01' \(1.0\) must be <= 'q99' \(-1.0\)"),
    (lambda r: _edit_manifest(r, lambda d: d["action_tokenizer"]["statistics"].update(
        q01=[-1e308] * 7, q99=[1e308] * 7)), r"with a finite difference"),
    (lambda r: (r / MANIFEST_FILE).write_text("[" * 100_000 + "]" * 100_000), r"cannot be parsed as JSON"),
])
def test_damaged_artifact_is_refused(artifact, damage, message):
    damage(artifact)
    with pytest.raises(ArtifactError, match=message):
        load_manifest(artifact)


def test_a_listed_file_behind_a_symlink_out_of_the_folder_is_refused(artifact, tmp_path):
    """A relative name can still lead out through a symlink: the runtime would hash (and report the
    size of) any file on the robot."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not the artifact's")
    (artifact / "ext").symlink_to(outside, target_is_directory=True)
    manifest = load_manifest(artifact)
    manifest.files["probe"] = FileSpec("ext/secret")
    write_manifest(artifact, manifest)
    with pytest.raises(ArtifactError, match=r"'files.probe' \(ext/secret\) resolves outside the artifact folder"):
        load_manifest(artifact)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="artifact folder does not exist"):
        load_manifest(tmp_path / "nope")


def test_verify_false_skips_hashes_only(artifact):
    _flip_byte(artifact / "decoder.onnx")
    assert load_manifest(artifact, verify=False).graphs["decoder"].file == "decoder.onnx"


def test_refused_before_any_session_is_created(artifact, monkeypatch):
    import onnxruntime

    def no_session(*args, **kwargs):
        raise AssertionError("an inference session was created for an unverified artifact")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    from rt2edge.runtime import Policy

    for damage in (_flip_byte, _truncate):
        copy = Path(shutil.copytree(artifact, artifact.parent / f"copy-{damage.__name__}"))
        damage(copy / "decoder.onnx")
        with pytest.raises(ArtifactError, match="decoder.onnx"):
            Policy.load(copy)


def test_manifest_accepts_objects_or_dicts(artifact):
    manifest = load_manifest(artifact)
    tok = manifest.action_tokenizer()
    rebuilt = ArtifactManifest(graphs=manifest.graphs, files=manifest.files, model=manifest.model,
                               action_tokenizer=tok, prompt=manifest.prompt_config,
                               image_preprocessing=manifest.image_preprocessing())
    assert rebuilt.action_tokenizer_config == manifest.action_tokenizer_config
    np.testing.assert_array_equal(rebuilt.action_tokenizer().token_ids, tok.token_ids)
    with pytest.raises(ArtifactError, match="'files' lacks 'tokenizer'"):
        ArtifactManifest(graphs=manifest.graphs, files={}, model=manifest.model, action_tokenizer=tok,
                         prompt=manifest.prompt_config, image_preprocessing=manifest.image_preprocessing())
    with pytest.raises(ArtifactError, match="dtype must be one of"):
        TensorSpec("x", "float64", [1])
    assert FileSpec("a.json").to_dict() == {"file": "a.json", "sha256": None, "bytes": None}


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_unnorm_key_selects_a_datasets_statistics(tmp_path):
    import numpy as np

    from rt2edge.actions import ActionStatistics
    from rt2edge.errors import ConfigError
    from rt2edge.runtime import Policy

    root, _ = make_artifact(tmp_path / "art")
    manifest = load_manifest(root)
    default = manifest.action_tokenizer()
    wide = ActionStatistics(q01=default.action_low * 10, q99=default.action_high * 10,
                            min=default.action_low * 10, max=default.action_high * 10)
    manifest.extra["dataset_statistics"] = {"bridge": wide.to_dict()}
    write_manifest(root, manifest)
    other = load_manifest(root).action_tokenizer("bridge")
    scaled = default.normalize_mask  # unnormalized dims (the gripper) keep their [-1, 1] range
    np.testing.assert_allclose(other.action_high[scaled], default.action_high[scaled] * 10)
    np.testing.assert_array_equal(other.token_ids, default.token_ids)
    policy = Policy.load(root, unnorm_key="bridge", warmup=0)
    assert np.allclose(policy.action_tokenizer.action_high[scaled], default.action_high[scaled] * 10)
    with pytest.raises(ConfigError, match="unnorm_key: unknown dataset 'fractal'.*'bridge'"):
        Policy.load(root, unnorm_key="fractal")
