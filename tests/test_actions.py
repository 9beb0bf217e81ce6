"""ActionTokenizer: OpenVLA parity, round-trip properties, strategies, errors, serialization."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rt2edge.actions import ActionStatistics, ActionTokenizer, least_frequent_token_ids
from rt2edge.errors import ActionValueError

BIN_WIDTH = 2.0 / 255.0  # OpenVLA: 256 edges on [-1, 1] -> 255 intervals


def openvla_tokenizer(**kw) -> ActionTokenizer:
    return ActionTokenizer(vocab_size=32000, normalization="none", terminate=False, **kw)


# Published behaviour of OpenVLA's ActionTokenizer for the Llama-2 vocabulary (32000 ids),
# worked out by hand from its definition (edges linspace(-1, 1, 256), id = 32000 - digitize(a)):
# value -> (token id, decoded value).
OPENVLA_REFERENCE = {
    -1.0: (31999, -1.0 + 1.0 / 255.0),
    0.0: (31872, 0.0),
    1.0: (31744, 1.0 - 1.0 / 255.0),
    0.5: (31808, -1.0 + 383.0 / 255.0),
    -0.3: (31910, -1.0 + 179.0 / 255.0),
    0.123: (31856, -1.0 + 287.0 / 255.0),
    0.999: (31745, 1.0 - 1.0 / 255.0),
}


@pytest.mark.parametrize("value", sorted(OPENVLA_REFERENCE))
def test_last_strategy_matches_openvla(value: float) -> None:
    tok = openvla_tokenizer()
    expected_id, expected_decoded = OPENVLA_REFERENCE[value]
    ids = tok.encode(np.full(7, value))
    assert ids.tolist() == [expected_id] * 7
    np.testing.assert_allclose(tok.decode(ids), expected_decoded, atol=1e-12)


def test_allowed_ids_are_last_256_of_vocab() -> None:
    tok = openvla_tokenizer()
    assert sorted(tok.allowed_ids.tolist()) == list(range(32000 - 256, 32000))
    assert tok.allowed_ids[0] == 31999  # bin order: bin 0 is the last id


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.just(7)),
                  elements=st.floats(-1.0, 1.0, allow_nan=False)))
def test_round_trip_within_half_bin(actions: np.ndarray) -> None:
    tok = openvla_tokenizer()
    decoded = tok.decode(tok.encode(actions))
    assert np.all(np.abs(decoded - actions) <= BIN_WIDTH / 2 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(st.floats(1.0, 1e6, allow_nan=False), st.integers(0, 6))
def test_out_of_range_clamps_to_edge_bins(magnitude: float, dim: int) -> None:
    tok = openvla_tokenizer()
    action = np.zeros(7)
    action[dim] = magnitude
    assert tok.encode_bins(action)[dim] == 255
    action[dim] = -magnitude
    assert tok.encode_bins(action)[dim] == 0


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 7), st.sampled_from([np.nan, np.inf, -np.inf]))
def test_non_finite_raises_naming_dim(dim: int, bad: float) -> None:
    tok = ActionTokenizer(vocab_size=1000, normalization="none", terminate=True)
    action = np.zeros(8)
    action[dim] = bad
    with pytest.raises(ActionValueError) as info:
        tok.encode(action)
    assert info.value.dim == dim
    assert f"action dim {dim}" in str(info.value)


@pytest.mark.parametrize("shape", [(6,), (3, 9), (), (2, 0)])
def test_wrong_shape_raises(shape: tuple[int, ...]) -> None:
    tok = ActionTokenizer(vocab_size=1000, normalization="none", terminate=True)
    with pytest.raises(ActionValueError, match=r"shape \(\.\.\., 8\)"):
        tok.encode(np.zeros(shape))


def _stats() -> ActionStatistics:
    rng = np.random.default_rng(0)
    actions = rng.normal(size=(2000, 7)) * np.array([0.05, 0.05, 0.02, 0, 0, 0, 1.0])
    return ActionStatistics.from_actions(actions)


@pytest.mark.parametrize("normalization", ["q01_q99", "min_max"])
def test_normalized_round_trip_and_degenerate_dims(normalization: str) -> None:
    stats = _stats()
    mask = np.array([True] * 6 + [False])  # gripper left unnormalized, as OpenVLA does
    tok = ActionTokenizer(vocab_size=500, strategy="append", normalization=normalization,
                          statistics=stats, normalize_mask=mask)
    low, high = tok.action_low, tok.action_high
    actions = np.concatenate([np.linspace(low, high, 11), np.zeros((11, 1))], axis=1)
    decoded = tok.decode(tok.encode(actions))
    width = (high - low) / 255.0
    # dims 3-5 have low == high: they encode to the middle bin and decode to that constant
    assert np.all(np.abs(decoded[:, :7] - actions[:, :7]) <= width / 2 + 1e-9)
    assert np.all(decoded[:, 3:6] == low[3:6])
    assert np.all(tok.encode_bins(actions)[:, 3:6] == 127)


def test_terminate_flag_round_trip() -> None:
    tok = ActionTokenizer(vocab_size=1000, normalization="none", terminate=True)
    actions = np.array([[0.1] * 7 + [1.0], [0.1] * 7 + [0.0]])
    bins = tok.encode_bins(actions)
    assert bins[:, 7].tolist() == [255, 0]
    assert tok.decode(tok.encode(actions))[:, 7].tolist() == [1.0, 0.0]


def test_append_strategy_ids_and_vocab() -> None:
    tok = ActionTokenizer(vocab_size=1000, strategy="append", normalization="none")
    assert tok.total_vocab_size == 1256
    assert tok.allowed_ids.tolist() == list(range(1000, 1256))


def test_least_frequent_strategy() -> None:
    counts = np.arange(600, 0, -1)  # id 599 is the rarest
    counts[599] = 10_000  # ... but frequent after all
    ids = least_frequent_token_ids(counts, 256, exclude_ids=[598])  # 598: a special token
    assert 598 not in ids and 599 not in ids
    assert ids[0] == 597 and len(set(ids.tolist())) == 256
    tok = ActionTokenizer(vocab_size=600, strategy="least_frequent", normalization="none",
                          terminate=False, token_ids=ids)
    actions = np.linspace(-1, 1, 7)
    assert np.all(np.abs(tok.decode(tok.encode(actions)) - actions) <= BIN_WIDTH / 2 + 1e-9)
    with pytest.raises(ActionValueError, match="not an action token"):
        tok.decode(np.array([598] * 7))


def test_least_frequent_needs_enough_ids() -> None:
    with pytest.raises(ActionValueError, match="fewer than"):
        least_frequent_token_ids(np.ones(100), 256)


def test_non_action_token_rejected_with_position() -> None:
    tok = openvla_tokenizer()
    ids = tok.encode(np.zeros(7))
    ids[4] = 5
    with pytest.raises(ActionValueError) as info:
        tok.decode(ids)
    assert info.value.dim == 4 and "pitch" in str(info.value)


def test_json_round_trip_and_version_check() -> None:
    tok = ActionTokenizer(vocab_size=500, strategy="append", normalization="q01_q99",
                          statistics=_stats(), normalize_mask=[True] * 6 + [False])
    data = json.loads(json.dumps(tok.to_dict()))
    again = ActionTokenizer.from_dict(data)
    actions = np.random.default_rng(1).uniform(-0.1, 0.1, size=(5, 8))
    np.testing.assert_array_equal(again.encode(actions), tok.encode(actions))
    data["format_version"] = 99
    with pytest.raises(ActionValueError, match="format_version 99"):
        ActionTokenizer.from_dict(data)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strategy": "first"}, "strategy"),
        ({"normalization": "zscore"}, "normalization"),
        ({"normalization": "q01_q99"}, "needs statistics"),
        ({"n_bins": 1}, "n_bins"),
        ({"normalize_mask": [True] * 3}, "normalize_mask"),
        ({"strategy": "least_frequent"}, "token_ids"),
    ],
)
def test_bad_config_rejected(kwargs: dict, match: str) -> None:
    base = {"vocab_size": 1000, "normalization": "none"}
    base.update(kwargs)
    with pytest.raises(ActionValueError, match=match):
        ActionTokenizer(**base)


def test_statistics_reject_non_finite() -> None:
    with pytest.raises(ActionValueError, match="action dim 1"):
        ActionStatistics(q01=[0, np.nan], q99=[1, 1], min=[0, 0], max=[1, 1])


@st.composite
def _normalized_case(draw):
    """Any number of dims, random statistics (some dims degenerate), in-range actions."""
    num_dims = draw(st.integers(1, 12))
    low = np.array(draw(st.lists(st.floats(-5, 5), min_size=num_dims, max_size=num_dims)))
    span = np.array(draw(st.lists(st.sampled_from([0.0, 0.01, 0.5, 3.0]), min_size=num_dims,
                                  max_size=num_dims)))
    stats = ActionStatistics(q01=low, q99=low + span, min=low, max=low + span)
    frac = np.array(draw(st.lists(st.floats(0, 1), min_size=num_dims, max_size=num_dims)))
    terminate = draw(st.booleans())
    actions = low + frac * span
    if terminate:
        actions = np.append(actions, float(draw(st.booleans())))
    return stats, num_dims, terminate, actions, span


@settings(max_examples=200, deadline=None)
@given(_normalized_case(), st.sampled_from(["q01_q99", "min_max"]))
def test_normalized_round_trip_any_dims(case, normalization: str) -> None:
    stats, num_dims, terminate, actions, span = case
    tok = ActionTokenizer(vocab_size=300, num_dims=num_dims, strategy="append",
                          normalization=normalization, statistics=stats, terminate=terminate)
    decoded = tok.decode(tok.encode(actions))
    err = np.abs(decoded[:num_dims] - actions[:num_dims])
    assert np.all(err <= span / 255.0 / 2 + 1e-9)  # half a bin in real units; 0 for degenerate dims
    if terminate:
        assert decoded[-1] == actions[-1]
