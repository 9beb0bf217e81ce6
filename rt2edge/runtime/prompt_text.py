"""Instruction -> the prompt's text embeddings around the image tokens (robot side, no torch).

`PromptText.input_ids` is the validation: the instruction is tokenized as the torch side does and
refused (InputError naming `instruction`) when it is not valid unicode, holds special tokens
(`<image>` in a text would add a placeholder) or makes the prompt too long. `embeds` runs the
artifact's embed graph on the ids on either side of the image tokens, once per instruction.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from rt2edge.errors import ConfigError, InputError
from rt2edge.observation import PromptFormat
from rt2edge.optional import require


def check_text_cache_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("text_cache_size", f"must be an int >= 1, got {value!r}")
    return value


class PromptText:
    def __init__(self, tokenizer_file: Path, prompt: PromptFormat, embed: Any, cache_size: int = 16):
        check_text_cache_size(cache_size)
        tokenizers = require("tokenizers", extra="cpu", purpose="tokenizing instructions")
        self.tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        # A tokenizer.json may carry truncation (a long instruction silently cut) or padding (pad
        # ids inside the prompt): the prompt is built from the whole text, unpadded, as on the
        # torch side.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        # The image placeholder too, special or not: an instruction must never add image slots.
        self.special_ids = _special_token_ids(self.tokenizer) | {prompt.image_token_id}
        self.prompt = prompt
        self._embed = embed
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = cache_size

    def __contains__(self, text: str) -> bool:
        return text in self._cache

    def pop(self, text: str) -> None:
        self._cache.pop(text, None)

    def input_ids(self, text: str) -> np.ndarray:
        """The prompt's ids for `text` (image placeholders included); InputError if refused."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError("instruction", f"is not valid unicode: {exc.reason}") from exc
        ids = self.tokenizer.encode(self.prompt.text(text), add_special_tokens=False).ids
        special = self.special_ids.intersection(ids)
        if special:  # same refusal as the torch side: "<image>" in a text would add a placeholder
            names = sorted(self.tokenizer.id_to_token(i) for i in special)
            raise InputError("instruction", f"contains special tokens {names}")
        return self.prompt.build_input_ids(ids)

    def embeds(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """[1, T, D] embeddings of the prompt's ids before and after its image tokens (embedded
        once per text; the vision embeddings take the image tokens' place)."""
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        input_ids = self.input_ids(text)
        # [Contract] PromptFormat puts its num_image_tokens image placeholders in one run (first,
        # or after the instruction): the ids on either side are embedded, the vision fills the run.
        start = int(np.argmax(input_ids == self.prompt.image_token_id))
        end = start + self.prompt.num_image_tokens
        embeds = self._embed.run({"input_ids": np.concatenate([input_ids[:start], input_ids[end:]])[None]},
                                 ["inputs_embeds"])[0].astype(np.float32)
        parts = (embeds[:, :start], embeds[:, start:])
        self._cache[text] = parts
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return parts


def _special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special added tokens (bos, eos, pad, <image>, ...), except the unknown
    token: an unknown word in an instruction is not an attempt to inject prompt structure."""
    unk = getattr(tokenizer.model, "unk_token", None)
    return {i for i, tok in tokenizer.get_added_tokens_decoder().items()
            if tok.special and tok.content != unk}
