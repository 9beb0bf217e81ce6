"""bench.sources: what a checkpoint's size counts."""

from __future__ import annotations

from bench.sources import CHECKPOINT_MARKER, Source


def test_checkpoint_size_is_the_model_not_the_training_state(tmp_path):
    # A finished `distill finetune` folder: the model files at the top, the resumable optimizer
    # state below training_state/ (larger than the weights, never shipped to a robot).
    (tmp_path / CHECKPOINT_MARKER).write_bytes(b"{}")
    (tmp_path / "model.safetensors").write_bytes(b"w" * 1000)
    state = tmp_path / "training_state" / "step-00000010"
    state.mkdir(parents=True)
    (state / "optimizer.bin").write_bytes(b"o" * 5000)
    assert Source(tmp_path, "checkpoint", "ck").size_bytes() == 1002
