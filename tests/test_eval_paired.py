"""Paired comparison of two evaluations on the same scenes: McNemar's exact test, episode pairing,
refusal of evaluations of different scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rt2edge.errors import ConfigError
from rt2edge.evaluation import ScriptedExpertPolicy, evaluate
from rt2edge.evaluation.paired import load_evaluation, mcnemar_exact, paired_by_split, paired_comparison
from rt2edge.evaluation.results import EpisodeResult
from rt2edge.sim.language import FAMILIES


@pytest.mark.parametrize("only_a, only_b, expected", [
    (1, 5, 14 / 64),  # 2 * P(X <= 1), X ~ Binomial(6, 1/2) = 2 * 7/64
    (0, 6, 2 / 64),
    (2, 12, 2 * 106 / 2 ** 14),  # 1 + 14 + 91 ways of <= 2 of 14
    (3, 3, 1.0),  # an even split: capped at 1
    (0, 0, 1.0),  # no discordant episode: no evidence
])
def test_mcnemar_exact_p_values(only_a, only_b, expected):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected)
    assert mcnemar_exact(only_b, only_a) == pytest.approx(expected)  # two-sided: symmetric


def test_mcnemar_refuses_negative_counts():
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_exact(-1, 3)


def _episodes(successes: list[bool], split: str = "train") -> list[EpisodeResult]:
    return [EpisodeResult(split=split, index=i, family="pick", instruction=f"pick {i}", seed=100 + i,
                          success=s, reached=s, terminated=True, steps=5, out_of_bounds_actions=0)
            for i, s in enumerate(successes)]


def test_pairing_counts_discordant_episodes_per_split():
    a = _episodes([True, True, False, False, True]) + _episodes([True, False], "heldout")
    b = _episodes([True, False, True, False, False]) + _episodes([True, True], "heldout")
    train, heldout, both_splits = paired_by_split(a, b, ["train", "heldout"])
    assert (train.both, train.only_a, train.only_b, train.neither) == (1, 2, 1, 1)
    assert train.difference == pytest.approx(1 / 5) and train.p_value == pytest.approx(mcnemar_exact(2, 1))
    assert (heldout.only_a, heldout.only_b, heldout.episodes) == (0, 1, 2)
    assert both_splits.split is None and both_splits.episodes == 7
    assert (both_splits.only_a, both_splits.only_b) == (2, 2)
    assert "only a 2" in both_splits.format_line()


def test_pairing_refuses_evaluations_of_different_scenes():
    a, b = _episodes([True] * 4), _episodes([True] * 5)
    with pytest.raises(ConfigError, match="different scenes") as info:
        paired_comparison(a, b)
    assert info.value.field == "paired_with"
    with pytest.raises(ConfigError, match="no episodes to pair in split 'heldout'"):
        paired_comparison(a, a, "heldout")


class _HoldStill:
    """A policy that never moves and never terminates: the floor a trained policy must beat."""

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        return np.zeros(8)


def test_the_expert_against_a_policy_that_holds_still_is_a_significant_difference():
    expert = evaluate(ScriptedExpertPolicy(), episodes=6, seed=2, splits=["train"], record=False)
    still = evaluate(_HoldStill(), episodes=6, seed=2, splits=["train"], max_steps=5, record=False)
    result = paired_comparison(expert.episodes, still.episodes)
    assert result.only_b == 0 and result.only_a == sum(e.success for e in expert.episodes) >= 5
    assert result.p_value <= 2 / 2 ** 5  # at least 5 discordant episodes, all one way
    assert paired_comparison(expert.episodes, expert.episodes).p_value == 1.0


def test_pairing_uses_only_the_splits_asked_for():
    """An earlier `--split both` run pairs with a `--split train` one on the train episodes."""
    both = _episodes([True, False]) + _episodes([True, True], "heldout")
    train = _episodes([False, False])
    per_split, together = paired_by_split(train, both, ["train"])
    assert per_split.split == "train" and together.episodes == 2 and (together.only_a, together.only_b) == (0, 1)


def test_an_earlier_evaluation_is_checked_before_the_run(tmp_path):
    result = evaluate(ScriptedExpertPolicy(), episodes=2, seed=3, splits=["train", "heldout"], max_steps=4,
                      record=False)
    record = load_evaluation(result.save_json(tmp_path / "r.json"))
    assert (record.seed, record.max_steps, len(record.episodes)) == (3, 4, 4)
    assert record.scene_options == {"families": list(FAMILIES), "object_counts": [3, 4]}
    record.check_pairable(3, 4, 2, ["train", "heldout"], record.scene_options)
    record.check_pairable(3, None, 2, ["train"])  # what is not known yet is not compared
    for args, message in (((4, 4, 2, ["train"]), "--seed 3, this run has --seed 4"),
                          ((3, 5, 2, ["train"]), "--max-steps 4, this run has 5"),
                          ((3, 4, 3, ["train"]), "holds 2 episodes of split 'train', this run evaluates 3"),
                          ((3, 4, 2, ["train"], {"families": ["pick"]}), r"families \[.*\], this run has \['pick'\]"),
                          ((3, 4, 2, ["train"], {"object_counts": [2]}), r"use the same --objects")):
        with pytest.raises(ConfigError, match=message) as info:
            record.check_pairable(*args)
        assert info.value.field == "paired_with"
    only_train = load_evaluation(evaluate(ScriptedExpertPolicy(), episodes=1, seed=3, splits=["train"], max_steps=4,
                                          record=False).save_json(tmp_path / "t.json"))
    with pytest.raises(ConfigError, match=r"no episodes of split 'heldout' \(only \['train'\]\)"):
        only_train.check_pairable(3, 4, 1, ["train", "heldout"])
    (tmp_path / "bad.json").write_text('{"seed": 1}')
    for path, message in ((tmp_path / "none.json", "does not exist"), (tmp_path / "bad.json", "is not an")):
        with pytest.raises(ConfigError, match=message):
            load_evaluation(path)


def test_an_episode_field_added_later_does_not_break_an_older_reader(tmp_path):
    result = evaluate(ScriptedExpertPolicy(), episodes=1, seed=0, splits=["train"], max_steps=3, record=False)
    data = result.to_dict()
    data["episodes"][0]["a_later_field"] = 1.0
    (tmp_path / "r.json").write_text(json.dumps(data))
    assert load_evaluation(tmp_path / "r.json").episodes == result.episodes
