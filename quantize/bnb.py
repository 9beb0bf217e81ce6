"""bitsandbytes (torch path): LLM.int8 and 4-bit NF4 / FP4 of a VLAPolicy checkpoint.

Method            layers                      weights                              activations
bnb-int8          Linear8bitLt (LLM.int8)     int8, one absmax scale per out row   fp16 on CPU; columns
                                                                                   over int8_threshold
                                                                                   stay 16-bit
bnb-nf4 / fp4     Linear4bit                  4-bit NF4/FP4 codes, absmax per 64   the checkpoint dtype
                                              weights (double_quant: int8 absmax)

What is quantized (QuantizeConfig.keep_groups, default: keep vision, projector, head):
- language model: every nn.Linear (attention q/k/v/o, MLP) -- the bulk of the decoder's bytes and of
  the per-token weight traffic, which is what bounds the control rate of a small policy.
- vision tower + projector: kept. They run once per frame (not once per action token) and their
  errors reach every one of the 8 action tokens through the image tokens.
- token embeddings: never (bitsandbytes replaces nn.Linear only; a lookup reads one row per token).
- LM head: kept. Every action is read from its action-token rows (the constrained head) and an
  argmax flip there is an action error; bitsandbytes cannot quantize a subset of rows, so the choice
  is the whole head or nothing. A head tied to the embeddings (PaliGemma) is always kept: quantizing
  it would also replace the embedding table it shares its weight with.

Quantization happens on load (transformers' BitsAndBytesConfig), then `save_pretrained` writes the
usual safetensors + config.json (with `quantization_config`, so `VLAPolicy.from_pretrained`
restores the bitsandbytes layers) and rt2edge.json gains a "quantization" record.

bitsandbytes 0.50 on CPUs with AVX512-BF16: the first Linear4bit forward repacks the weight for its
CPU kernel (absmax to bfloat16, transposed); `state_dict()`/`save_pretrained` afterwards "unpacks" it
without restoring absmax, which corrupts the saved file *and* the live layer. So this module saves
before any forward, and `load_quantized_policy` turns the repack off (the generic dequantize path,
float32 absmax; measured ~1.5x slower on a tiny model, exact, and safe to save).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import BitsAndBytesConfig

from rt2edge.errors import ArtifactError, ConfigError, Rt2EdgeError
from rt2edge.evaluation import VLAPolicyAdapter
from rt2edge.models.checkpoint import METADATA_FILE
from rt2edge.models.policy import VLAPolicy
from rt2edge.optional import require
from quantize.config import QuantizeConfig
from quantize.fidelity import policy_logit_fn, policy_token_fn
from quantize.pipeline import quantization_record
from quantize.registry import MethodOutput, Observation, register_method
from quantize.sizes import group_bytes

BNB_4BIT_BLOCK = 64  # bitsandbytes' 4-bit block size; transformers' BitsAndBytesConfig has no knob for it
EMBEDDINGS = "embeddings"
_INT8_CAST_WARNING = "MatMul8bitLt: inputs will be cast"


def _bnb() -> Any:
    return require("bitsandbytes", extra="toolkit", purpose="bitsandbytes int8 / 4-bit quantization")


# ------------------------------------------------------------------------------------ module groups
def module_prefixes(policy: VLAPolicy) -> dict[str, str]:
    """Module-name prefix of each group (vision, projector, language, head) plus the embeddings,
    from the family's own grouping, so no name is guessed per architecture."""
    names = {id(m): n for n, m in policy.model.named_modules()}
    prefixes = {g: names[id(m)] for g, m in policy._family.parameter_groups(policy.model).items()}
    prefixes[EMBEDDINGS] = names[id(policy.model.get_input_embeddings())]
    return prefixes


def kept_groups(policy: VLAPolicy, requested: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """The groups left unquantized: those requested, plus any forced (with the reason)."""
    keep, forced = list(requested), {}
    head = policy.model.get_output_embeddings()
    if "head" not in keep and head.weight is policy.model.get_input_embeddings().weight:
        keep.append("head")
        forced["head"] = "tied to the token embeddings; quantizing it would replace the embedding table too"
    return keep, forced


def state_dict_bytes(model: torch.nn.Module) -> list[tuple[str, int]]:
    """(name, bytes) of every stored tensor, a tensor shared by two names counted once.
    Call it before the first forward of a bitsandbytes 4-bit model on CPU (see module docstring)."""
    seen, out = set(), []
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if key in seen:
            continue
        seen.add(key)
        out.append((name, tensor.numel() * tensor.element_size()))
    return out


def _quantized_layers(model: torch.nn.Module) -> dict[str, str]:
    bnb = _bnb()
    kinds = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    return {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, kinds)}


# ------------------------------------------------------------------------------------ load / save
def bnb_config(cfg: QuantizeConfig, quant_type: str, skip_modules: list[str], dtype: torch.dtype) -> BitsAndBytesConfig:
    # Full module names: transformers matches a skip entry from the start of the name or as a
    # suffix, so a bare "vision_tower" would not match "model.vision_tower.encoder...".
    if quant_type == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=cfg.int8_threshold,
                                  llm_int8_skip_modules=skip_modules)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=dtype,
                              llm_int8_skip_modules=skip_modules)


