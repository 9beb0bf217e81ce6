"""scripts/grounding_pretrain.py: its pointer labels mark the named object, its heads read the right rows."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from grounding_pretrain import MAX_OFFSET_STEPS, FrameSource, last_prompt_state, pointer_logits  # noqa: E402

from rt2edge.sim.render import mat_fill_rgb  # noqa: E402
from rt2edge.sim.world import COLOURS  # noqa: E402
from tiny_policies import build_tiny_policy  # noqa: E402


def test_pointer_labels_sit_on_the_named_objects_colour():
    grid, size = 8, 64
    images, texts, actions, patches, _ = FrameSource(("pick",), (2,), size, grid, seed=4).batch(24)
    assert images.shape == (24, size, size, 3) and actions.shape == (24, 8) and len(texts) == 24
    hits = 0
    for image, text, patch in zip(images, texts, patches.tolist()):
        named = next(c for c in COLOURS if f" {c} " in f" {text} ")
        cell = image[patch // grid * 8:(patch // grid + 1) * 8, patch % grid * 8:(patch % grid + 1) * 8]
        distance = np.abs(cell.reshape(-1, 3).astype(float) - COLOURS[named]).sum(axis=1)
        hits += bool((distance < 60).any())  # some pixel of the patch has the named colour
    assert hits >= 0.9 * len(patches)


def _on_named_mat(image: np.ndarray, text: str, patch: int, grid: int) -> bool:
    """At least 16 pixels of the pointer's 8 x 8 patch show the inside of the mat `text` names."""
    mat = next(c for c in COLOURS if f"{c} mat" in text)
    cell = image[patch // grid * 8:(patch // grid + 1) * 8, patch % grid * 8:(patch % grid + 1) * 8]
    return bool((np.abs(cell.reshape(-1, 3).astype(float) - mat_fill_rgb(mat)).sum(axis=1) < 30).sum() >= 16)


def test_whole_episode_frames_point_at_the_destination_while_carrying():
    """phases="all": frames from every phase; the goal offset agrees with the expert's moves and the
    pointer of a frame whose gripper is carrying to a mat lies on that mat's colour."""
    grid, size = 8, 64
    source = FrameSource(("move_to_mat",), (3,), size, grid, seed=2, phases="all", per_episode=40)
    images, texts, actions, patches, offsets = source.batch(160)
    assert offsets.shape == (160, 2) and float(offsets.abs().max()) <= MAX_OFFSET_STEPS
    holding = actions[:, 6] > 0  # the expert's gripper command: closed = carrying (or grasping)
    assert 0.2 < holding.mean() < 0.8  # both phases are drawn
    moving = np.abs(actions[:, :2]) > 1e-6
    assert np.all(np.sign(actions[:, :2][moving]) == np.sign(offsets.numpy()[moving]))
    hits = carrying = 0
    for image, text, patch, action, offset in zip(images, texts, patches.tolist(), actions, offsets.numpy()):
        # carrying, and far enough from the mat that the gripper and its load do not cover its centre
        if action[6] <= 0 or np.abs(offset).max() < 1.5:
            continue
        carrying += 1
        hits += _on_named_mat(image, text, patch, grid)
    assert carrying >= 10 and hits >= 0.9 * carrying


def test_carry_frames_hold_the_named_object_and_point_at_the_destination():
    """phases="carry": only frames that hold the named object: every move is a carrying move (closed
    gripper; the approach moves open) and the pointer lies on the named mat's colour."""
    grid, size = 8, 64
    source = FrameSource(("move_to_mat",), (3,), size, grid, seed=3, phases="carry", per_episode=40)
    images, texts, actions, patches, offsets = source.batch(60)
    moving = np.abs(actions[:, :3]).max(axis=1) > 1e-6
    assert moving.sum() >= 20 and np.all(actions[moving, 6] > 0)
    hits = far = 0
    for image, text, patch, offset in zip(images, texts, patches.tolist(), offsets.numpy()):
        if np.abs(offset).max() < 1.5:  # the gripper and its load may cover the mat's centre
            continue
        far += 1
        hits += _on_named_mat(image, text, patch, grid)
    assert far >= 10 and hits >= 0.9 * far


def test_dagger_frames_are_the_driving_policys_states_with_the_experts_labels():
    """A policy that closes its gripper on nothing and drifts right: DAgger frames show where it went
    (closed, empty, heading off) and carry the expert's recovery (open, head back), not its actions."""
    calls = []

    def drifting_policy(images, instructions):
        calls.append(len(instructions))
        return np.tile([0.1, 0.0, -0.1, 0, 0, 0, 1.0, 1.0], (len(instructions), 1))  # also asks to stop

    source = FrameSource(("pick",), (2,), 64, 8, seed=1, phases="all", act=drifting_policy, dagger=1.0,
                         dagger_envs=4, dagger_steps=12)
    images, texts, actions, patches, offsets = source.batch(48)
    assert calls and max(calls) == 4  # one batched call steps every live env
    assert len(texts) == 48
    late = [i for i in range(48) if offsets[i, 0] <= -4]  # drifted 4+ steps past the object
    assert late  # the terminate the policy asked for was ignored: its rollouts ran on
    assert np.all(actions[:, 6] == -1.0)  # the expert opens the wrongly closed gripper, never closes it here
    assert np.all(actions[late, 0] < 0)  # and heads back left, towards the object it drifted away from


def test_dagger_needs_a_policy_and_whole_episodes():
    with pytest.raises(ValueError, match="dagger"):
        FrameSource(("pick",), (2,), 64, 8, seed=0, phases="pregrasp", act=lambda i, t: None, dagger=0.5)
    with pytest.raises(ValueError, match="dagger"):
        FrameSource(("pick",), (2,), 64, 8, seed=0, phases="all", dagger=0.5)

@pytest.mark.parametrize("at", ["image", "last"])
def test_pointer_logits_read_the_image_tokens_or_the_last_prompt_position(tokenizer, at):
    policy = build_tiny_policy(tokenizer)
    policy.prompt = dataclasses.replace(policy.prompt, instruction_first=True)
    n_patches = policy.prompt.num_image_tokens
    width = policy.model.config.text_config.hidden_size
    images = np.zeros((3, 32, 32, 3), np.uint8)
    batch = policy.build_training_batch(images, ["pick the red cube", "lift it", "open"], np.zeros((3, 8)))
    hidden = torch.randn(*batch["input_ids"].shape, width)
    head = torch.nn.Linear(width, n_patches if at == "last" else 1)
    logits = pointer_logits(policy, batch, hidden, head, at)
    assert logits.shape == (3, n_patches)
    if at == "image":  # one logit per image token, in raster order
        start = int((batch["input_ids"][1] == policy.prompt.image_token_id).nonzero()[0])
        torch.testing.assert_close(logits[1], head(hidden[1, start:start + n_patches]).squeeze(-1))
    else:  # the row that predicts the first action token
        torch.testing.assert_close(logits[2], head(hidden[2, int(batch["action_positions"][2, 0]) - 1]))
    # the goal-offset head reads the same row as the "last" pointer
    torch.testing.assert_close(last_prompt_state(batch, hidden)[0],
                               hidden[0, int(batch["action_positions"][0, 0]) - 1])


@pytest.mark.parametrize("args, message", [
    (["--steps", "2"], "--steps must be >= 3"),  # OneCycleLR: an empty phase, ZeroDivisionError after loading
    (["--move-noise", "-0.01"], "--move-noise must be >= 0"),
    (["--offset-weight", "nan"], "--offset-weight must be >= 0"),
    (["--dagger", "1.5", "--phases", "all"], "--dagger must be a fraction in [0, 1]"),
    (["--dagger", "0.5"], "--dagger needs --phases all"),
    (["--dagger", "0.5", "--phases", "all", "--dagger-envs", "0"], "--dagger-envs must be >= 1"),
])
def test_bad_arguments_are_refused_before_loading(monkeypatch, capsys, tmp_path, args, message):
    import grounding_pretrain

    monkeypatch.setattr(sys, "argv", ["grounding_pretrain.py", "--init", str(tmp_path / "missing"),
                                      "--out", str(tmp_path / "out"), *args])
    with pytest.raises(SystemExit) as exit_info:
        grounding_pretrain.main()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
