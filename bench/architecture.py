"""The sizes of a VLA that its cost depends on, read from a Hugging Face config (no weights needed).

The cost model (bench/costs.py) only needs matrix shapes, so a 7B policy that cannot be built on
a laptop is still costed exactly from its config.json. Three shapes are understood:

  llava / paligemma   `vision_config` + `text_config` (rt2edge's own presets, LLaVA, PaliGemma)
  openvla             Prismatic's config: timm vision backbones by id + a Llama `text_config`
                      (OpenVLA-7B: DINOv2 ViT-L/14 + SigLIP So400m/14 at 224 px, fused; Llama-2-7B)

`VLASpec.parameter_counts()` reproduces `rt2edge.models.families.count_parameters` for the
HF families (a test checks it against the meta-device model), which is what makes the FLOP and
byte counts of bench/costs.py trustworthy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

from rt2edge.errors import ConfigError


@dataclass(frozen=True)
class ViTSpec:
    """One ViT vision tower. `prefix_tokens` (CLS, registers) run through the tower but are not
    handed to the language model."""

    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    patch_size: int
    image_size: int
    prefix_tokens: int = 0
    channels: int = 3
    patch_bias: bool = True
    pre_norm: bool = False  # CLIP's pre_layrnorm
    post_norm: bool = True
    layer_scale: bool = False  # DINOv2: two per-channel scales per layer

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        """Sequence length inside the tower."""
        return self.num_patches + self.prefix_tokens

    def layer_parameters(self) -> int:
        h, i = self.hidden, self.intermediate
        attn = 4 * h * h + 4 * h
        mlp = 2 * h * i + i + h
        norms = 2 * 2 * h
        return attn + mlp + norms + (2 * h if self.layer_scale else 0)

    def parameters(self) -> int:
        h = self.hidden
        patch = self.channels * self.patch_size ** 2 * h + (h if self.patch_bias else 0)
        embed = patch + self.tokens * h + self.prefix_tokens * h  # positions + CLS/register vectors
        norms = 2 * h * (int(self.pre_norm) + int(self.post_norm))
        return embed + self.layers * self.layer_parameters() + norms


@dataclass(frozen=True)
class ProjectorSpec:
    """An MLP from the (concatenated) vision features to the LM width: dims[0] -> ... -> dims[-1]."""

    dims: tuple[int, ...]
    bias: bool = True

    def parameters(self) -> int:
        return sum(a * b + (b if self.bias else 0) for a, b in zip(self.dims[:-1], self.dims[1:]))


@dataclass(frozen=True)
class DecoderSpec:
    """A Llama-style decoder (Llama, Qwen2, Gemma): GQA attention, RMSNorm, gated or plain MLP."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab_size: int
    gated_mlp: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.heads % self.kv_heads:
            raise ConfigError("text_config.num_key_value_heads",
                              f"{self.kv_heads} does not divide num_attention_heads {self.heads}")

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> list[tuple[str, int, int, bool]]:
        """(name, out_features, in_features, has_bias) of every matmul weight of one layer."""
        h, i = self.hidden, self.intermediate
        shapes = [("q", self.q_dim, h, self.qkv_bias), ("k", self.kv_dim, h, self.qkv_bias),
                  ("v", self.kv_dim, h, self.qkv_bias), ("o", h, self.q_dim, self.o_bias)]
        if self.gated_mlp:
            shapes += [("gate", i, h, self.mlp_bias), ("up", i, h, self.mlp_bias)]
        else:
            shapes += [("up", i, h, self.mlp_bias)]
        return shapes + [("down", h, i, self.mlp_bias)]

    def layer_parameters(self) -> int:
        linear = sum(o * n + (o if b else 0) for _, o, n, b in self.linear_shapes())
        return linear + 2 * self.hidden  # input and post-attention RMSNorm weights


