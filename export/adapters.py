"""Export adapters: how each VLM family is cut into the three artifact graphs.

A family (rt2edge.models.families: "llava", "paligemma") is registered here once with the few
facts the graph wrappers need: where the image features come from, which module is the decoder,
which is the LM head, and where RoPE positions start. Everything else (layers, norms, rotary
embeddings) is Hugging Face's own code, called by the wrappers in `export/graphs.py`, so the
exported numbers are HF's numbers.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from rt2edge.errors import ConfigError
from rt2edge.registry import Registry

# Decoders whose layers the explicit-KV wrapper drives unchanged: pre-norm blocks whose attention
# reads the cache only through `past_key_values.update(k, v, layer_idx)` and takes an additive
# 4-D mask. Gemma-2/3 (sliding windows, attention soft-capping) need their own masks: refused.
SUPPORTED_DECODERS = ("llama", "qwen2", "gemma")


class ExportAdapter:
    """What `export/graphs.py` needs from one VLM family. Subclass and `@register_adapter`."""

    family: ClassVar[str]
    # [Contract] RoPE position of the first prompt token: 0 for Llama-style, 1 for PaliGemma
    # (HF PaliGemma adds 1 to every position id). Baked into decoder.onnx as a constant.
    position_offset: ClassVar[int] = 0
    # The prompt attends bidirectionally (decoder input `prefix_length` = prompt length).
    prefix_lm: ClassVar[bool] = False

    def vision_module(self, model: nn.Module) -> nn.Module:
        """A module mapping pixel_values (B, 3, S, S) -> (B, N, D): exactly the features the HF
        model scatters into the image positions. It holds only the tower and projector, so an
        fp16 copy of it does not copy the language model."""
        raise NotImplementedError

    def language_model(self, model: nn.Module) -> nn.Module:
        """The decoder without head: has .embed_tokens, .layers, .norm, .rotary_emb."""
        return model.model.language_model

    def lm_head(self, model: nn.Module) -> nn.Linear:
        return model.get_output_embeddings()

    def text_config(self, model: nn.Module):
        return model.config.get_text_config()

    def check(self, model: nn.Module) -> None:
        """Refuse a model whose decoder the explicit-KV wrapper would get wrong."""
        config = self.text_config(model)
        if config.model_type not in SUPPORTED_DECODERS:
            raise ConfigError("checkpoint", f"decoder {config.model_type!r} cannot be exported; "
                                            f"supported decoders: {SUPPORTED_DECODERS}")
        layer_types = getattr(config, "layer_types", None) or ()
        if any(t != "full_attention" for t in layer_types):
            raise ConfigError("checkpoint", f"decoder has non-full attention layers {set(layer_types)}; "
                                            "sliding-window masks are not exported")


ADAPTERS: Registry[ExportAdapter] = Registry("export adapter for VLM family", field="checkpoint")
register_adapter = ADAPTERS.register_class("family")
adapter_for = ADAPTERS.get


class LlavaVision(nn.Module):
    """HF LLaVA's get_image_features as one batched tensor (HF returns a per-image list, which
    would pin the batch size of the exported graph); parity-tested against HF."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        layer = model.config.vision_feature_layer
        self.layers = [layer] if isinstance(layer, int) else list(layer)
        self.drop_cls = model.config.vision_feature_select_strategy == "default"  # CLIP's CLS token

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        selected = [hidden[i][:, 1:] if self.drop_cls else hidden[i] for i in self.layers]
        return self.projector(torch.cat(selected, dim=-1))


class PaliGemmaVision(nn.Module):
    """SigLIP last hidden state -> linear projector. transformers 5 scales text embeddings inside
    embed_tokens (sqrt(hidden)) and feeds image features unscaled, so embed.onnx carries the scale
    and vision.onnx does not."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision_tower(pixel_values).last_hidden_state)


@register_adapter
class LlavaAdapter(ExportAdapter):
    family = "llava"

    def vision_module(self, model: nn.Module) -> nn.Module:
        return LlavaVision(model)


@register_adapter
class PaliGemmaAdapter(ExportAdapter):
    family = "paligemma"
    position_offset = 1
    prefix_lm = True

    def vision_module(self, model: nn.Module) -> nn.Module:
        return PaliGemmaVision(model)
