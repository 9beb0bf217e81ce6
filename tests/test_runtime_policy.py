"""rt2edge.runtime.Policy: the constrained decode loop against a cache-free reference, caches,
timing, and backend selection."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from artifact_factory import CountingRunner, make_artifact

from rt2edge.errors import ConfigError, MissingDependencyError
from rt2edge.optional import is_available
from rt2edge.runtime import Action, Backend, Policy, registered_backends
from rt2edge.runtime import backends as backends_module
from rt2edge.runtime.policy import PREFILL_CACHED, WARM_UP_TEXT

INSTRUCTIONS = ["pick up the red block", "open the drawer", "move it left", "put the blue block in the bowl"]


@pytest.fixture(scope="module", params=[False, True], ids=["causal", "prefix-lm"])
def tiny(request, tmp_path_factory):
    root, model = make_artifact(tmp_path_factory.mktemp("tiny") / "art", prefix_lm=request.param)
    return root, model, request.param


def test_act_matches_cache_free_reference(tiny):
    root, model, prefix_lm = tiny
    policy = Policy.load(root, num_threads=1)
    rng = np.random.default_rng(0)
    for i in range(12):
        image = rng.integers(0, 256, (int(rng.integers(8, 40)), int(rng.integers(8, 40)), 3), np.uint8)
        instruction = INSTRUCTIONS[i % len(INSTRUCTIONS)]
        action = policy.act(image, instruction)
        assert not action.safe_fallback, action.reason
        ids = policy._text.tokenizer.encode(policy.prompt.text(instruction), add_special_tokens=False).ids
        text_ids = policy.prompt.build_input_ids(ids)[policy.prompt.num_image_tokens:]
        expected = model.reference_bins(policy.preprocessing(image), text_ids, 8, prefix_lm)
        np.testing.assert_array_equal(action.bins, expected)
        np.testing.assert_array_equal(action.tokens, policy.action_tokenizer.token_ids[expected])
        np.testing.assert_allclose(action.values, policy.action_tokenizer.decode_bins(expected), atol=1e-6)
        assert action.terminate == bool(action.values[-1] == 1.0)


def test_decoder_runs_and_kv_cache_shapes(tiny):
    root, _, prefix_lm = tiny
    policy = Policy.load(root)
    policy._decoder = decoder = CountingRunner(policy._decoder)
    policy.act(np.zeros((16, 16, 3), np.uint8), "pick up the red block")
    prompt_len = 4 + 1 + len("what action should the robot take to pick up the red block ?".split())
    assert len(decoder.calls) == 8  # prefill + tokens_per_action - 1 decode steps
    assert decoder.calls[0]["inputs_embeds"] == (1, prompt_len, 32)
    assert decoder.calls[0]["past.0.key"] == (1, 2, 0, 8)
    for step, call in enumerate(decoder.calls[1:], start=1):
        assert call["inputs_embeds"] == (1, 1, 32)
        assert call["past.1.value"] == (1, 2, prompt_len + step - 1, 8)


def test_text_embeddings_are_cached_per_instruction(tiny):
    policy = Policy.load(tiny[0], text_cache_size=2)
    policy._text._embed = embed = CountingRunner(policy._text._embed)
    image = np.zeros((16, 16, 3), np.uint8)
    first = policy.act(image, "open the drawer")
    again = policy.act(image, "  open   the drawer ")  # same text after whitespace normalization
    np.testing.assert_array_equal(first.bins, again.bins)
    assert len(embed.calls) == 1
    policy.act(image, "move left")
    policy.act(image, "pick up the red block")  # evicts "open the drawer" (cache of 2)
    policy.act(image, "open the drawer")
    assert len(embed.calls) == 4


def test_action_is_frozen_and_timed(tiny):
    policy = Policy.load(tiny[0])
    action = policy.act(np.full((16, 16, 3), 200, np.uint8), "pick up the red block")
    assert isinstance(action, Action) and action.values.dtype == np.float32
    assert action.values.shape == (8,) and action.tokens.shape == (8,) and action.bins.shape == (8,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        action.terminate = True
    with pytest.raises(ValueError):
        action.values[0] = 1.0
    assert set(action.timing) == {"preprocess", "embed", "vision", "prefill", "decode", "postprocess",
                                  "total"}
    assert len(action.decode_steps) == 7
    assert action.timing["total"] >= sum(v for k, v in action.timing.items() if k != "total") * 0.99
    assert action.to_dict()["bins"] == [int(b) for b in action.bins]


def test_float_image_in_unit_range_equals_uint8(tiny):
    policy = Policy.load(tiny[0])
    image = np.random.default_rng(3).integers(0, 256, (16, 16, 3), np.uint8)
    a = policy.act(image, "open the drawer")
    b = policy.act(image.astype(np.float32) / 255.0, "open the drawer")
    np.testing.assert_array_equal(a.bins, b.bins)


def test_requested_provider_falls_back_to_cpu_and_logs(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="rt2edge.runtime"):
        policy = Policy.load(tiny[0], providers=["CUDAExecutionProvider"])
    assert policy.provider == "CPUExecutionProvider"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("using CPUExecutionProvider" in m and "CUDAExecutionProvider skipped" in m for m in warnings)
    assert Policy.load(tiny[0], providers="tensorrt,cpu").provider == "CPUExecutionProvider"
    with pytest.raises(ConfigError, match="unknown provider 'tpu'"):
        Policy.load(tiny[0], providers=["tpu"])


def test_backend_registry_order_and_failed_backend_fallback(tiny, caplog, monkeypatch):
    names = [b.name for b in registered_backends()]
    assert names == ["tensorrt-engine", "TensorrtExecutionProvider", "CUDAExecutionProvider",
                     "CPUExecutionProvider"]

    def broken(folder, manifest, options):
        raise OSError("libcudart.so.12: cannot open shared object file")

    monkeypatch.setitem(backends_module._REGISTRY, "broken-gpu",
                        Backend("broken-gpu", 100, lambda folder, manifest: None, broken))
    with caplog.at_level(logging.INFO, logger="rt2edge.runtime"):
        policy = Policy.load(tiny[0])
    assert policy.provider == "CPUExecutionProvider"
    assert any(r.levelno == logging.WARNING and "broken-gpu skipped: failed to start: OSError" in r.getMessage()
               for r in caplog.records)


@pytest.mark.skipif(is_available("tensorrt"), reason="tests the path where tensorrt is missing")
def test_engine_backend_without_tensorrt(tmp_path, caplog):
    root, _ = make_artifact(tmp_path / "with-engines", engines=True)
    with caplog.at_level(logging.INFO, logger="rt2edge.runtime"):
        policy = Policy.load(root)
    assert policy.provider == "CPUExecutionProvider"
    assert any("tensorrt-engine skipped: tensorrt is not installed" in r.getMessage() for r in caplog.records)
    with pytest.raises(MissingDependencyError, match=r"pip install 'rt2edge\[gpu\]'"):
        from rt2edge.runtime.engine import TensorRTEngine

        TensorRTEngine(root / "decoder.engine")


def test_load_config_errors(tiny):
    with pytest.raises(ConfigError, match="deadline_s"):
        Policy.load(tiny[0], deadline_s=0)
    with pytest.raises(ConfigError, match="num_threads"):
        Policy.load(tiny[0], num_threads=0)
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigError, match="prefix_cache_size"):
            Policy.load(tiny[0], prefix_cache_size=bad)


@pytest.fixture(scope="module")
def text_first(tmp_path_factory):
    """Instruction-first, causal, no past_length term: a prefill after cached text positions equals
    the whole prefill, as in a real causal decoder."""
    return make_artifact(tmp_path_factory.mktemp("text-first") / "art", instruction_first=True, past_bias=False)[0]


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (16, 16, 3), np.uint8) for _ in range(n)]


def test_prefix_cache_prefills_only_the_image_after_the_first_frame_of_an_instruction(text_first):
    policy, whole = Policy.load(text_first, num_threads=1), Policy.load(text_first, num_threads=1, prefix_cache_size=0)
    assert policy.prefix_cache_size == 2 and whole.prefix_cache_size == 0
    assert WARM_UP_TEXT not in policy._prefix and WARM_UP_TEXT not in policy._text
    policy._decoder = decoder = CountingRunner(policy._decoder)
    # a cache of 2, least recently used out: the 5th evicts "move it left", the 6th "open the drawer"
    texts = ["open the drawer", "open the drawer", "move it left", "open the drawer", "pick up the red block",
             "move it left", "pick up the red block"]
    for image, text in zip(_frames(len(texts)), texts):
        ours, theirs = policy.act(image, text), whole.act(image, text)
        assert not ours.safe_fallback, ours.reason
        np.testing.assert_array_equal(ours.bins, theirs.bins)
        np.testing.assert_allclose(ours.values, theirs.values)
    image_tokens, past = policy.prompt.num_image_tokens, [c["past.0.key"][2] for c in decoder.calls[::8]]
    prefill = [c["inputs_embeds"][1] for c in decoder.calls[::8]]
    text_len = [p + t - image_tokens for p, t in zip(past, prefill)]  # bos + text before the image
    hits = [False, True, False, True, False, False, True]
    assert [p > 0 for p in past] == hits and all(t == image_tokens for t, h in zip(prefill, hits) if h)
    assert all(n == p for n, p, h in zip(text_len, past, hits) if h)  # past = the text, nothing else
    assert len(policy._prefix) == 2


def test_prefix_cache_estimates_both_prefills_for_the_deadline(text_first):
    policy = Policy.load(text_first, num_threads=1, warmup=2, deadline_s=1.0)
    assert policy.latency.has("prefill") and policy.latency.has(PREFILL_CACHED)
    assert policy._stages(cached=True)[3] == PREFILL_CACHED and policy._stages()[3] == "prefill"
    image = _frames(1)[0]
    policy.act(image, "open the drawer")
    policy.latency.reset()  # no sample of a cached prefill yet: it is predicted as a whole one
    assert policy._stages(cached=True)[3] == "prefill"
    assert not policy.act(image, "open the drawer").safe_fallback
    assert policy.latency.has(PREFILL_CACHED) and not policy.latency.has("prefill")


class FailsAfterAPast:
    """A backend that cannot prefill (T > 1) after a past."""

    def __init__(self, inner):
        self.inner, self.input_names = inner, inner.input_names

    def run(self, feeds, outputs):
        if feeds["past.0.key"].shape[2] and feeds["inputs_embeds"].shape[1] > 1:
            raise RuntimeError("unsupported shape")
        return self.inner.run(feeds, outputs)


def test_a_backend_that_fails_the_cached_prefill_at_load_gets_no_cache(text_first, caplog):
    loaded = Policy.load(text_first, num_threads=1)
    runners = {"vision": loaded._vision, "embed": loaded._embed, "decoder": FailsAfterAPast(loaded._decoder)}
    policy = Policy(loaded.folder, loaded.manifest, runners, loaded.provider)
    with caplog.at_level(logging.INFO, logger="rt2edge.runtime"):
        policy.verify_prefix_cache(2)
    assert policy.prefix_cache_size == 0 and "prefix cache off (the prefill from the cached text failed" in caplog.text
    assert "prefix cache on" not in caplog.text


def test_a_failing_cached_prefill_turns_the_cache_off_and_acts_anyway(text_first, caplog):
    policy = Policy.load(text_first, num_threads=1)
    image = _frames(1)[0]
    first = policy.act(image, "open the drawer")

    policy._decoder = FailsAfterAPast(policy._decoder)
    with caplog.at_level(logging.WARNING, logger="rt2edge.runtime"):
        again = policy.act(image, "open the drawer")
    assert not again.safe_fallback and np.array_equal(again.bins, first.bins)
    assert policy.prefix_cache_size == 0 and "prefix cache off" in caplog.text


@pytest.mark.parametrize("options, reason", [
    ({"instruction_first": False}, "image first"),
    ({"prefix_lm": True}, "prefix-LM"),
    ({"precision": "int8-dynamic"}, "activation scales"),
])
def test_prefix_cache_only_where_the_text_sees_only_itself(tmp_path, caplog, options, reason):
    """Each artifact passes the load-time check (no past_length term): only the rule keeps the
    cache off."""
    root, _ = make_artifact(tmp_path / "art", **{"instruction_first": True, "past_bias": False, **options})
    with caplog.at_level(logging.INFO, logger="rt2edge.runtime"):
        policy = Policy.load(root, num_threads=1)
    assert policy.prefix_cache_size == 0 and reason in caplog.text


def test_the_constructor_keeps_the_prefix_cache_off_until_checked(text_first):
    policy = Policy.load(text_first, num_threads=1)
    built = Policy(policy.folder, policy.manifest, {"vision": policy._vision, "embed": policy._embed,
                                                    "decoder": policy._decoder}, policy.provider)
    assert built.prefix_cache_size == 0
    built.verify_prefix_cache(3)
    assert built.prefix_cache_size == 3
    with pytest.raises(ConfigError, match="prefix_cache_size"):
        Policy(policy.folder, policy.manifest, {"vision": policy._vision, "embed": policy._embed,
                                                "decoder": policy._decoder}, policy.provider, prefix_cache_size=-2)


def test_prefix_cache_is_refused_where_a_prefill_after_a_past_differs(tmp_path, caplog):
    """The factory's decoder adds past_length * w_past to its last state, so a prefill from cached
    text KV (past = the text) gives other logits than the whole prefill: the load-time check must
    turn the cache off, and every action then prefills from position 0."""
    root, _ = make_artifact(tmp_path / "art", instruction_first=True)
    with caplog.at_level(logging.WARNING, logger="rt2edge.runtime"):
        policy = Policy.load(root, num_threads=1)
    assert policy.prefix_cache_size == 0 and "prefix cache off (outputs differ" in caplog.text
    policy._decoder = decoder = CountingRunner(policy._decoder)
    for _ in range(2):
        assert not policy.act(np.zeros((16, 16, 3), np.uint8), "open the drawer").safe_fallback
    assert len(decoder.calls) == 16 and all(c["past.0.key"][2] == 0 for c in decoder.calls[::8])


def test_tensorrt_ep_gets_the_manifests_optimization_profiles(tmp_path):
    from rt2edge.artifact import load_manifest
    from rt2edge.runtime.backends import trt_profile_options

    root, _ = make_artifact(tmp_path / "art")
    manifest = load_manifest(root)
    assert trt_profile_options(manifest, "decoder") == {}  # an onnx-target artifact has none
    manifest.extra["tensorrt"] = {"profiles": {"decoder": {
        "inputs_embeds": {"min": [1, 1, 32], "opt": [1, 1, 32], "max": [1, 40, 32]},
        "past.0.key": {"min": [1, 2, 0, 8], "opt": [1, 2, 30, 8], "max": [1, 2, 48, 8]}}}}
    options = trt_profile_options(manifest, "decoder")
    assert options == {
        "trt_profile_min_shapes": "inputs_embeds:1x1x32,past.0.key:1x2x0x8",
        "trt_profile_opt_shapes": "inputs_embeds:1x1x32,past.0.key:1x2x30x8",
        "trt_profile_max_shapes": "inputs_embeds:1x40x32,past.0.key:1x2x48x8",
    }
    assert trt_profile_options(manifest, "vision") == {}


def test_tensorrt_ep_is_skipped_for_graphs_with_onnxruntime_contrib_ops(tmp_path, monkeypatch):
    """An onnxruntime-target artifact holds com.microsoft ops TensorRT cannot parse: the TensorRT
    EP says so (the next backend runs) instead of splitting the graph between TensorRT and CUDA."""
    from rt2edge.artifact import load_manifest

    class FakeOrt:
        @staticmethod
        def get_available_providers():
            return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    root, _ = make_artifact(tmp_path / "art")
    manifest = load_manifest(root)
    monkeypatch.setattr(backends_module, "_ort", lambda: FakeOrt)
    unavailable = backends_module._ort_unavailable("TensorrtExecutionProvider")
    assert unavailable(root, manifest) is None  # plain graphs: TensorRT may take them
    manifest.target = "onnxruntime"
    assert "--target tensorrt" in unavailable(root, manifest)
    assert backends_module._ort_unavailable("CUDAExecutionProvider")(root, manifest) is None


def test_fused_graphs_name_an_onnxruntime_older_than_the_one_they_were_validated_with(tmp_path):
    import onnxruntime

    from rt2edge.artifact import load_manifest

    root, _ = make_artifact(tmp_path / "art")
    manifest = load_manifest(root)
    cpu = backends_module._ort_unavailable("CPUExecutionProvider")
    manifest.target = "onnxruntime"
    manifest.extra["onnxruntime"] = {"validated_with": onnxruntime.__version__}
    assert cpu(root, manifest) is None
    manifest.extra["onnxruntime"] = {"validated_with": "99.0.0"}
    assert "validated with onnxruntime 99.0.0" in cpu(root, manifest)
    manifest.target = "onnx"  # plain graphs: any onnxruntime
    assert cpu(root, manifest) is None