@dataclass(frozen=True)
class VLASpec:
    """Everything the cost model needs: towers, projector, decoder and the action contract."""

    name: str
    vision: tuple[ViTSpec, ...]
    projector: ProjectorSpec
    decoder: DecoderSpec
    num_image_tokens: int
    tokens_per_action: int
    n_bins: int = 256
    prefix_lm: bool = False  # PaliGemma: image + prompt attend bidirectionally

    def __post_init__(self) -> None:
        if not self.vision:
            raise ConfigError("vision", "a VLA needs at least one vision tower")
        if self.tokens_per_action < 1:
            raise ConfigError("tokens_per_action", f"must be >= 1, got {self.tokens_per_action}")
        if self.projector.dims[0] != sum(t.hidden for t in self.vision):
            raise ConfigError("projector", f"input width {self.projector.dims[0]} != the towers' "
                                           f"{sum(t.hidden for t in self.vision)}")
        if self.projector.dims[-1] != self.decoder.hidden:
            raise ConfigError("projector", f"output width {self.projector.dims[-1]} != decoder "
                                           f"hidden {self.decoder.hidden}")

    def parameter_counts(self) -> dict[str, int]:
        """vision / projector / language / head / total, grouped like count_parameters (a tied head
        counts 0: it is the embedding, already in `language`)."""
        d = self.decoder
        language = d.vocab_size * d.hidden + d.layers * d.layer_parameters() + d.hidden
        counts = {"vision": sum(t.parameters() for t in self.vision),
                  "projector": self.projector.parameters(), "language": language,
                  "head": 0 if d.tie_embeddings else d.vocab_size * d.hidden}
        counts["total"] = sum(counts.values())
        return counts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VLASpec:
        return cls(name=data["name"], vision=tuple(ViTSpec(**t) for t in data["vision"]),
                   projector=ProjectorSpec(tuple(data["projector"]["dims"]), data["projector"]["bias"]),
                   decoder=DecoderSpec(**data["decoder"]), num_image_tokens=data["num_image_tokens"],
                   tokens_per_action=data["tokens_per_action"], n_bins=data["n_bins"],
                   prefix_lm=data["prefix_lm"])


# ------------------------------------------------------------------------------ known vision backbones
# timm ids used by Prismatic / OpenVLA (prismatic/models/backbones/vision/*.py, timm model cards).
TIMM_TOWERS: dict[str, ViTSpec] = {
    # DINOv2 ViT-L/14 with 4 registers: CLS + 4 register tokens, LayerScale.
    "vit_large_patch14_reg4_dinov2.lvd142m": ViTSpec(
        "dinov2-vit-l/14-reg4", hidden=1024, layers=24, heads=16, intermediate=4096, patch_size=14,
        image_size=224, prefix_tokens=5, layer_scale=True),
    # SigLIP So400m/14 (shape-optimized ViT): width 1152, depth 27, MLP 4304, no CLS token. Its
    # attention-pooling head is not run by Prismatic (patch features only) and is left out.
    "vit_so400m_patch14_siglip_224": ViTSpec(
        "siglip-so400m/14", hidden=1152, layers=27, heads=16, intermediate=4304, patch_size=14,
        image_size=224),
    "vit_large_patch14_clip_224.openai": ViTSpec(
        "clip-vit-l/14", hidden=1024, layers=24, heads=16, intermediate=4096, patch_size=14,
        image_size=224, prefix_tokens=1, patch_bias=False, pre_norm=True),
}
# Prismatic `vision_backbone_id` -> timm ids (prismatic/models/materialize.py).
PRISMATIC_BACKBONES: dict[str, tuple[str, ...]] = {
    "dinosiglip-vit-so-224px": ("vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"),
    "siglip-vit-so400m": ("vit_so400m_patch14_siglip_224",),
    "dinov2-vit-l": ("vit_large_patch14_reg4_dinov2.lvd142m",),
    "clip-vit-l": ("vit_large_patch14_clip_224.openai",),
}
# HF LlamaConfig defaults (= Llama-2-7B); OpenVLA's config.json only overrides vocab/pad in text_config.
LLAMA_DEFAULTS = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "vocab_size": 32000, "attention_bias": False,
                  "mlp_bias": False, "tie_word_embeddings": False}


def _get(cfg: Mapping[str, Any], key: str, where: str, default: Any = None) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is not None:
        return default
    raise ConfigError(f"{where}.{key}", "is missing from the config")


def decoder_from_config(text: Mapping[str, Any], where: str = "text_config") -> DecoderSpec:
    model_type = text.get("model_type", "llama")
    if model_type == "llama":
        text = {**LLAMA_DEFAULTS, **{k: v for k, v in text.items() if v is not None}}
    hidden = int(_get(text, "hidden_size", where))
    heads = int(_get(text, "num_attention_heads", where))
    qwen = model_type == "qwen2"  # Qwen2 has q/k/v biases and no switch for them
    return DecoderSpec(
        hidden=hidden, layers=int(_get(text, "num_hidden_layers", where)), heads=heads,
        kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or hidden // heads),
        intermediate=int(_get(text, "intermediate_size", where)),
        vocab_size=int(_get(text, "vocab_size", where)),
        qkv_bias=qwen or bool(text.get("attention_bias", False)),
        o_bias=bool(text.get("attention_bias", False)), mlp_bias=bool(text.get("mlp_bias", False)),
        tie_embeddings=bool(text.get("tie_word_embeddings", False)))


