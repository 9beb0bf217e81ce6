"""Policy.act in a control loop: typed input errors, bounded actions, deadline and failure fallbacks."""

from __future__ import annotations

import time

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from artifact_factory import make_artifact
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rt2edge.errors import InputError
from rt2edge.runtime import Policy
from rt2edge.runtime.latency import LatencyEstimator, SkipPolicy

GRIPPER = 6


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("safety") / "art")[0]


@pytest.fixture(scope="module")
def policy(root):
    return Policy.load(root, num_threads=1)


def assert_in_bounds(policy, action):
    tok = policy.action_tokenizer
    assert action.values.dtype == np.float32 and action.values.shape == (tok.action_dim,)
    assert np.all(np.isfinite(action.values))
    cont = action.values[: tok.num_dims].astype(np.float64)
    assert np.all(cont >= tok.action_low - 1e-6) and np.all(cont <= tok.action_high + 1e-6)
    assert action.values[-1] in (0.0, 1.0) and action.terminate == (action.values[-1] == 1.0)


valid_uint8 = hnp.arrays(np.uint8, st.tuples(st.integers(8, 40), st.integers(8, 40), st.just(3)))
unit_float = hnp.arrays(np.float32, st.tuples(st.integers(8, 24), st.integers(8, 24), st.just(3)),
                        elements=st.floats(0, 1, width=32))
images = st.one_of(
    valid_uint8, valid_uint8, unit_float,
    hnp.arrays(np.float32, st.tuples(st.integers(1, 24), st.integers(1, 24), st.just(3)),
               elements=st.floats(-0.5, 1.5, width=32) | st.just(np.nan)),
    hnp.arrays(st.sampled_from([np.uint8, np.float32, np.float64, np.float16, np.int16, np.bool_]),
               hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=24)),
    # .map keeps the group one branch: one_of flattens nested one_ofs into equal-weight branches.
    (st.none() | st.integers() | st.text(max_size=5) | st.lists(st.integers(0, 255))).map(lambda x: x),
)
words = st.lists(st.sampled_from(["pick", "up", "the", "red", "block", "open", "drawer", "zebra", "?"]),
                 min_size=1, max_size=40).map(" ".join)
instructions = st.one_of(
    words, words, st.text(max_size=80), st.just("x " * 300), st.just("a" * 600),
    st.just("\u00e9\U0001F916 robot"), st.just("open \ud800"),
    (st.none() | st.integers() | st.binary(max_size=10) | st.lists(st.text(max_size=3))).map(lambda x: x),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image=images, instruction=instructions)
def test_fuzz_only_typed_errors_escape_and_actions_are_bounded(policy, image, instruction):
    try:
        action = policy.act(image, instruction)
    except InputError as exc:
        assert exc.field in ("image", "instruction")
        return
    assert_in_bounds(policy, action)
    assert not action.safe_fallback, action.reason  # valid inputs on a healthy graph: a real action


def test_tiny_deadline_returns_the_flagged_safe_action(root):
    policy = Policy.load(root, deadline_s=1e-7)
    action = policy.act(np.zeros((16, 16, 3), np.uint8), "pick up the red block")
    assert action.safe_fallback and "predicted latency" in action.reason and "not started" in action.reason
    assert action.tokens.size == 0 and action.bins.size == 0 and not action.terminate
    np.testing.assert_array_equal(action.values, np.zeros(8, np.float32))
    assert action.timing["total"] < 0.01
    assert_in_bounds(policy, action)


def test_safe_action_holds_the_last_commanded_gripper(root):
    policy = Policy.load(root, safe_gripper=0.25)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
    real = policy.act(image, "open the drawer")
    policy.deadline_s = 1e-7
    safe = policy.act(image, "open the drawer")
    assert safe.safe_fallback
    assert safe.values[GRIPPER] == real.values[GRIPPER]
    assert np.all(safe.values[:GRIPPER] == 0) and safe.values[-1] == 0
    policy.reset()  # new episode: nothing commanded yet -> the configured default
    assert policy.act(image, "open the drawer").values[GRIPPER] == np.float32(0.25)
    policy.reset(gripper=-0.5)
    assert policy.act(image, "open the drawer").values[GRIPPER] == np.float32(-0.5)


