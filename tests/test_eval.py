"""Closed-loop evaluation: the scripted expert solves the tasks, a tiny random VLAPolicy runs,
results are deterministic, `rt2edge eval` works end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from rt2edge.evaluation import (
    ArtifactPolicyAdapter,
    EvaluationResult,
    ScriptedExpertPolicy,
    episode_seed,
    evaluate,
    save_rollout,
    wilson_interval,
)
from rt2edge.errors import ActionValueError, ArtifactError, ConfigError
from rt2edge.evaluation.policies import load_policy


def test_scripted_expert_solves_seen_and_heldout_tasks():
    result = evaluate(ScriptedExpertPolicy(), episodes=12, seed=0)
    assert result.splits == ["train", "heldout"]
    for split in result.splits:
        summary = result.summary(split)
        assert summary.episodes == 12 and summary.success_rate >= 0.95
        assert set(result.by_family(split)) == {"pick", "move_near", "put_on", "pick_extreme",
                                               "move_to_mat", "move_to_flag"}  # 2 each
        assert 1 < summary.mean_length < result.max_steps
    assert all(e.out_of_bounds_actions == 0 for e in result.episodes)
    assert result.rollout_frames is not None and result.rollout_frames.shape[1:] == (64, 64, 3)
    assert len(result.rollout_frames) == result.rollout_episode.steps + 1


def test_wilson_interval_matches_published_values_and_stays_in_range():
    # Reference values: Newcombe (1998), Table I (Wilson score, 95%): 0/10 -> 0-0.2775, 81/263 -> 0.2553-0.3662,
    # 15/148 -> 0.0624-0.1605
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4) and high == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    narrow, wide = wilson_interval(300, 600), wilson_interval(30, 60)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # more episodes, tighter interval
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_results_are_deterministic_for_a_seed_and_serializable(tmp_path):
    a = evaluate(ScriptedExpertPolicy(), episodes=4, seed=3, splits=["heldout"], record=False)
    b = evaluate(ScriptedExpertPolicy(), episodes=4, seed=3, splits=["heldout"], record=False)
    c = evaluate(ScriptedExpertPolicy(), episodes=4, seed=4, splits=["heldout"], record=False)
    assert a.episodes == b.episodes
    assert [e.instruction for e in a.episodes] != [e.instruction for e in c.episodes]
    data = json.loads(a.save_json(tmp_path / "r.json").read_text())
    overall = data["splits"]["heldout"]["overall"]
    assert overall["episodes"] == 4
    assert overall["success_ci95"] == pytest.approx(list(wilson_interval(overall["successes"], 4)))
    assert "heldout success" in a.format_table() and "95% interval" in a.format_table()
    # evaluation scenes are not the data generator's scenes (its seeds: SeedSequence([seed, i, attempt]))
    gen = int(np.random.SeedSequence([0, 0, 0]).generate_state(1)[0])
    assert episode_seed(0, "train", 0) != gen


class ConstantPolicy:
    """A stateless batched policy: never terminates, so every episode runs to the env's limit."""

    stateful = False

    def __init__(self):
        self.batch_sizes = []

    def act(self, image, instruction):
        return np.zeros(8)

    def act_batch(self, images, instructions):
        self.batch_sizes.append(len(images))
        return np.zeros((len(images), 8))


def test_batched_policies_step_several_envs_and_keep_the_plan_order():
    policy = ConstantPolicy()
    result = evaluate(policy, episodes=5, seed=0, splits=["train"], num_envs=3, max_steps=4)
    assert max(policy.batch_sizes) == 3
    assert [e.index for e in result.episodes] == list(range(5))
    assert all(e.steps == 4 and not e.terminated and not e.success for e in result.episodes)
    single = evaluate(ScriptedExpertPolicy(), episodes=5, seed=0, splits=["train"], max_steps=4)
    assert [e.instruction for e in single.episodes] == [e.instruction for e in result.episodes]