def _hf_tower(vision: Mapping[str, Any]) -> ViTSpec:
    clip = vision.get("model_type") == "clip_vision_model"
    return ViTSpec(
        name=str(vision.get("model_type", "vit")), hidden=int(_get(vision, "hidden_size", "vision_config")),
        layers=int(_get(vision, "num_hidden_layers", "vision_config")),
        heads=int(_get(vision, "num_attention_heads", "vision_config")),
        intermediate=int(_get(vision, "intermediate_size", "vision_config")),
        patch_size=int(_get(vision, "patch_size", "vision_config")),
        image_size=int(_get(vision, "image_size", "vision_config")),
        prefix_tokens=1 if clip else 0, patch_bias=not clip, pre_norm=clip,
        channels=int(vision.get("num_channels", 3)))


def _as_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, Mapping):
        return dict(config)
    raise ConfigError("config", f"expected a transformers config or a dict, got {type(config).__name__}")


def spec_from_config(config: Any, tokens_per_action: int = 8, n_bins: int = 256,
                     name: str | None = None) -> VLASpec:
    """A VLASpec from a HF config object or a config.json dict (llava, paligemma, openvla)."""
    cfg = _as_dict(config)
    model_type = cfg.get("model_type")
    if model_type == "openvla":
        return _openvla_spec(cfg, name or "openvla")
    if model_type not in ("llava", "paligemma"):
        raise ConfigError("config.model_type", f"{model_type!r} is not a VLA config this cost model "
                                               "reads (llava, paligemma, openvla)")
    text = dict(_get(cfg, "text_config", "config"))
    if model_type == "paligemma" and "vocab_size" in cfg:
        text["vocab_size"] = cfg["vocab_size"]
    decoder = decoder_from_config(text)
    tower = _hf_tower(_get(cfg, "vision_config", "config"))
    if model_type == "llava":
        projector = ProjectorSpec((tower.hidden, decoder.hidden, decoder.hidden),
                                  bool(cfg.get("multimodal_projector_bias", True)))
    else:
        projector = ProjectorSpec((tower.hidden, decoder.hidden), True)
    return VLASpec(name=name or model_type, vision=(tower,), projector=projector, decoder=decoder,
                   num_image_tokens=tower.num_patches, tokens_per_action=tokens_per_action,
                   n_bins=n_bins, prefix_lm=model_type == "paligemma")


def _openvla_spec(cfg: Mapping[str, Any], name: str) -> VLASpec:
    backbone = _get(cfg, "vision_backbone_id", "config")
    try:
        timm_ids = PRISMATIC_BACKBONES[backbone]
    except KeyError:
        raise ConfigError("config.vision_backbone_id", f"unknown Prismatic backbone {backbone!r}; "
                                                       f"known: {sorted(PRISMATIC_BACKBONES)}") from None
    sizes = cfg.get("image_sizes") or [224] * len(timm_ids)
    towers = tuple(replace(TIMM_TOWERS[t], image_size=int(s)) for t, s in zip(timm_ids, sizes))
    decoder = decoder_from_config(dict(cfg.get("text_config") or {"model_type": "llama"}))
    width = sum(t.hidden for t in towers)
    arch = str(cfg.get("arch_specifier", "no-align+fused-gelu-mlp"))
    # prismatic/util/nn_utils.py: FusedMLPProjector = Linear(d, 4d), GELU, Linear(4d, llm), GELU,
    # Linear(llm, llm); MLPProjector ("gelu-mlp") = Linear(d, llm), GELU, Linear(llm, llm).
    if arch.endswith("fused-gelu-mlp"):
        dims = (width, 4 * width, decoder.hidden, decoder.hidden)
    elif arch.endswith("gelu-mlp"):
        dims = (width, decoder.hidden, decoder.hidden)
    else:
        dims = (width, decoder.hidden)
    # OpenVLA: 7 action tokens (no terminate token), 256 bins over the last ids of the vocabulary.
    return VLASpec(name=name, vision=towers, projector=ProjectorSpec(dims), decoder=decoder,
                   num_image_tokens=towers[0].num_patches, tokens_per_action=7,
                   n_bins=int(cfg.get("n_action_bins", 256)))


def openvla_7b() -> VLASpec:
    """OpenVLA-7B (openvla/openvla-7b config.json: dinosiglip-vit-so-224px, fused-gelu-mlp,
    llama2-7b-pure with vocab padded to 32064 = 32000 + pad_to_multiple_of 64)."""
    return spec_from_config({
        "model_type": "openvla", "vision_backbone_id": "dinosiglip-vit-so-224px",
        "arch_specifier": "no-align+fused-gelu-mlp", "image_sizes": [224, 224], "n_action_bins": 256,
        "text_config": {"model_type": "llama", "vocab_size": 32064}}, name="openvla-7b")


def spec_from_policy(policy: Any) -> VLASpec:
    """The spec of a live `rt2edge.models.VLAPolicy` (duck-typed: no torch import here)."""
    tok = policy.action_tokenizer
    return spec_from_config(policy.model.config, tokens_per_action=tok.tokens_per_action,
                            n_bins=tok.n_bins, name=getattr(policy, "family", None))
