"""The teacher's side of a cache: load it (one device or sharded with device_map) and run it on
a batch of frames, teacher-forced on the ground-truth action tokens (RT-2 / OpenVLA training)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def load_teacher(path: str, dtype: str = "float32", device_map: str | None = None,
                 device: Any = None) -> Any:
    """VLAPolicy.from_pretrained, in eval mode. With `device_map` the weights are placed by
    Hugging Face's big-model loading (accelerate hooks move activations between devices);
    without it the whole teacher goes to `device`."""
    import torch

    from rt2edge.models import VLAPolicy

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if device_map is not None:
        kwargs["device_map"] = device_map
    policy = VLAPolicy.from_pretrained(path, **kwargs)
    if device_map is None and device is not None:
        policy.model.to(device)
    return policy.eval()


def teacher_targets(policy: Any, frames: Sequence[Any], greedy: bool) -> dict[str, np.ndarray]:
    """Frames (image, instruction, action) -> gt_bins (n, D), log_probs float32 (n, D, n_bins)
    and, if `greedy`, greedy_bins (n, D): the policy's free-running constrained decode."""
    import torch

    tok = policy.action_tokenizer
    images = np.stack([f.image for f in frames])
    texts = [f.instruction for f in frames]
    gt_bins = tok.encode_bins(np.stack([f.action for f in frames]))
    batch = policy.build_action_token_batch(images, texts, tok.token_ids[gt_bins])
    with torch.inference_mode():
        logits = policy.action_logits(batch)
    out = {"gt_bins": gt_bins,
           "log_probs": torch.log_softmax(logits.float(), dim=-1).cpu().numpy()}
    if greedy:
        out["greedy_bins"] = tok.ids_to_bins(policy.predict_action_tokens(images, texts))
    return out
