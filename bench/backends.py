"""Policies under test, behind one signature: act(image, instruction) -> result with `.timing`.

    backend = make_backend("runtime", "artifacts/student-s", num_threads=1)
    report = time_policy(backend.act, observations, backend=backend.name, info=backend.info)

  runtime      rt2edge.runtime.Policy on a deploy artifact (ONNX Runtime / TensorRT): what the
               robot runs. Returns its Action (timing per stage, per decode step).
  eager        VLAPolicy in torch: `predict_action_tokens`, split into its two calls
               (encode_observations, generate_action_ids) to time preprocessing and generation.
  hf-generate  the baseline a user writes from the Hugging Face docs: the model's processor on the
               raw image + prompt, then `model.generate(**inputs, max_new_tokens=k, do_sample=False,
               prefix_allowed_tokens_fn=...)` (HF's own constrained decoding, full-vocab LM head).

The torch backends time vision / prefill / each decode step inside generate() with module hooks
(bench/torch_stages.py), so every backend reports the runtime's stages. Every result carries the
action `values` in real units (fidelity and closed-loop success use them).

Timings of different backends are comparable as ratios within one run on one machine. torch and
transformers are imported only by the backends that need them (DESIGN.md rule 4); each backend
sets its thread count (torch.set_num_threads is process-wide: the last backend made wins).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.torch_stages import GenerateStageClock
from rt2edge.errors import ConfigError
from rt2edge.optional import require
from rt2edge.registry import Registry


@dataclass
class PolicyBackend:
    name: str
    act: Callable[[Any, str], Any]
    info: dict[str, Any] = field(default_factory=dict)
    reset: Callable[[], None] | None = None  # start of an episode (the runtime's gripper guard)


@dataclass(frozen=True)
class StepResult:
    """What the torch backends return per call (the runtime returns its own Action)."""

    tokens: np.ndarray
    timing: dict[str, float]
    values: np.ndarray | None = None  # the action in real units (the tokenizer's decode)
    decode_steps: tuple[float, ...] = ()  # seconds of each decoder run after the prefill


BACKENDS: Registry[Callable[..., PolicyBackend]] = Registry("backend", field="backend")


def register_backend(name: str):
    def wrap(factory: Callable[..., PolicyBackend]) -> Callable[..., PolicyBackend]:
        BACKENDS.add(name, factory)
        return factory
    return wrap


def make_backend(name: str, source: Any, num_threads: int = 1, **options: Any) -> PolicyBackend:
    """source: an artifact folder (runtime), or a VLAPolicy / checkpoint folder (eager, hf-generate)."""
    factory = BACKENDS.get(name)
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ConfigError("num_threads", f"must be an int >= 1, got {num_threads!r}")
    return factory(source, num_threads=num_threads, **options)


@register_backend("runtime")
def runtime_backend(source: str | Path, num_threads: int = 1, providers: Any = None) -> PolicyBackend:
    from rt2edge.runtime import Policy

    # No deadline: a benchmark must time real inference, never the safe action. Warm-up is the
    # harness's job (time_policy), so the load does none.
    policy = Policy.load(source, providers=providers, num_threads=num_threads, deadline_s=None, warmup=0)
    info = {"artifact": str(source), "provider": policy.provider, "num_threads": num_threads,
            "precision": getattr(policy.manifest, "precision", None), "prefix_cache_size": policy.prefix_cache_size}
    return PolicyBackend("runtime", policy.act, info, reset=policy.reset)


def _load_policy(source: Any):
    if hasattr(source, "predict_action_tokens"):
        return source
    from rt2edge.models import VLAPolicy

    return VLAPolicy.from_pretrained(source)


def _torch(num_threads: int):
    torch = require("torch", extra="toolkit", purpose="the eager / hf-generate benchmark backends")
    torch.set_num_threads(num_threads)
    return torch


def _torch_info(policy: Any, num_threads: int, torch: Any) -> dict[str, Any]:
    return {"family": policy.family, "num_threads": num_threads, "torch": torch.__version__,
            "dtype": str(policy.dtype), "device": str(policy.device)}


def _step_result(policy: Any, clock: Any, ids: Any, t0: float, t1: float, t2: float) -> StepResult:
    """Tokens -> real-unit action (the postprocess stage), and every stage's seconds."""
    tokens = ids.cpu().numpy().astype(np.int64)
    values = policy.action_tokenizer.decode(tokens[None])[0]
    t3 = time.perf_counter()
    stages, steps = clock.stages(t2 - t1)
    timing = {"preprocess": t1 - t0, **stages, "postprocess": t3 - t2, "generate": t2 - t1, "total": t3 - t0}
    return StepResult(tokens, timing, values, steps)


