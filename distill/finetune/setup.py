"""The pieces a fine-tuning run is assembled from: the policy, its batches, the optimizer and
schedule, the resume point. Each is a plain function, testable without a training loop."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distill.finetune import checkpointing, losses
from distill.finetune.config import FinetuneConfig, TrainingConfig
from distill.finetune.data import RawItem
from rt2edge.atomic import atomic_write_json
from rt2edge.errors import ConfigError

log = logging.getLogger("rt2edge.distill.finetune")


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(torch: Any, model: Any, cfg: TrainingConfig) -> Any:
    # No weight decay on biases, norms and other vectors (the usual transformer recipe).
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def build_policy(cfg: FinetuneConfig, statistics: Any, dataset_name: str) -> Any:
    if cfg.init is not None:
        from rt2edge.models import VLAPolicy

        policy = VLAPolicy.from_pretrained(cfg.init)
        ours = policy.action_tokenizer.statistics
        if ours is not None and not np.allclose(ours.q01, statistics.q01, atol=1e-6):
            log.warning("the --init checkpoint normalizes actions with its own statistics, not this "
                        "dataset's; keep them only if the datasets share an action space")
        return policy
    from rt2edge.models import build_preset
    # The preset's default corpus is the train-split instructions + VQA text: held-out
    # instructions stay unseen (their words all occur in train, see rt2edge.sim.language).
    return build_preset(cfg.preset,
                        statistics={dataset_name: statistics}, seed=cfg.seed)


def model_batch(policy: Any, items: list[RawItem]) -> tuple[dict[str, Any], Any]:
    robot = [x for x in items if not x.is_vqa]
    vqa = [x for x in items if x.is_vqa]
    parts = []
    if robot:
        parts.append(policy.build_training_batch(np.stack([x.image for x in robot]), [x.text for x in robot],
                                                 np.stack([x.action for x in robot])))
    if vqa:
        parts.append(policy.build_text_batch(np.stack([x.image for x in vqa]), [x.text for x in vqa],
                                             [x.answer for x in vqa]))
    batch = losses.concat_batches(parts, policy.text_tokenizer.pad_token_id)
    import torch

    is_vqa = torch.tensor([False] * len(robot) + [True] * len(vqa))
    return batch, is_vqa


def reset_accelerate_state_if_single_process() -> None:
    """accelerate keeps its state in process-wide singletons that refuse a second, different
    `Accelerator` (e.g. another mixed_precision); a library call or a test may run several
    trainings in one process. Launched jobs (WORLD_SIZE > 1) run one training and keep theirs."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def freeze_unreached_parameters(module: Any, probe: Callable[[], Any]) -> list[str]:
    """Stop training the parameters of `module` that `probe()`'s output does not depend on, and
    return their names.

    E.g. LLaVA reads the vision tower's last hidden state *before* SigLIP's post-layernorm, so
    that norm never gets a gradient. DDP refuses such parameters (or needs the slower
    find_unused_parameters=True); AdamW would skip them anyway, so freezing them changes nothing
    else. Found by one probe forward/backward (RNG forked, so the run's random stream is intact).
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        probe().float().sum().backward()
    unused = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in module.named_parameters():
        p.grad = None
        if name in unused:
            p.requires_grad_(False)
    return unused


def full_head_probe(policy: Any, items: list[RawItem]) -> Any:
    """A co-fine-tuning probe output: the full LM head on a mixed batch."""
    batch, _ = model_batch(policy, items)
    inputs = policy.model_inputs(batch)
    labels = inputs.pop("labels")
    logits = policy.model(**inputs, use_cache=False).logits
    # every logit row, not only the labelled ones: a parameter is "used" if any output needs it
    return logits.float().mean() + 0.0 * labels.sum()


def freeze_unused_parameters(policy: Any, items: list[RawItem]) -> list[str]:
    """`freeze_unreached_parameters` of the policy's model under co-fine-tuning."""
    return freeze_unreached_parameters(policy.model, lambda: full_head_probe(policy, items))


DATA_FINGERPRINT_FILE = "data_fingerprint.json"


def pin_dataset(out: Path, dataset: Any, data: str, resuming: bool, write: bool) -> None:
    """Record the dataset's content fingerprint in the run folder; on a resume, refuse a dataset
    whose fingerprint differs (a run from before this file existed is pinned from now on)."""
    from distill.cache.fingerprint import dataset_fingerprint

    path = out / DATA_FINGERPRINT_FILE
    current = dataset_fingerprint(dataset)
    if resuming and path.is_file():
        recorded = json.loads(path.read_text())
        if recorded.get("fingerprint") != current:
            raise ConfigError("data", f"{data} is not the dataset this run started on ({recorded.get('frames')} "
                                      f"frames then, {len(dataset)} now; content fingerprints differ): resume "
                                      "on that dataset, or start a new --out")
    elif write:
        atomic_write_json(path, {"fingerprint": current, "frames": len(dataset), "data": str(data)})


def resume_point(cfg: TrainingConfig, out: Path) -> Path | None:
    found = checkpointing.latest_checkpoint(out)
    if found is not None and cfg.resume == "never":
        raise ConfigError("resume", f"{out} already holds training checkpoints ({found.name}); "
                                    "resume it (--resume) or choose another --out")
    if found is None and cfg.resume == "require":
        raise ConfigError("resume", f"no training checkpoint to resume in {out}")
    saved = out / cfg.CONFIG_FILENAME
    if found is not None and saved.is_file():
        cfg.check_resumable_from(json.loads(saved.read_text()))
    return found
