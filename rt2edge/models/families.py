"""VLM families: how to build, feed and dissect each kind of Hugging Face vision-language model.

A family is registered once (`@register_family`) and looked up by name or by the `model_type` of
a loaded config, so the policy code never branches on the architecture. Sub-configs (vision tower,
decoder) are registered the same way, so a new tower or decoder is one function, not an `elif`.

  llava      LlavaForConditionalGeneration: SigLIP or CLIP tower -> MLP projector -> Llama / Qwen2,
             causal attention over the whole sequence.
  paligemma  PaliGemmaForConditionalGeneration: SigLIP tower -> linear projector -> Gemma, prefix-LM:
             image + prompt attend bidirectionally (token_type_ids == 0), the target causally.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn
from transformers import (
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    GemmaConfig,
    LlamaConfig,
    LlavaConfig,
    PaliGemmaConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    SiglipVisionConfig,
)

from rt2edge.checks import check_known_keys
from rt2edge.errors import ConfigError
from rt2edge.registry import Registry


@dataclass(frozen=True)
class VLMSize:
    """The handful of numbers that size a VLM; each family turns it into a full HF config."""

    vision_hidden_size: int
    vision_layers: int
    vision_heads: int
    vision_intermediate_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    image_size: int = 64
    patch_size: int = 8
    vision_tower: str = "siglip"
    decoder: str = "llama"
    head_dim: int | None = None  # None: hidden_size // num_heads
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ConfigError(f"size.{f.name}", f"must be >= 1, got {value}")
        if self.image_size % self.patch_size:
            raise ConfigError("size.patch_size", f"{self.patch_size} does not divide image_size {self.image_size}")
        if self.vision_hidden_size % self.vision_heads:
            raise ConfigError("size.vision_heads", f"{self.vision_heads} does not divide {self.vision_hidden_size}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError("size.num_heads", f"{self.num_heads} does not divide {self.hidden_size}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("size.num_kv_heads", f"{self.num_kv_heads} does not divide num_heads {self.num_heads}")
        if self.vision_tower not in VISION_TOWERS:
            raise ConfigError("size.vision_tower", f"must be one of {sorted(VISION_TOWERS)}, got {self.vision_tower!r}")
        if self.decoder not in DECODERS:
            raise ConfigError("size.decoder", f"must be one of {sorted(DECODERS)}, got {self.decoder!r}")

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VLMSize:
        check_known_keys(cls, data)
        return cls(**data)


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the text tokenizer's special tokens; the decoder config and the prompt need them."""

    vocab_size: int
    pad: int
    bos: int
    eos: int
    image: int


# ------------------------------------------------------------------------------ sub-config registries
VISION_TOWERS: dict[str, Callable[[VLMSize], PretrainedConfig]] = {}
DECODERS: dict[str, Callable[[VLMSize, SpecialTokenIds], PretrainedConfig]] = {}


def register_vision_tower(name: str):
    def wrap(fn: Callable[[VLMSize], PretrainedConfig]):
        VISION_TOWERS[name] = fn
        return fn
    return wrap


def register_decoder(name: str):
    def wrap(fn: Callable[[VLMSize, SpecialTokenIds], PretrainedConfig]):
        DECODERS[name] = fn
        return fn
    return wrap


def _vision_kwargs(size: VLMSize) -> dict[str, Any]:
    return dict(hidden_size=size.vision_hidden_size, intermediate_size=size.vision_intermediate_size,
                num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
                image_size=size.image_size, patch_size=size.patch_size)


@register_vision_tower("siglip")
def _siglip(size: VLMSize) -> PretrainedConfig:
    # No attention-pooling head: VLMs read the patch features, a head would be dead weight.
    return SiglipVisionConfig(**_vision_kwargs(size), vision_use_head=False)


@register_vision_tower("clip")
def _clip(size: VLMSize) -> PretrainedConfig:
    return CLIPVisionConfig(**_vision_kwargs(size))


def _decoder_kwargs(size: VLMSize, tokens: SpecialTokenIds) -> dict[str, Any]:
    return dict(vocab_size=tokens.vocab_size, hidden_size=size.hidden_size,
                intermediate_size=size.intermediate_size, num_hidden_layers=size.num_layers,
                num_attention_heads=size.num_heads, num_key_value_heads=size.num_kv_heads,
                max_position_embeddings=size.max_position_embeddings,
                tie_word_embeddings=size.tie_word_embeddings,
                pad_token_id=tokens.pad, bos_token_id=tokens.bos, eos_token_id=tokens.eos)


@register_decoder("llama")
def _llama(size: VLMSize, tokens: SpecialTokenIds) -> PretrainedConfig:
    return LlamaConfig(**_decoder_kwargs(size, tokens), head_dim=size.resolved_head_dim)


@register_decoder("qwen2")
def _qwen2(size: VLMSize, tokens: SpecialTokenIds) -> PretrainedConfig:
    return Qwen2Config(**_decoder_kwargs(size, tokens))


@register_decoder("gemma")
def _gemma(size: VLMSize, tokens: SpecialTokenIds) -> PretrainedConfig:
    return GemmaConfig(**_decoder_kwargs(size, tokens), head_dim=size.resolved_head_dim)


