"""Session fixtures shared by the model, export and quantize tests (helpers in tiny_policies.py).

The tiny LLaVA-style checkpoint and its export are built once per session (an export traces
three graphs and validates them, ~5-10 s on one core) and only read by the tests: a test that
changes an artifact copies it first. torch and transformers are imported inside the fixtures,
so collecting the torch-free tests stays lean.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    """The text tokenizer of the tiny policies (BPE, vocab 400, default corpus). A module that
    needs another one defines its own `tokenizer` fixture."""
    from tiny_policies import text_tokenizer

    return text_tokenizer()


@pytest.fixture(scope="session")
def tiny_llava_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """`VLAPolicy.save_pretrained` of the tiny LLaVA-style policy (tiny_policies.TINY, seed 0)."""
    from tiny_policies import build_tiny_policy

    path = tmp_path_factory.mktemp("tiny-llava") / "ckpt"
    build_tiny_policy(tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llava_artifact(tmp_path_factory, tiny_llava_checkpoint) -> Path:
    """`export.run` of the tiny LLaVA-style checkpoint for the default target (onnxruntime:
    fused decoder with com.microsoft contrib ops), validated on 4 observations."""
    import export

    out = tmp_path_factory.mktemp("tiny-llava-artifact") / "fp32"
    return export.run(export.ExportConfig(checkpoint=tiny_llava_checkpoint, out=out, validate_frames=4))