class SlowDecoder:
    """Decode steps take `delay` seconds: a GPU throttling or a CPU stolen by another process."""

    def __init__(self, inner, delay):
        self.inner, self.input_names, self.delay = inner, inner.input_names, delay

    def run(self, feeds, outputs):
        if int(feeds["past_length"][0]) > 0:
            time.sleep(self.delay)
        return self.inner.run(feeds, outputs)


def test_deadline_is_checked_between_decode_steps(root):
    policy = Policy.load(root, deadline_s=0.05, warmup=2)
    policy._decoder = SlowDecoder(policy._decoder, delay=0.02)
    start = time.perf_counter()
    action = policy.act(np.zeros((16, 16, 3), np.uint8), "pick up the red block")
    elapsed = time.perf_counter() - start
    assert action.safe_fallback and "before decode step" in action.reason
    assert elapsed < 0.05 + 0.02 + 0.02  # at most one step past the deadline (+ scheduling slack)
    assert_in_bounds(policy, action)


def test_deadline_uses_the_running_estimate_and_probes():
    estimator = LatencyEstimator(window=4)
    for s in (0.001, 0.001, 0.5, 0.001):  # one hiccup does not move the median
        estimator.record("vision", s)
    assert estimator.predict("vision") == pytest.approx(0.001)
    assert estimator.predict_sum(["vision", "vision", "never-seen"]) == pytest.approx(0.002)
    skip = SkipPolicy(probe_every=3)
    decisions = [skip.decide(0.01, 0.02) for _ in range(6)]
    assert decisions == [(True, False), (True, False), (False, True)] * 2
    assert skip.decide(0.01, 0.005) == (False, False) and skip.consecutive_skips == 0
    assert skip.decide(None, 1.0) == (False, False)


class BrokenDecoder:
    def __init__(self, inner, mode):
        self.inner, self.input_names, self.mode = inner, inner.input_names, mode

    def run(self, feeds, outputs):
        if self.mode == "raise":
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 700")
        outs = self.inner.run(feeds, outputs)
        if self.mode == "nan":
            outs[0] = np.full_like(outs[0], np.nan)
        if self.mode == "bad-bin":
            outs[1] = np.array([10_000], np.int64)
        return outs


@pytest.mark.parametrize("mode, reason", [
    ("raise", "RuntimeError: [ONNXRuntimeError]"), ("nan", "non-finite action logits"),
    ("bad-bin", "decoder chose bin 10000"),
])
def test_inference_failure_returns_the_safe_action(root, mode, reason):
    policy = Policy.load(root)
    policy._decoder = BrokenDecoder(policy._decoder, mode)
    action = policy.act(np.zeros((16, 16, 3), np.uint8), "pick up the red block")
    assert action.safe_fallback and reason in action.reason
    assert_in_bounds(policy, action)
    with pytest.raises(InputError, match="instruction: is empty"):  # caller bugs still raise
        policy.act(np.zeros((16, 16, 3), np.uint8), "   ")


@pytest.mark.parametrize("image, instruction, field, message", [
    (np.zeros((16, 16, 3), np.float32) + np.nan, "open the drawer", "image", "NaN"),
    (np.full((16, 16, 3), 2.0, np.float32), "open the drawer", "image", r"in \[0, 1\]"),
    (np.zeros((16, 16, 4), np.uint8), "open the drawer", "image", "shape"),
    (np.zeros((2, 16, 16, 3), np.uint8), "open the drawer", "image", "batch of 2"),
    (np.zeros((16, 16, 3), np.int32), "open the drawer", "image", "dtype"),
    ([[0, 0, 0]], "open the drawer", "image", "numpy"),
    (np.zeros((16, 16, 3), np.uint8), "", "instruction", "empty"),
    (np.zeros((16, 16, 3), np.uint8), "a" * 513, "instruction", "limit is 512"),
    (np.zeros((16, 16, 3), np.uint8), "block " * 40, "instruction", "tokens, the limit is 32"),
    (np.zeros((16, 16, 3), np.uint8), b"open", "instruction", "expected a str"),
    (np.zeros((16, 16, 3), np.uint8), "open \ud800", "instruction", "not valid unicode"),
    (np.zeros((16, 16, 3), np.uint8), "put the <image> on the block", "instruction",
     r"special tokens \['<image>'\]"),
])
def test_typed_input_errors(policy, image, instruction, field, message):
    with pytest.raises(InputError, match=message) as info:
        policy.act(image, instruction)
    assert info.value.field == field