@register_backend("eager")
def eager_backend(source: Any, num_threads: int = 1) -> PolicyBackend:
    torch = _torch(num_threads)
    from rt2edge.models.decoding import generate_action_ids
    from rt2edge.models.families import get_family

    policy = _load_policy(source)
    pad_id = policy.text_tokenizer.pad_token_id
    clock = GenerateStageClock(get_family(policy.family), policy.model)

    def act(image: Any, instruction: str) -> StepResult:
        # The body of VLAPolicy.predict_action_tokens, with a clock between its two calls.
        clock.reset()
        t0 = time.perf_counter()
        with torch.inference_mode():
            inputs = policy.encode_observations(image, instruction)
            t1 = time.perf_counter()
            ids = generate_action_ids(policy.model, inputs, policy.action_tokenizer, pad_id)
        t2 = time.perf_counter()
        return _step_result(policy, clock, ids[0], t0, t1, t2)

    return PolicyBackend("eager", act, _torch_info(policy, num_threads, torch))


def build_processor(policy: Any) -> tuple[Any, Callable[[str], str]]:
    """The HF processor a user would build for this checkpoint, and the prompt text it is fed.

    Built from the policy's own preprocessing (size, mean, std, bilinear) and tokenizer, so its
    input_ids equal the policy's prompt; only the code path (PIL resize, generic processor) differs.
    """
    transformers = require("transformers", extra="toolkit", purpose="the hf-generate baseline")
    prep, tok, config = policy.image_preprocessing, policy.text_tokenizer, policy.model.config
    image_processor = transformers.SiglipImageProcessorPil(
        size={"height": prep.size, "width": prep.size}, image_mean=list(prep.mean),
        image_std=list(prep.std), resample=2)  # PIL.Image.BILINEAR, as ImagePreprocessing
    image_token = tok.convert_ids_to_tokens(policy.prompt.image_token_id)
    first = policy.prompt.instruction_first
    if config.model_type == "paligemma":
        if first:  # its processor always writes the image first
            raise ConfigError("backend", "hf-generate cannot build an instruction-first PaliGemma prompt")
        # PaliGemma's processor writes <image> x N + <bos> + prompt + "\n" itself.
        image_processor.image_seq_length = policy.prompt.num_image_tokens
        processor = transformers.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
        return processor, lambda instruction: policy.prompt.text(instruction)
    if config.model_type == "llava":
        clip = config.vision_config.model_type == "clip_vision_model"
        processor = transformers.LlavaProcessor(
            image_processor=image_processor, tokenizer=tok, patch_size=config.vision_config.patch_size,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            image_token=image_token, num_additional_image_tokens=1 if clip else 0)
        bos = tok.bos_token or ""
        if first:  # PromptFormat.instruction_first: [bos text] then the image
            return processor, lambda instruction: bos + policy.prompt.text(instruction) + image_token
        return processor, lambda instruction: image_token + bos + policy.prompt.text(instruction)
    raise ConfigError("backend", f"hf-generate has no processor recipe for {config.model_type!r}")


@register_backend("hf-generate")
def hf_generate_backend(source: Any, num_threads: int = 1) -> PolicyBackend:
    torch = _torch(num_threads)
    policy = _load_policy(source)
    processor, prompt_text = build_processor(policy)
    allowed = [int(i) for i in policy.action_tokenizer.allowed_ids]
    steps = policy.action_tokenizer.tokens_per_action
    model, pad_id = policy.model.eval(), policy.text_tokenizer.pad_token_id
    from rt2edge.models.families import get_family

    clock = GenerateStageClock(get_family(policy.family), model)

    def act(image: Any, instruction: str) -> StepResult:
        clock.reset()
        t0 = time.perf_counter()
        inputs = processor(images=image, text=prompt_text(instruction), return_tensors="pt")
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, num_beams=1,
                                 prefix_allowed_tokens_fn=lambda batch_id, ids: allowed, pad_token_id=pad_id)
        t2 = time.perf_counter()
        return _step_result(policy, clock, out[0, -steps:], t0, t1, t2)

    return PolicyBackend("hf-generate", act, _torch_info(policy, num_threads, torch))
