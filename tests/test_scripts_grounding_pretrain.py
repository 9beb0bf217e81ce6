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
from grounding_pretrain import FrameSource, pointer_logits  # noqa: E402

from rt2edge.sim.world import COLOURS  # noqa: E402
from tiny_policies import build_tiny_policy  # noqa: E402


def test_pointer_labels_sit_on_the_named_objects_colour():
    grid, size = 8, 64
    images, texts, actions, patches = FrameSource(("pick",), (2,), size, grid, seed=4).batch(24)
    assert images.shape == (24, size, size, 3) and actions.shape == (24, 8) and len(texts) == 24
    hits = 0
    for image, text, patch in zip(images, texts, patches.tolist()):
        named = next(c for c in COLOURS if f" {c} " in f" {text} ")
        cell = image[patch // grid * 8:(patch // grid + 1) * 8, patch % grid * 8:(patch % grid + 1) * 8]
        distance = np.abs(cell.reshape(-1, 3).astype(float) - COLOURS[named]).sum(axis=1)
        hits += bool((distance < 60).any())  # some pixel of the patch has the named colour
    assert hits >= 0.9 * len(patches)


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


def test_too_few_steps_for_the_one_cycle_schedule_are_refused_before_loading(monkeypatch, capsys, tmp_path):
    import grounding_pretrain

    # 2 steps leave OneCycleLR an empty phase (ZeroDivisionError after the model loaded)
    monkeypatch.setattr(sys, "argv", ["grounding_pretrain.py", "--init", str(tmp_path / "missing"),
                                      "--out", str(tmp_path / "out"), "--steps", "2"])
    with pytest.raises(SystemExit) as exit_info:
        grounding_pretrain.main()
    assert exit_info.value.code == 2 and "--steps must be >= 3" in capsys.readouterr().err