def test_object_counts_set_the_scenes_like_data_generate_objects():
    class CountingPolicy(ConstantPolicy):
        counts: list[int] = []

        def attach_env(self, env):
            self.counts.append(len(env.scene.objects))

    policy = CountingPolicy()
    evaluate(policy, episodes=4, seed=0, splits=["train"], max_steps=2, object_counts=(2,), record=False)
    assert policy.counts and set(policy.counts) == {2}
    with pytest.raises(ConfigError):
        evaluate(policy, episodes=1, splits=["train"], object_counts=(9,))
    with pytest.raises(ConfigError) as err:  # the factory's envs decide; silently ignoring would lie
        evaluate(policy, episodes=1, splits=["train"], object_counts=(2,), env_factory=lambda split: None)
    assert err.value.field == "object_counts"


def test_malformed_actions_and_options_are_refused():
    class Bad:
        def act(self, image, instruction):
            return np.full(7, np.nan)

    with pytest.raises(ActionValueError):
        evaluate(Bad(), episodes=1, splits=["train"])
    with pytest.raises(ConfigError):
        evaluate(Bad(), episodes=0)


def test_artifact_adapter_reads_action_values_and_counts_fallbacks():
    class FakeAction:
        def __init__(self, fallback):
            self.values = np.zeros(8, np.float32)
            self.safe_fallback = fallback

    class FakeRuntime:
        resets = 0
        calls = 0

        def reset(self):
            FakeRuntime.resets += 1

        def act(self, image, instruction):
            FakeRuntime.calls += 1
            return FakeAction(FakeRuntime.calls % 2 == 0)

    adapter = ArtifactPolicyAdapter(FakeRuntime())
    result = evaluate(adapter, episodes=2, splits=["train"], max_steps=3)
    assert FakeRuntime.resets == 2 and FakeRuntime.calls == 6
    assert result.safe_fallbacks == 3


def test_load_policy_refuses_unknown_folders(tmp_path):
    with pytest.raises(ArtifactError):
        load_policy(tmp_path)
    with pytest.raises(ArtifactError):
        load_policy(tmp_path / "missing")


def test_rollout_gif_and_strip(tmp_path):
    pytest.importorskip("PIL")
    frames = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    assert save_rollout(frames, tmp_path / "r.gif", "pick up the red cube", True).stat().st_size > 0
    assert save_rollout(frames, tmp_path / "r.png", "pick up the red cube").stat().st_size > 0
    with pytest.raises(ConfigError):
        save_rollout(frames, tmp_path / "r.mp4")


