"""Tiny VLA policies built from configs (no network), for the model, export and quantize tests.

Plain functions; the session fixtures built on them (the shared tokenizer, a tiny LLaVA-style
checkpoint and its export) are in conftest.py.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from rt2edge.models.families import SpecialTokenIds, VLMSize, build_model, get_family
from rt2edge.models.policy import VLAPolicy
from rt2edge.models.presets import default_corpus
from rt2edge.models.text_tokenizer import train_text_tokenizer

# 32-pixel images, a 1-layer vision tower and 2 decoder layers with grouped-query attention
# (4 heads, 2 KV heads): a few seconds per export on one core.
TINY = dict(vision_hidden_size=32, vision_layers=1, vision_heads=2, vision_intermediate_size=64,
            hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
            image_size=32, patch_size=8)
TINY_LLAVA = VLMSize(**TINY)


def text_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the default corpus."""
    return train_text_tokenizer(default_corpus(), vocab_size=vocab_size)


def special_tokens(tokenizer: PreTrainedTokenizerFast, vocab_size: int | None = None) -> SpecialTokenIds:
    """The ids `build_model` needs, for an embedding table of `vocab_size` rows (default: the
    tokenizer's length)."""
    return SpecialTokenIds(len(tokenizer) if vocab_size is None else vocab_size, tokenizer.pad_token_id,
                           tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<image>"))


def build_tiny_policy(tokenizer: PreTrainedTokenizerFast, family: str = "llava", size: VLMSize = TINY_LLAVA, *,
                      seed: int = 0, **kwargs) -> VLAPolicy:
    """A randomly initialised (`seed`) policy of `family` and `size`; `kwargs` go to
    `VLAPolicy.from_model` (statistics, action, corpus)."""
    model = build_model(get_family(family), size, special_tokens(tokenizer), seed=seed)
    return VLAPolicy.from_model(model, tokenizer, **kwargs)
