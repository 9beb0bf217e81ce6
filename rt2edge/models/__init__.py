"""Torch side: VLA policies built on Hugging Face VLMs (the `toolkit` extra).

    from rt2edge.models import VLAPolicy, build_preset
    policy = build_preset("teacher")                 # from configs, no download
    policy.predict_action(image, "pick up the red block")
    policy.save_pretrained("ckpt"); VLAPolicy.from_pretrained("ckpt")

Names are resolved on first use, so `import rt2edge.models.checkpoint` (json only) does not pay
for importing torch and transformers.
"""

from __future__ import annotations

from rt2edge.lazy import lazy_getattr

_EXPORTS = {
    "VLAPolicy": "rt2edge.models.policy",
    "ParallelVLAPolicy": "rt2edge.models.parallel",
    "build_preset": "rt2edge.models.presets",
    "PRESETS": "rt2edge.models.presets",
    "default_corpus": "rt2edge.models.presets",
    "ActionVocabConfig": "rt2edge.models.action_vocab",
    "VLMSize": "rt2edge.models.families",
    "VLMFamily": "rt2edge.models.families",
    "FAMILIES": "rt2edge.models.families",
    "register_family": "rt2edge.models.families",
    "get_family": "rt2edge.models.families",
    "train_text_tokenizer": "rt2edge.models.text_tokenizer",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr("rt2edge.models", _EXPORTS)
