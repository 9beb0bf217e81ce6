"""Named, download-free VLA policies: a LLaVA-style teacher, two students, a PaliGemma-style model.

Every preset is built from configs: a byte-level BPE tokenizer trained on the instruction corpus,
a randomly initialized HF VLM, RT-2's action space (7 dims + terminate, 256 bins) appended to the
vocabulary. Sizes keep head_dim at 32 or 64 so the attention exports cleanly to ONNX / TensorRT.

  preset          family     vision (SigLIP, 64x64, patch 8 -> 64 tokens)   decoder
  teacher         llava      256 wide, 4 layers                             Llama 384 x 6, GQA 6/2
  student-m       llava      192 wide, 3 layers                             Llama 256 x 6, GQA 4/2
  student-s       llava      128 wide, 2 layers                             Llama 128 x 4, GQA 4/2
  paligemma-tiny  paligemma  128 wide, 2 layers                             Gemma 256 x 4, MQA 4/1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from rt2edge.artifact import DECODINGS
from rt2edge.errors import ConfigError
from rt2edge.models.action_vocab import ActionVocabConfig
from rt2edge.models.families import SpecialTokenIds, VLMSize, build_model, get_family
from rt2edge.models.policy import VLAPolicy
from rt2edge.models.text_tokenizer import train_text_tokenizer
from rt2edge.observation import RT2_PROMPT_TEMPLATE


@dataclass(frozen=True)
class Preset:
    family: str
    size: VLMSize
    text_vocab_size: int = 1024  # an upper bound: a small corpus yields fewer merges
    description: str = ""
    instruction_first: bool = False  # the prompt's layout (PromptFormat.instruction_first)


PRESETS: dict[str, Preset] = {
    "teacher": Preset("llava", VLMSize(
        vision_hidden_size=256, vision_layers=4, vision_heads=4, vision_intermediate_size=1024,
        hidden_size=384, num_layers=6, num_heads=6, num_kv_heads=2, intermediate_size=1024),
        description="LLaVA-style teacher, ~13M parameters"),
    "student-m": Preset("llava", VLMSize(
        vision_hidden_size=192, vision_layers=3, vision_heads=3, vision_intermediate_size=768,
        hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=2, intermediate_size=768),
        description="LLaVA-style student, ~7M parameters"),
    "student-s": Preset("llava", VLMSize(
        vision_hidden_size=128, vision_layers=2, vision_heads=4, vision_intermediate_size=512,
        hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512),
        description="LLaVA-style student, ~2M parameters"),
    "paligemma-tiny": Preset("paligemma", VLMSize(
        vision_hidden_size=128, vision_layers=2, vision_heads=4, vision_intermediate_size=512,
        hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=1, intermediate_size=768,
        decoder="gemma", tie_word_embeddings=True),
        description="PaliGemma-style prefix-LM, ~4M parameters"),
}

# A small built-in tabletop instruction corpus, used when no corpus is given (the simulator's
# task corpus replaces it once wired in). Deterministic: the tokenizer trained on it is too.
def default_corpus() -> list[str]:
    """The built-in simulator's seen instructions and VQA text: what the presets are trained on.

    Held-out instructions are left out on purpose (their words all occur in the seen ones), so a
    held-out evaluation measures generalization, not a tokenizer that has seen the test phrasing.
    """
    from rt2edge.sim import instruction_corpus  # torch-free; imported here to keep presets lazy

    return instruction_corpus("train")


def build_preset(name: str, corpus: Iterable[str] | None = None, statistics: Any = None,
                 seed: int = 0, action: ActionVocabConfig = ActionVocabConfig(),
                 decoding: str = "autoregressive") -> VLAPolicy:
    """A preset policy, randomly initialized from config (no download).

    corpus: instructions the text tokenizer is trained on (default: `default_corpus()`).
    statistics: None (actions already in [-1, 1], no normalization), one ActionStatistics or
    {dataset name: ActionStatistics} (q01_q99 normalization; the first is the default dataset).
    seed: fixes the weights; the tokenizer depends only on the corpus.
    decoding: "autoregressive" (one decoder pass per action token) or "parallel" (one pass per
    action: rt2edge.models.parallel.ParallelVLAPolicy, slot rows seeded by `seed` too).
    """
    if decoding not in DECODINGS:
        raise ConfigError("decoding", f"must be one of {DECODINGS}, got {decoding!r}")
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ConfigError("preset", f"unknown preset {name!r}; available: {sorted(PRESETS)}") from None
    instructions = default_corpus() if corpus is None else list(corpus)
    # The tokenizer sees the prompts as the policy writes them, so the template's words merge too.
    texts = instructions + [RT2_PROMPT_TEMPLATE.format(instruction=i) for i in instructions]
    tokenizer = train_text_tokenizer(texts, vocab_size=preset.text_vocab_size)
    tokens = SpecialTokenIds(vocab_size=len(tokenizer), pad=tokenizer.pad_token_id,
                             bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
                             image=tokenizer.convert_tokens_to_ids("<image>"))
    model = build_model(get_family(preset.family), preset.size, tokens, seed=seed)
    # `append` draws the new embedding rows at random: seed them too, without touching the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = VLAPolicy.from_model(model, tokenizer, action=action, corpus=texts, statistics=statistics,
                                      instruction_first=preset.instruction_first)
    if decoding == "parallel":
        from rt2edge.models.parallel import ParallelVLAPolicy

        return ParallelVLAPolicy.from_autoregressive(policy, seed=seed, copy_model=False)
    return policy