def _sha256_of_weights(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def save_quantized(policy: VLAPolicy, folder: Path, record: dict[str, Any]) -> None:
    """The checkpoint layout of VLAPolicy.save_pretrained, plus rt2edge.json["quantization"];
    rt2edge.json last, as the checkpoint reader expects. `folder` is already a temp folder."""
    policy.model.save_pretrained(folder)
    policy.text_tokenizer.save_pretrained(folder)
    meta = policy.metadata().to_dict()
    meta["quantization"] = record
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


class _DropInt8CastWarning(logging.Filter):
    """LLM.int8 on CPU logs this on every forward of every layer; the cast is recorded once in the
    checkpoint's quantization record instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_INT8_CAST_WARNING)


def _quiet_int8_cast_warning() -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastWarning) for f in logger.filters):
        logger.addFilter(_DropInt8CastWarning())


def disable_cpu_repack(model: torch.nn.Module) -> int:
    """Keep Linear4bit layers on the generic path on CPU (see the module docstring); returns how many."""
    bnb = _bnb()
    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def load_quantized_policy(folder: str | Path, device: str = "cpu") -> VLAPolicy:
    """Load a checkpoint written by this module, ready to act (`predict_action`) on `device`."""
    if quantization_record(folder) is None:
        raise ArtifactError(f"{folder}: not a quantized checkpoint (no quantization record)")
    _bnb()
    policy = VLAPolicy.from_pretrained(folder, device_map=device)
    disable_cpu_repack(policy.model)
    _quiet_int8_cast_warning()
    return policy


# ------------------------------------------------------------------------------------ the handler
def quantize_checkpoint(cfg: QuantizeConfig, work_dir: Path, quant_type: str) -> MethodOutput:
    """Quantize cfg.source into work_dir (on load: bitsandbytes needs no calibration data)."""
    bnb = _bnb()
    reference = VLAPolicy.from_pretrained(cfg.source, device_map=cfg.device)
    prefixes = module_prefixes(reference)
    keep, forced = kept_groups(reference, cfg.keep_groups)
    skip = [prefixes[g] for g in keep]
    quantized = VLAPolicy.from_pretrained(
        cfg.source, quantization_config=bnb_config(cfg, quant_type, skip, reference.dtype),
        dtype=reference.dtype, device_map=cfg.device)
    layers = _quantized_layers(quantized.model)
    if not layers:
        raise ConfigError("keep_groups", f"no nn.Linear left to quantize when keeping {keep}")
    leaked = [n for n in layers for g in keep if n == prefixes[g] or n.startswith(prefixes[g] + ".")]
    if leaked:  # transformers' skip matching changed under us: never ship a silently different model
        raise Rt2EdgeError(f"bitsandbytes quantized layers of kept groups: {leaked[:3]}")
    # Sizes and save before any forward (bitsandbytes' CPU repack, see the module docstring).
    bytes_before = group_bytes(state_dict_bytes(reference.model), prefixes)
    bytes_after = group_bytes(state_dict_bytes(quantized.model), prefixes)
    record = {
        "method": cfg.method, "bits": cfg.bits, "block_size": cfg.block_size,
        "library": "bitsandbytes", "library_version": getattr(bnb, "__version__", "unknown"),
        "quant_type": quant_type,
        "double_quant": cfg.double_quant if quant_type != "int8" else None,
        "int8_threshold": cfg.int8_threshold if quant_type == "int8" else None,
        "compute_dtype": "float16 (bitsandbytes LLM.int8 casts activations)" if quant_type == "int8"
        else str(reference.dtype).removeprefix("torch."),
        "kept_groups": keep, "forced_keep": forced, "skip_modules": skip,
        "quantized_linear_layers": len(layers),
        "source": str(cfg.source), "source_weights_sha256": _sha256_of_weights(Path(cfg.source)),
    }
    save_quantized(quantized, work_dir, record)
    del quantized
    candidate = load_quantized_policy(work_dir, device=cfg.device)  # what users load: proves the reload
    return MethodOutput(reference=policy_token_fn(reference), candidate=policy_token_fn(candidate),
                        action_tokenizer=reference.action_tokenizer, bytes_before=bytes_before,
                        bytes_after=bytes_after, details=record,
                        # VLAPolicy.action_logits runs a quantized head's own forward (its rows are codes).
                        reference_logits=policy_logit_fn(reference), candidate_logits=policy_logit_fn(candidate),
                        reference_actor=lambda: VLAPolicyAdapter(reference.eval(), name="source"),
                        candidate_actor=lambda: VLAPolicyAdapter(candidate.eval(), name=cfg.method))


@register_method("bnb-int8", bits=8, block_sizes=(None,),
                 description="LLM.int8 (bitsandbytes Linear8bitLt): int8 per-row weights, outliers in 16-bit")
def quantize_bnb_int8(cfg: QuantizeConfig, work_dir: Path, observations: list[Observation]) -> MethodOutput:
    return quantize_checkpoint(cfg, work_dir, "int8")


@register_method("bnb-nf4", bits=4, block_sizes=(BNB_4BIT_BLOCK,),
                 description="bitsandbytes 4-bit NormalFloat (QLoRA), absmax per 64 weights")
def quantize_bnb_nf4(cfg: QuantizeConfig, work_dir: Path, observations: list[Observation]) -> MethodOutput:
    return quantize_checkpoint(cfg, work_dir, "nf4")


@register_method("bnb-fp4", bits=4, block_sizes=(BNB_4BIT_BLOCK,),
                 description="bitsandbytes 4-bit float (e2m1), absmax per 64 weights")
def quantize_bnb_fp4(cfg: QuantizeConfig, work_dir: Path, observations: list[Observation]) -> MethodOutput:
    return quantize_checkpoint(cfg, work_dir, "fp4")