def test_importing_the_evaluator_loads_no_torch():
    code = "import sys, rt2edge.evaluation; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ torch policies
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from rt2edge.actions import ActionStatistics
    from rt2edge.models.families import SpecialTokenIds, VLMSize, build_model, get_family
    from rt2edge.models.policy import VLAPolicy
    from rt2edge.models.text_tokenizer import train_text_tokenizer
    from rt2edge.sim import TabletopEnv, instruction_corpus

    torch.set_num_threads(1)
    tokenizer = train_text_tokenizer(instruction_corpus("train"), vocab_size=512)
    tokens = SpecialTokenIds(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                             tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<image>"))
    size = VLMSize(vision_hidden_size=64, vision_layers=1, vision_heads=2, vision_intermediate_size=128,
                   hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
                   image_size=32, patch_size=8)
    model = build_model(get_family("llava"), size, tokens, seed=0)
    env = TabletopEnv()
    actions = []
    for seed in range(4):  # statistics of expert actions, as a dataset would give them
        env.reset(seed=seed)
        for _ in range(10):
            a = env.expert_action()
            actions.append(a[:7])
            if env.step(a)[2]:
                break
    policy = VLAPolicy.from_model(model, tokenizer, statistics=ActionStatistics.from_actions(np.array(actions)))
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    policy.save_pretrained(out)
    return out


def test_tiny_random_vla_policy_runs_with_in_range_actions(tiny_checkpoint):
    policy = load_policy(tiny_checkpoint)
    result = evaluate(policy, episodes=3, seed=0, num_envs=3, max_steps=4)
    assert isinstance(result, EvaluationResult) and len(result.episodes) == 6
    assert all(1 <= e.steps <= 4 for e in result.episodes)
    assert all(e.out_of_bounds_actions == 0 for e in result.episodes)


def test_rt2edge_eval_command(tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from rt2edge.cli import app

    args = ["eval", str(tiny_checkpoint), "--episodes", "2", "--seed", "1", "--split", "heldout",
            "--max-steps", "3", "--gif", str(tmp_path / "roll.png"), "--json", str(tmp_path / "r.json"),
            "--language-probe", "3", "--expert-agreement", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "heldout success" in result.output and "language probe (3 seen-instruction scenes)" in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["splits"]["heldout"]["overall"]["episodes"] == 2 and data["max_steps"] == 3
    probe = data["language_probe"]
    assert probe["scenes"] == 3 and 0.0 <= probe["follows"] <= 1.0 and len(probe["scene_records"]) == 3
    assert "expert-driven states" in result.output
    agreement = data["expert_agreement"]
    assert agreement["episodes"] == 2 and agreement["split"] == "train"  # seen instructions, whatever --split
    assert agreement["agreement"]["policy"]["all"]["steps"] <= 2 * 3  # --max-steps holds here too
    assert (tmp_path / "roll.png").stat().st_size > 0

    # The same scenes again, paired with the first run: the same policy solves the same episodes.
    again = CliRunner().invoke(app, args[:8] + ["--max-steps", "3", "--paired-with", str(tmp_path / "r.json"),
                                                "--json", str(tmp_path / "again.json")])
    assert again.exit_code == 0, again.output
    assert f"paired with {tmp_path / 'r.json'}" in again.output
    paired = json.loads((tmp_path / "again.json").read_text())["paired"]["comparisons"]
    assert [c["split"] for c in paired] == ["heldout", None]
    assert all(c["only_a"] == c["only_b"] == 0 and c["p_value"] == 1.0 for c in paired)
    # Other scenes are refused on the option that names them, before the run (nothing written).
    # A file from before scene options were recorded shows other families only in its scenes,
    # after the run: that run is still printed and saved, then refused.
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["scene_options"]["object_counts"] == [3, 4] and len(record["scene_options"]["families"]) == 6
    del record["scene_options"]
    (tmp_path / "old.json").write_text(json.dumps(record))
    for change, paired_with, message, saved in (
            (["--seed", "2"], "r.json", "was evaluated with --seed 1", False),
            (["--max-steps", "4"], "r.json", "--max-steps 3, this run has 4", False),
            (["--episodes", "3"], "r.json", "holds 2 episodes of split 'heldout'", False),
            (["--split", "both"], "r.json", "holds no episodes of split 'train'", False),
            (["--families", "move_near"], "r.json", "families [", False),
            (["--objects", "2"], "r.json", "object_counts [3, 4], this run has [2]", False),
            (["--families", "move_near"], "old.json", "different scenes", True)):
        out = tmp_path / "other.json"
        other = CliRunner().invoke(app, [*args[:8], "--max-steps", "3", *change, "--json", str(out),
                                         "--paired-with", str(tmp_path / paired_with)])
        text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", other.output).split())  # unwrap typer's error box
        assert other.exit_code == 2 and "--paired-with" in text and message in text, text
        assert out.exists() == saved and ("heldout success" in other.output) == saved
        out.unlink(missing_ok=True)
    bad = CliRunner().invoke(app, ["eval", str(tiny_checkpoint), "--split", "test"])
    assert bad.exit_code == 2
    # refused before the evaluation runs: pick_extreme never names the object to move
    bad = CliRunner().invoke(app, ["eval", str(tiny_checkpoint), "--families", "pick_extreme",
                                   "--language-probe", "5", "--json", str(tmp_path / "none.json")])
    assert bad.exit_code == 2 and "families" in bad.output and not (tmp_path / "none.json").exists()


def test_rt2edge_eval_carry_probe(tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from rt2edge.cli import app

    args = ["eval", str(tiny_checkpoint), "--episodes", "1", "--max-steps", "2", "--families", "move_to_mat",
            "--language-probe", "2", "--probe-phase", "carry", "--json", str(tmp_path / "r.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "language probe (2 seen-instruction carry frames): follows the named destination" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["language_probe"]["phase"] == "carry"
    # refused before the evaluation runs, on the option that set it
    for extra, option in ((["--probe-phase", "grasp"], "--probe-phase"), (["--families", "pick"], "--families")):
        bad = CliRunner().invoke(app, args[:-2] + extra + ["--json", str(tmp_path / "none.json")])
        assert bad.exit_code == 2 and option in bad.output and not (tmp_path / "none.json").exists()


class Oscillator:
    """+x, then -x, then +x...: back in its first state after two steps, a loop."""

    name = "oscillator"
    stateful = True

    def reset(self) -> None:
        self.sign = 1.0

    def act(self, image: np.ndarray, instruction: str) -> np.ndarray:
        self.sign = -self.sign
        return np.array([-0.1 * self.sign, 0, 0, 0, 0, 0, -1, 0], np.float64)


def test_episodes_that_return_to_an_earlier_state_are_counted_as_loops():
    looping = evaluate(Oscillator(), episodes=2, splits=["train"], max_steps=6)
    assert [e.revisit_step for e in looping.episodes] == [2, 2] and all(not e.terminated for e in looping.episodes)
    census = "back in an earlier state (a loop): train 2 of 2 (2 of the 2 that ran out of steps)"
    assert census in looping.format_table()
    assert looping.to_dict()["episodes"][0]["revisit_step"] == 2
    expert = evaluate(ScriptedExpertPolicy(), episodes=6, splits=["train"])
    assert all(e.success and e.revisit_step is None for e in expert.episodes)  # it never goes back
    assert "a loop" not in expert.format_table()


def test_failed_episodes_carry_their_failure_kind_in_the_table_and_json(tmp_path):
    idle = evaluate(ConstantPolicy(), episodes=4, seed=0, splits=["train"], max_steps=3, record=False)
    assert {e.failure for e in idle.episodes} == {"untouched"}  # nothing moved in 3 idle steps
    data = json.loads(idle.save_json(tmp_path / "idle.json").read_text())
    assert data["splits"]["train"]["failures"] == {"pick": {"untouched": 1}, "move_near": {"untouched": 1},
                                                   "put_on": {"untouched": 1}, "pick_extreme": {"untouched": 1}}
    assert data["episodes"][0]["failure"] == "untouched"
    table = idle.format_table()
    assert re.search(r"train failures\s+untouched\n", table) and re.search(r"\nmove_near\s+1\n", table)
    expert = evaluate(ScriptedExpertPolicy(), episodes=4, seed=0, splits=["train"], record=False)
    assert all(e.success and e.failure is None for e in expert.episodes)
    assert "failures" not in expert.format_table()
    assert expert.to_dict()["splits"]["train"]["failures"] == {}


def test_kinds_of_a_custom_env_are_shown_and_envs_that_cannot_tell_are_unknown():
    from rt2edge.sim import TabletopEnv

    class CollisionEnv(TabletopEnv):
        def failure_kind(self):
            return "collision"

    class SilentEnv(TabletopEnv):
        failure_kind = None  # an env without the method

    custom = evaluate(ConstantPolicy(), episodes=2, splits=["train"], max_steps=2, record=False,
                      env_factory=lambda split: CollisionEnv(split=split))
    assert re.search(r"train failures\s+collision\n", custom.format_table())
    silent = evaluate(ConstantPolicy(), episodes=2, splits=["train"], max_steps=2, record=False,
                      env_factory=lambda split: SilentEnv(split=split))
    assert {e.failure for e in silent.episodes} == {None}
    assert silent.failure_counts("train") == {"pick": {"unknown": 1}, "move_near": {"unknown": 1}}
    assert "failures" not in silent.format_table()  # nothing to tell
