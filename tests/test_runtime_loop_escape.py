"""Loop escape: the runtime samples the action taken from a state the episode already acted from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from artifact_factory import make_artifact

from rt2edge.actions import ActionStatistics, ActionTokenizer
from rt2edge.errors import ConfigError
from rt2edge.runtime import LoopEscape, Policy
from rt2edge.runtime.loop_escape import LoopMonitor

X, GRIPPER = 0, 6


def tokenizer(dim_names=None) -> ActionTokenizer:
    stats = ActionStatistics.from_actions(np.random.default_rng(0).uniform(-0.1, 0.1, (50, 7)))
    return ActionTokenizer(vocab_size=1000, statistics=stats, dim_names=dim_names)


def action(dx=0.0, dy=0.0, gripper=-1.0) -> np.ndarray:
    out = np.zeros(8, np.float32)
    out[X], out[X + 1], out[GRIPPER] = dx, dy, gripper
    return out


def test_a_return_to_a_pose_acted_from_with_the_same_gripper_is_a_loop():
    monitor = LoopMonitor(LoopEscape(tolerance=0.01), tokenizer())
    assert not monitor.returning()
    monitor.record(action(dx=0.1))
    assert not monitor.returning()  # at x = 0.1: new
    monitor.record(action(dx=-0.1))
    assert not monitor.returning()  # back at the origin, but the origin was acted from before any gripper command
    monitor.record(action(dx=0.1))
    assert monitor.returning()  # x = 0.1 with the gripper open: acted from two steps ago
    monitor.record(action(gripper=1.0))
    assert not monitor.returning()  # the same pose with the gripper closed is another state
    monitor.record(action(dx=0.105, gripper=1.0))
    monitor.record(action(dx=-0.1, gripper=1.0))
    assert monitor.returning()  # 0.005 from a closed-gripper state: within the tolerance
    monitor.reset()
    assert not monitor.returning()


def test_sampling_follows_the_softmax_at_the_temperature_and_reproduces():
    logits = np.log(np.array([[1.0, 3.0, 0.0 + 1e-12]]))
    draws = LoopMonitor(LoopEscape(temperature=1.0, seed=1), tokenizer()).sample(np.repeat(logits, 4000, 0))
    assert abs(np.mean(draws == 1) - 0.75) < 0.03 and not np.any(draws == 2)
    hot = LoopMonitor(LoopEscape(temperature=1e3, seed=1), tokenizer()).sample(np.repeat(logits, 4000, 0))
    assert all(abs(np.mean(hot == b) - 1 / 3) < 0.03 for b in range(3))  # near-uniform
    cold = LoopMonitor(LoopEscape(temperature=1e-3), tokenizer()).sample(np.repeat(logits, 100, 0))
    assert np.all(cold == 1)  # the argmax
    again = LoopMonitor(LoopEscape(temperature=1.0, seed=1), tokenizer()).sample(np.repeat(logits, 4000, 0))
    assert np.array_equal(draws, again)
    tiny = LoopMonitor(LoopEscape(temperature=1e-300), tokenizer()).sample(np.array([[5.0, 1e3, 2.0]]))
    assert tiny.tolist() == [1]  # no overflow at a vanishing temperature
    with pytest.raises(FloatingPointError):
        LoopMonitor(LoopEscape(), tokenizer()).sample(np.array([[0.0, -np.inf]]))
    half = LoopMonitor(LoopEscape(temperature=0.5, seed=1), tokenizer()).sample(np.repeat(logits, 4000, 0))
    assert abs(np.mean(half == 1) - 0.9) < 0.03  # p ~ [1, 3] ** 2


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=0.0), "loop_escape.temperature"), (dict(temperature=float("nan")), "loop_escape.temperature"),
    (dict(temperature=True), "loop_escape.temperature"),
    (dict(tolerance=-0.1), "loop_escape.tolerance"), (dict(seed=-1), "loop_escape.seed")])
def test_bad_settings_are_refused_by_name(kwargs, field):
    with pytest.raises(ConfigError) as info:
        LoopEscape(**kwargs)
    assert info.value.field == field


def test_an_action_space_without_xyz_deltas_is_refused():
    names = ("j1", "j2", "j3", "j4", "j5", "j6", "gripper")
    with pytest.raises(ConfigError, match="named \\['x', 'y', 'z'\\]"):
        LoopMonitor(LoopEscape(), tokenizer(names))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("loop") / "art")[0]


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def test_the_runtime_samples_only_actions_from_a_revisited_state(root):
    greedy = Policy.load(root, num_threads=1)
    # tolerance 1: any pose counts as a return (the tiny model's moves are small), so a state is
    # revisited whenever the gripper was commanded the same way before: among the 5 states after
    # the first, two share a gripper state (pigeonhole), so every run below escapes at least once.
    cold = Policy.load(root, num_threads=1, loop_escape=LoopEscape(temperature=1e-4, tolerance=1.0))
    hot = Policy.load(root, num_threads=1, loop_escape=LoopEscape(temperature=1e3, tolerance=1.0))
    assert cold.loop.escapes == 0 and len(cold.loop._states) == 0  # warm-up acts are not an episode
    frames = [image(s) for s in range(6)]
    expected = [greedy.act(f, "pick up the red block") for f in frames]
    runs = {}
    for name, policy in (("cold", cold), ("hot", hot)):
        policy.reset()
        replay = LoopMonitor(LoopEscape(tolerance=1.0), policy.action_tokenizer)
        runs[name] = got = []
        for f in frames:
            returning = replay.returning()
            a = policy.act(f, "pick up the red block")
            assert a.loop_escape == returning and a.to_dict()["loop_escape"] == returning
            replay.record(a.values)
            got.append(a)
            tok = policy.action_tokenizer
            assert np.all(a.values[:tok.num_dims] >= tok.action_low - 1e-6)
            assert np.all(a.values[:tok.num_dims] <= tok.action_high + 1e-6)
        assert not got[0].loop_escape and policy.loop.escapes == sum(a.loop_escape for a in got) >= 1
    # Near-zero temperature samples the argmax, so the sampled bins were fed back correctly.
    assert [tuple(a.bins) for a in runs["cold"]] == [tuple(a.bins) for a in expected]
    # A high temperature draws near-uniform bins: 7 motion/gripper tokens equal to the greedy ones
    # has p ~ 256^-7. Every action from a new state stays greedy.
    for a, e in zip(runs["hot"], expected):
        assert np.array_equal(a.bins, e.bins) != a.loop_escape
    hot.reset()
    assert not hot.act(frames[0], "pick up the red block").loop_escape  # reset forgets the states


def test_the_sampled_bin_is_the_one_fed_back(root):
    policy = Policy.load(root, num_threads=1, loop_escape=LoopEscape(tolerance=1.0))
    forced = 7
    policy.loop.sample = lambda logits: np.array([forced])
    fed, argmax = [], []
    run = policy._decoder.run

    def recording(feeds, outputs):
        fed.append(feeds["inputs_embeds"].copy())
        outs = run(feeds, outputs)
        argmax.append(int(np.asarray(outs[1]).reshape(-1)[0]))
        return outs

    policy._decoder.run = recording
    policy.reset()
    policy.loop.returning = lambda: True  # every act samples
    action = policy.act(image(0), "pick up the red block")
    tokens = policy.action_tokenizer.tokens_per_action
    assert action.loop_escape and list(action.bins[:-1]) == [forced] * (tokens - 1)
    # run 0 is the prefill; decode run k is fed the embedding of token k - 1's bin
    for step in range(1, tokens):
        assert np.array_equal(fed[step], policy._bin_embeds[forced])
    assert action.bins[-1] == argmax[-1]  # the terminate token is the graph's argmax, never drawn


def test_a_safe_fallback_is_not_a_visited_state(root):
    policy = Policy.load(root, num_threads=1, loop_escape=LoopEscape(tolerance=1.0))
    policy.deadline_s = 1e-9  # skipped before it starts
    assert policy.act(image(0), "pick up the red block").safe_fallback
    policy.deadline_s = None
    run = policy._decoder.run
    policy._decoder.run = lambda feeds, outputs: (_ for _ in ()).throw(RuntimeError("decoder down"))
    failed = policy.act(image(0), "pick up the red block")  # failed inside the inference
    assert failed.safe_fallback and "decoder down" in failed.reason
    assert len(policy.loop._states) == 0 and policy.loop.escapes == 0
    policy._decoder.run = run
    first = policy.act(image(0), "pick up the red block")
    assert not first.loop_escape and len(policy.loop._states) == 1


def test_episode_seeds_make_the_draws_independent_of_the_episodes_before(root):
    policy = Policy.load(root, num_threads=1, loop_escape=LoopEscape(temperature=1e3, tolerance=1.0))
    frames = [image(s) for s in range(5)]

    def episode(seed):
        policy.reset(seed=seed)
        return [tuple(policy.act(f, "pick up the red block").bins) for f in frames]

    first = episode(11)
    episode(12)
    assert episode(11) == first and episode(12) != first


def test_load_refuses_a_loop_escape_that_is_not_one(root):
    with pytest.raises(ConfigError, match="LoopEscape or None"):
        Policy.load(root, loop_escape={"temperature": 1.0})


def test_eval_reports_the_escapes_and_refuses_a_checkpoint(tiny_llava_artifact, tiny_llava_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from rt2edge.cli import app

    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["eval", str(tiny_llava_artifact), "--episodes", "1", "--split", "train",
                                      "--max-steps", "6", "--loop-escape", "1.0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["loop_escape"] == {"temperature": 1.0, "tolerance": 0.01, "seed": 0,
                                   "escapes": data["loop_escape"]["escapes"]}
    assert f"{data['loop_escape']['escapes']} sampled actions" in result.output
    refused = CliRunner().invoke(app, ["eval", str(tiny_llava_checkpoint), "--loop-escape", "1.0"])
    assert refused.exit_code == 2 and "export it" in refused.output
    for options in (["--loop-escape", "0"], ["--loop-escape", "1", "--expert-agreement", "2"]):
        bad = CliRunner().invoke(app, ["eval", str(tiny_llava_artifact), *options])
        assert bad.exit_code == 2 and "--loop-escape" in bad.output, bad.output


def test_a_parallel_decoder_samples_every_token_but_terminate(root):
    policy = Policy.load(root, num_threads=1, loop_escape=LoopEscape(temperature=1e3))
    tok = policy.action_tokenizer
    steps = tok.tokens_per_action
    logits = np.random.default_rng(0).standard_normal((1, steps, tok.n_bins)).astype(np.float32)
    greedy = logits.argmax(-1)
    policy._sampling = False
    assert np.array_equal(policy._pick_all([logits, greedy]), greedy[0])
    policy._sampling = True
    drawn = policy._pick_all([logits, greedy])
    assert drawn.shape == (steps,) and drawn[-1] == greedy[0, -1]  # terminate: the argmax
    assert not np.array_equal(drawn[:-1], greedy[0, :-1])  # near-uniform draws: p ~ 256^-7 to match
