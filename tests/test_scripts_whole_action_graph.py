"""scripts/whole_action_graph_speed.py: the decoder unrolled into one graph per action picks the
bins the runtime's prefill + decode runs pick."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from whole_action_graph_speed import prompt_feeds, whole_action_session  # noqa: E402


def test_the_unrolled_decoder_picks_the_runtime_s_bins(tmp_path):
    from artifact_factory import make_artifact

    from rt2edge.runtime import Policy

    root, _ = make_artifact(tmp_path / "a")  # its last state depends on past_length's value
    policy = Policy.load(root, providers=["cpu"], num_threads=1, prefix_cache_size=0)
    session, _ = whole_action_session(policy, root, threads=1)
    tokens = policy.action_tokenizer.tokens_per_action
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(6):
        image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        action = policy.act(image, "pick up the red block")
        feeds = prompt_feeds(policy, image, "pick up the red block")
        logits, bins = session.run(["action_logits", "action_bins"], feeds)
        assert bins.shape == (tokens,) and logits.shape == (tokens, policy.action_tokenizer.n_bins)
        np.testing.assert_array_equal(bins, action.bins)
        seen.add(tuple(bins.tolist()))
    assert len(seen) > 1  # the frames lead to different actions: the comparison can fail