def test_clipped_actions_never_exceed_float64_bounds_by_rounding() -> None:
    from rt2edge.runtime.action import _float32_bounds_inward

    low = np.array([0.1, -0.3, 1.0 / 3.0, 0.0])
    high = np.array([0.1, 0.7, 2.0 / 3.0, 1e-9])
    low32, high32 = _float32_bounds_inward(low, high)
    assert low32.dtype == np.float32
    assert np.all(low32[1:].astype(np.float64) >= low[1:]) and np.all(high32[1:].astype(np.float64) <= high[1:])
    assert low32[0] == high32[0] == np.float32(0.1)  # degenerate dim: the nearest float32


class SlowLastStep:
    """The last decoder run of an action takes `delay` seconds: nothing runs after it to check."""

    def __init__(self, inner, delay, last_past_length):
        self.inner, self.input_names, self.delay, self.last = inner, inner.input_names, delay, last_past_length

    def run(self, feeds, outputs):
        if int(feeds["past_length"][0]) == self.last:
            time.sleep(self.delay)
        return self.inner.run(feeds, outputs)


def test_an_action_that_finishes_late_is_a_miss(root):
    # A deadline well above a normal act's latency even on a loaded machine (else the act is
    # skipped as a predicted miss, a different path), and a last step slower than it.
    policy = Policy.load(root, deadline_s=0.3, warmup=3)
    prompt = 4 + 1 + len("what action should the robot take to pick up the red block ?".split())
    policy._decoder = SlowLastStep(policy._decoder, 0.35, prompt + 6)
    action = policy.act(np.zeros((16, 16, 3), np.uint8), "pick up the red block")
    assert action.safe_fallback and "the action took" in action.reason and action.timing["total"] > 0.3
    assert_in_bounds(policy, action)


def test_an_instruction_is_refused_even_when_the_act_would_be_skipped(root):
    policy = Policy.load(root, deadline_s=1e-7)
    assert policy.act(np.zeros((16, 16, 3), np.uint8), "open the drawer").safe_fallback  # skipped
    with pytest.raises(InputError, match="special tokens"):
        policy.act(np.zeros((16, 16, 3), np.uint8), "put the <image> on the block")


def test_one_hiccup_after_load_does_not_predict_a_miss():
    estimator = LatencyEstimator()
    estimator.record("vision", 0.002)
    estimator.record("vision", 0.3)  # one scheduling hiccup among the first samples
    assert estimator.predict("vision") == pytest.approx(0.002)
    estimator.record("vision", 0.3)
    assert estimator.predict("vision") == pytest.approx(0.3)  # three samples: the median


def test_input_handling_failures_are_safe_actions_and_subclasses_are_plain_pixels(root, monkeypatch):
    policy = Policy.load(root)
    masked = np.ma.masked_array(np.zeros((16, 16, 3), np.uint8), mask=False)
    assert not policy.act(masked, "open the drawer").safe_fallback

    def out_of_memory(image):
        raise MemoryError("converting a float image")

    monkeypatch.setattr(policy, "_validate_image", out_of_memory)
    action = policy.act(np.zeros((16, 16, 3), np.float32), "open the drawer")
    assert action.safe_fallback and "MemoryError" in action.reason
    assert_in_bounds(policy, action)


def test_text_cache_size_is_checked_before_loading(root):
    from rt2edge.errors import ConfigError

    for bad in ("16", None, 0, True):
        with pytest.raises(ConfigError, match="text_cache_size"):
            Policy.load(root, text_cache_size=bad)
