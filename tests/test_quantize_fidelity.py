"""quantize.fidelity: token agreement and real-unit action error between two token functions."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from rt2edge.actions import ActionStatistics, ActionTokenizer
from rt2edge.errors import InputError
from quantize.fidelity import (
    compare_logits,
    compare_token_fns,
    compare_tokens,
    run_logit_fn,
    run_token_fn,
    runtime_token_fn,
)


@pytest.fixture(scope="module")
def tokenizer():
    lo, hi = -np.array([0.1] * 6 + [1.0]), np.array([0.1] * 6 + [1.0])
    stats = ActionStatistics(q01=lo, q99=hi, min=lo, max=hi)
    return ActionTokenizer(vocab_size=1000, statistics=stats)


def bins_to_ids(tok, bins):
    return tok.token_ids[np.asarray(bins)]


def test_identical_tokens_agree_fully(tokenizer):
    bins = np.random.default_rng(0).integers(0, 255, (10, 8))
    ids = bins_to_ids(tokenizer, bins)
    report = compare_tokens(ids, ids.copy(), tokenizer)
    assert report.token_agreement == report.action_agreement == 1.0
    assert report.mean_abs_error == [0.0] * 8 and report.max_bin_distance == [0] * 8
    assert report.dim_names[-1] == "terminate" and report.dim_names[0] == "x"
    assert report.distinct_reference_actions == len({tuple(r) for r in bins.tolist()})
    constant = bins_to_ids(tokenizer, np.full((5, 8), 7))
    degenerate = compare_tokens(constant, constant, tokenizer)
    assert degenerate.distinct_reference_actions == 1 and "not informative" in degenerate.to_markdown()


def test_one_flipped_token_is_reported_in_real_units(tokenizer):
    bins = np.full((4, 8), 128)
    other = bins.copy()
    other[2, 0] = 138  # x moves 10 bins: 10 * (2 / 255) normalized = 10 * 0.2 / 255 real units
    report = compare_tokens(bins_to_ids(tokenizer, bins), bins_to_ids(tokenizer, other), tokenizer)
    assert report.token_agreement == pytest.approx(31 / 32)
    assert report.action_agreement == pytest.approx(3 / 4)
    assert report.per_dim_agreement[0] == pytest.approx(3 / 4)
    assert report.max_bin_distance[0] == 10 and report.mean_bin_distance[0] == pytest.approx(2.5)
    assert report.max_abs_error[0] == pytest.approx(10 * 0.2 / 255)
    assert report.dim_range[0] == pytest.approx(0.2) and report.dim_range[6] == pytest.approx(2.0)


def test_invalid_rows_disagree_and_are_left_out_of_errors(tokenizer):
    ids = bins_to_ids(tokenizer, np.full((4, 8), 100))
    cand = ids.copy()
    cand[1] = -1  # a safe fallback of the runtime
    report = compare_tokens(ids, cand, tokenizer)
    assert report.invalid_candidate == 1 and report.invalid_reference == 0
    assert report.action_agreement == pytest.approx(3 / 4)
    assert report.max_abs_error == [0.0] * 8
    with pytest.raises(InputError):
        compare_tokens(ids, ids[:, :7], tokenizer)


def test_writes_json_and_markdown(tokenizer, tmp_path):
    ids = bins_to_ids(tokenizer, np.full((2, 8), 5))
    json_path, md_path = compare_tokens(ids, ids, tokenizer).write(tmp_path)
    assert json.loads(json_path.read_text())["token_agreement"] == 1.0
    assert "| gripper |" in md_path.read_text()


def test_token_fns_run_batched_per_image_size_in_order(tokenizer):
    calls = []

    def fn(images, instructions):
        calls.append(images.shape)
        # bin = the first pixel value: lets the test check each row came back to its observation
        return bins_to_ids(tokenizer, np.repeat(images[:, 0, 0, :1].astype(np.int64), 8, axis=1))

    obs = [(np.full((16 + 8 * (i % 2), 16, 3), i, np.uint8), f"task {i}") for i in range(7)]
    tokens = run_token_fn(fn, obs, batch_size=2)
    assert np.array_equal(tokenizer.ids_to_bins(tokens)[:, 0], np.arange(7))
    assert all(shape[0] <= 2 for shape in calls) and len(calls) == 4
    frames = [SimpleNamespace(image=img, instruction=text) for img, text in obs]
    assert compare_token_fns(fn, fn, frames, tokenizer).token_agreement == 1.0
    with pytest.raises(InputError):
        compare_token_fns(fn, fn, [], tokenizer)


def test_runtime_token_fn_maps_safe_fallbacks_to_invalid(tokenizer):
    class FakeRuntime:
        def __init__(self):
            self.resets = 0

        def reset(self):
            self.resets += 1

        def act(self, image, instruction):
            safe = instruction == "unsafe"
            tokens = [] if safe else bins_to_ids(tokenizer, np.full(8, 3))
            return SimpleNamespace(tokens=np.asarray(tokens, np.int64))

    runtime = FakeRuntime()
    fn = runtime_token_fn(runtime, tokenizer.tokens_per_action)
    tokens = fn(np.zeros((2, 16, 16, 3), np.uint8), ["go", "unsafe"])
    assert runtime.resets == 2 and tokens.shape == (2, 8) and np.all(tokens[1] == -1)


def test_logit_fidelity():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (6, 8, 256))
    same = compare_logits(ref, ref + 3.0)  # a constant shift changes no probability
    assert same.kl_mean == pytest.approx(0.0, abs=1e-12) and same.top1_agreement == 1.0
    assert same.max_abs_diff == pytest.approx(0.0, abs=1e-12) and same.rel_l2 == pytest.approx(0.0, abs=1e-12)
    assert same.n_steps == 48
    two = np.zeros((1, 1, 2))
    other = np.log(np.array([[[0.25, 0.75]]]))
    got = compare_logits(two, other)
    assert got.kl_mean == pytest.approx(0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75))
    noisy = compare_logits(ref, ref + rng.normal(0, 0.5, ref.shape))
    assert noisy.kl_mean > 0 and 0 < noisy.top1_agreement < 1 and noisy.reference_margin_mean > 0
    assert noisy.rel_l2 == pytest.approx(0.5, rel=0.05)
    with pytest.raises(InputError):
        compare_logits(ref, ref[..., :10])


def test_run_logit_fn_passes_the_tokens_of_each_observation():
    obs = [(np.zeros((16, 16, 3), np.uint8), "a")] * 3 + [(np.zeros((24, 24, 3), np.uint8), "b")]
    tokens = np.arange(4 * 8).reshape(4, 8)

    def fn(images, instructions, ids):
        assert images.shape[0] == len(instructions) == ids.shape[0]
        return np.repeat(ids[..., None].astype(np.float64), 3, axis=-1)

    logits = run_logit_fn(fn, obs, tokens, batch_size=3)
    assert logits.shape == (4, 8, 3) and np.array_equal(logits[..., 0], tokens)
