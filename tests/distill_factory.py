"""Tiny teachers, students and datasets for the distillation tests (built from configs, no network).

The teacher and the students have different text tokenizers on purpose (vocabulary sizes 512,
300 and 400 on the same corpus): the cache must be keyed by frame and bins, never by token id.
"""

from __future__ import annotations

from pathlib import Path

from rt2edge.models import presets
from rt2edge.models.families import VLMSize

_VISION = dict(vision_hidden_size=64, vision_heads=2, vision_intermediate_size=128, image_size=32, patch_size=8)

TINY_PRESETS = {
    # 4 decoder + 2 vision layers, so that keep_every=2 has layers to drop in both
    "kd-teacher": presets.Preset("llava", VLMSize(
        **_VISION, vision_layers=2, hidden_size=64, num_layers=4, num_heads=2, num_kv_heads=1,
        intermediate_size=128), text_vocab_size=512),
    "kd-student": presets.Preset("llava", VLMSize(
        **_VISION, vision_layers=1, hidden_size=32, num_layers=2, num_heads=1, num_kv_heads=1,
        intermediate_size=64), text_vocab_size=300),
    "kd-pali": presets.Preset("paligemma", VLMSize(
        **_VISION, vision_layers=1, hidden_size=32, num_layers=1, num_heads=1, num_kv_heads=1,
        intermediate_size=64, decoder="gemma", tie_word_embeddings=True), text_vocab_size=400),
}


def register_presets() -> None:
    """Add the tiny presets to the registry (tests: monkeypatch; subprocesses: call this)."""
    presets.PRESETS.update(TINY_PRESETS)


def make_dataset(out: Path, episodes: int = 4) -> str:
    from rt2edge.data import GenerateConfig, generate

    generate(GenerateConfig(out=str(out), episodes=episodes, seed=0))
    return str(out)


def make_teacher(out: Path, data: str, seed: int = 0, logit_scale: float = 6.0) -> str:
    """A random tiny teacher with the dataset's action statistics, saved as a checkpoint.

    Its action rows of the LM head are redrawn at random with logits of std ~`logit_scale`: the
    appended rows start as near-copies of the mean row (mean resizing), which makes every bin
    equally likely and leaves nothing to distill; redrawn rows give peaked, input-dependent bins.
    """
    import torch

    from rt2edge.data import EpisodeDataset

    register_presets()
    stats = EpisodeDataset(data).action_statistics()
    policy = presets.build_preset("kd-teacher", statistics={Path(data).name: stats}, seed=seed)
    head = policy.model.get_output_embeddings().weight
    ids = torch.as_tensor(policy.action_tokenizer.allowed_ids)
    rows = torch.randn(len(ids), head.shape[1], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        head[ids] = rows * logit_scale / head.shape[1] ** 0.5
    policy.save_pretrained(out)
    return str(out)


def run_torchrun(script: Path, args: list[str], timeout: float = 300.0) -> None:
    """`torchrun --standalone --nproc_per_node 2 script args` on CPU (gloo), in its own process
    group so that on a timeout the workers die with torchrun instead of being orphaned."""
    import os
    import signal
    import subprocess

    repo = str(Path(__file__).parent.parent)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([repo, str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(["torchrun", "--standalone", "--nproc_per_node", "2", str(script), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed ({proc.returncode}):\n{stderr[-3000:]}")
