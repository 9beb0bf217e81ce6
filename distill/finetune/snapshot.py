"""A checkpoint from an unfinished run: training_state/step-N -> a `save_pretrained` folder.

A long run publishes its checkpoint only at the end; this turns any saved step into a normal
checkpoint (loadable by VLAPolicy.from_pretrained, `rt2edge eval`, `rt2edge export`) without
touching the run, so progress can be scored in closed loop while training continues.
"""

from __future__ import annotations

from pathlib import Path

from distill.finetune import checkpointing, setup
from distill.finetune.config import FinetuneConfig
from distill.finetune.run_control import publish_checkpoint
from rt2edge.errors import ArtifactError

ACCELERATE_MODEL_FILE = "model.safetensors"  # what accelerate's save_state writes for model 0


def snapshot(run_dir: str | Path, out: str | Path, step: int | None = None) -> Path:
    """Write the model of `run_dir` at `step` (default: the newest checkpoint) to `out`."""
    from safetensors.torch import load_file

    from rt2edge.data import EpisodeDataset

    run_dir, out = Path(run_dir), Path(out)
    dirs = {checkpointing.TrainerState.load(d).step: d for d in checkpointing.checkpoint_dirs(run_dir)}
    if not dirs:
        raise ArtifactError(f"{run_dir}: no training checkpoints (training_state/step-*)")
    chosen = max(dirs) if step is None else step
    if chosen not in dirs:
        raise ArtifactError(f"{run_dir}: no checkpoint of step {step}; have {sorted(dirs)}")
    cfg = FinetuneConfig.load(run_dir)
    robot = EpisodeDataset(cfg.data)
    # The same construction as the run (tokenizer, action statistics, embeddings), then its weights.
    policy = setup.build_policy(cfg, robot.action_statistics(), Path(cfg.data).resolve().name or "default")
    weights = load_file(str(dirs[chosen] / ACCELERATE_MODEL_FILE))
    # DDP-wrapped models are saved with a "module." prefix.
    weights = {k.removeprefix("module."): v for k, v in weights.items()}
    missing, unexpected = policy.model.load_state_dict(weights, strict=False)
    tied = _tied_names(policy.model)
    if unexpected or set(missing) - tied:
        raise ArtifactError(f"{dirs[chosen]}: weights do not fit the model built from its config "
                            f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]})")
    out.mkdir(parents=True, exist_ok=True)
    publish_checkpoint(policy, out)
    return out


def _tied_names(model) -> set[str]:
    """Names of parameters that share storage with an earlier one (saved once by safetensors)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            tied.add(name)
            tied.add(seen[ptr])  # either name may be the one that was dropped
        else:
            seen[ptr] = name
    return tied