# ------------------------------------------------------------------------------ families
class VLMFamily:
    """What the policy needs to know about one HF VLM architecture. Subclass and register."""

    name: ClassVar[str]
    model_type: ClassVar[str]  # HF `config.model_type`
    vision_towers: ClassVar[tuple[str, ...]]
    decoders: ClassVar[tuple[str, ...]]
    # Prefix-LM families read token_type_ids (0 = bidirectional prefix, 1 = causal target).
    prefix_lm: ClassVar[bool] = False
    # Text appended to every prompt, between the instruction and the target (PaliGemma's "\n").
    prompt_suffix: ClassVar[str] = ""

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The model inputs a batch carries for this family (labels aside)."""
        base = ("input_ids", "attention_mask", "pixel_values")
        return base + (("token_type_ids",) if self.prefix_lm else ())

    def check_size(self, size: VLMSize) -> None:
        if size.vision_tower not in self.vision_towers:
            raise ConfigError("size.vision_tower",
                              f"family {self.name!r} supports {self.vision_towers}, got {size.vision_tower!r}")
        if size.decoder not in self.decoders:
            raise ConfigError("size.decoder",
                              f"family {self.name!r} supports {self.decoders}, got {size.decoder!r}")

    def build_config(self, size: VLMSize, tokens: SpecialTokenIds) -> PretrainedConfig:
        raise NotImplementedError

    def num_image_tokens(self, config: PretrainedConfig) -> int:
        vision = config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    def image_size(self, config: PretrainedConfig) -> int:
        return int(config.vision_config.image_size)

    def backbone(self, model: PreTrainedModel) -> nn.Module:
        """The model without its LM head: returns last_hidden_state (B, T, D)."""
        return model.model

    def parameter_groups(self, model: PreTrainedModel) -> dict[str, nn.Module]:
        """Modules counted as vision / projector / language / head, in that order."""
        inner = model.model
        return {"vision": inner.vision_tower, "projector": inner.multi_modal_projector,
                "language": inner.language_model, "head": model.get_output_embeddings()}


FAMILIES: Registry[VLMFamily] = Registry("VLM family", field="family")
register_family = FAMILIES.register_class("name")
get_family = FAMILIES.get


def family_for_config(config: PretrainedConfig) -> VLMFamily:
    for family in FAMILIES.values():
        if family.model_type == config.model_type:
            return family
    raise ConfigError("family", f"no registered family for model_type {config.model_type!r}; "
                                f"registered: {sorted(f.model_type for f in FAMILIES.values())}")


@register_family
class LlavaFamily(VLMFamily):
    name = "llava"
    model_type = "llava"
    vision_towers = ("siglip", "clip")
    decoders = ("llama", "qwen2")

    def build_config(self, size: VLMSize, tokens: SpecialTokenIds) -> PretrainedConfig:
        self.check_size(size)
        # CLIP prepends a CLS token that LLaVA drops ("default"); SigLIP has none ("full").
        strategy = "default" if size.vision_tower == "clip" else "full"
        return LlavaConfig(
            vision_config=VISION_TOWERS[size.vision_tower](size),
            text_config=DECODERS[size.decoder](size, tokens),
            image_token_index=tokens.image,
            image_seq_length=size.num_image_tokens,
            vision_feature_select_strategy=strategy,
            # The last layer, not LLaVA-1.5's penultimate one: a tiny tower has no layer to spare,
            # and an unused layer would be dead weight in every parameter count and export.
            vision_feature_layer=-1,
            tie_word_embeddings=size.tie_word_embeddings,
        )


@register_family
class PaliGemmaFamily(VLMFamily):
    name = "paligemma"
    model_type = "paligemma"
    vision_towers = ("siglip",)
    decoders = ("gemma",)
    prefix_lm = True
    prompt_suffix = "\n"  # PaliGemma: <image>... <bos> prefix "\n" suffix

    def build_config(self, size: VLMSize, tokens: SpecialTokenIds) -> PretrainedConfig:
        self.check_size(size)
        return PaliGemmaConfig(
            vision_config=VISION_TOWERS[size.vision_tower](size),
            text_config=DECODERS[size.decoder](size, tokens),
            image_token_index=tokens.image,
            vocab_size=tokens.vocab_size,
            projection_dim=size.hidden_size,
            hidden_size=size.hidden_size,
            tie_word_embeddings=size.tie_word_embeddings,
        )


def build_model(family: VLMFamily, size: VLMSize, tokens: SpecialTokenIds, seed: int = 0) -> PreTrainedModel:
    """A randomly initialized model from config (no download); `seed` fixes the weights only."""
    config = family.build_config(size, tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
    return model.eval()


def count_parameters(family: VLMFamily, model: PreTrainedModel) -> dict[str, int]:
    """vision / projector / language / head / total; a tensor shared by two groups (tied LM head)
    is counted once, in the first group, so the groups add up to the total."""
    seen: set[int] = set()
    counts: dict[str, int] = {}
    for group, module in family.parameter_groups(model).items():
        n = 0
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        counts[group] = n
    counts["total"] = sum(p.numel() for p in model.parameters())  # parameters() dedups tied tensors
    return counts


def count_parameters_from_config(config: PretrainedConfig) -> dict[str, int]:
    """Parameter counts of a checkpoint without loading its weights (meta device, no memory)."""
    family = family_for_config(config)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return count_parameters(family, model)
