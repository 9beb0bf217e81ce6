"""A small byte-level BPE text tokenizer, trained locally on an instruction corpus.

Presets are built from configs with no download, so they need a tokenizer that is too: one trained
in a second on the instructions the robot will read. It is saved as a plain `tokenizers` file
(tokenizer.json) that the robot loads with `tokenizers.Tokenizer.from_file` (no transformers), and
wrapped as a `PreTrainedTokenizerFast` on the torch side.

[Contract] Both sides encode `prompt.text(instruction)` with `add_special_tokens=False` to the same
ids: the tokenizer has no post-processor (PromptFormat adds bos itself) and byte-level BPE never
needs an unknown token, so there is nothing for either side to add.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rt2edge.errors import ConfigError

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
IMAGE_TOKEN = "<image>"
# [Contract] special tokens take ids 0..3 in this order (the trainer adds them first).
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN)
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # the specials plus the 256 byte symbols


def _texts(corpus: Iterable[str]) -> Iterator[str]:
    for i, text in enumerate(corpus):
        if not isinstance(text, str):
            raise ConfigError("corpus", f"item {i} is {type(text).__name__}, expected str")
        yield text


def train_text_tokenizer(corpus: Iterable[str], vocab_size: int = 1024,
                         min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `corpus`; the result may be smaller than `vocab_size` when the
    corpus runs out of merges that occur `min_frequency` times."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError("vocab_size", f"must be >= {MIN_VOCAB_SIZE} (specials + 256 bytes), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    # No prefix space: the first word of a prompt encodes the same wherever the prompt is cut.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodes: no <unk>
        show_progress=False,
    )
    texts = list(_texts(corpus))
    if not texts:
        raise ConfigError("corpus", "is empty; the tokenizer needs text to train on")
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A `tokenizers.Tokenizer` with our special tokens -> the transformers wrapper."""
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        raise ConfigError("text_tokenizer", f"lacks special tokens {missing}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",  # generation pads on the left; training batches pad themselves
        model_max_length=4096,
    )


def image_token_id(tokenizer: PreTrainedTokenizerFast) -> int:
    """The id of the image placeholder token; a tokenizer without one cannot feed a VLM."""
    token = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ConfigError("text_tokenizer", f"has no image token {token!r}")
    return int(token_id)


def token_counts(tokenizer: PreTrainedTokenizerFast, corpus: Iterable[str], vocab_size: int) -> np.ndarray:
    """How often each id occurs when `corpus` is tokenized (no special tokens added); feeds the
    RT-2 `least_frequent` action-token choice."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    texts = list(_texts(corpus))
    if not texts:
        return counts
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        arr = np.asarray(ids, dtype=np.int64)
        counts += np.bincount(arr[arr < vocab_size], minlength=vocab_size)
    return counts
