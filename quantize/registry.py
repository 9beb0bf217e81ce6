"""Quantization methods by name: `@register_method("bnb-int8", bits=8)` maps a name to a handler.

A handler turns a source (a checkpoint folder or a deploy artifact) into a quantized copy written
into `work_dir` (a temp folder that `quantize.run` renames into place once everything succeeded),
and returns a `MethodOutput`: what it did, the weight bytes before/after, and two token functions
(reference and quantized) that `quantize.run` compares on the calibration observations.

    @register_method("bnb-int8", bits=8, description="LLM.int8 (bitsandbytes)")
    def quantize_bnb_int8(cfg, work_dir, observations) -> MethodOutput: ...

The built-in handlers live in the modules of `_BUILTIN_MODULES`, imported on the first lookup so
that building or validating a config does not import them before it must.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from rt2edge.errors import ConfigError

if TYPE_CHECKING:
    from rt2edge.actions import ActionTokenizer
    from quantize.config import QuantizeConfig

# An observation is one RGB frame (H, W, 3) uint8 and its instruction.
Observation = tuple[np.ndarray, str]
# (B, H, W, 3) uint8 images + B instructions -> (B, tokens_per_action) action-token ids.
TokenFn = Callable[[np.ndarray, Sequence[str]], np.ndarray]
# images + instructions + (B, tokens_per_action) action-token ids (teacher forcing) ->
# (B, tokens_per_action, n_bins) logits over the action bins at those positions.
LogitFn = Callable[[np.ndarray, Sequence[str], np.ndarray], np.ndarray]

SOURCE_KINDS = ("checkpoint", "artifact")
_BUILTIN_MODULES = ("quantize.bnb", "quantize.onnx_int8", "quantize.onnx_int4")


@dataclass
class MethodOutput:
    """What a handler reports back to `quantize.run`."""

    reference: TokenFn  # the unquantized source
    candidate: TokenFn  # the quantized result, loaded back from work_dir (what a user would load)
    action_tokenizer: ActionTokenizer
    bytes_before: dict[str, int]  # weight bytes per module group (+ "total")
    bytes_after: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)  # method-specific, JSON-serializable
    # Optional, for the continuous logit error (both or neither); see quantize.fidelity.
    reference_logits: LogitFn | None = None
    candidate_logits: LogitFn | None = None
    # Optional: zero-argument factories of closed-loop policies (rt2edge.evaluation's ActionPolicy)
    # for `--episodes`; both or neither.
    reference_actor: Callable[[], Any] | None = None
    candidate_actor: Callable[[], Any] | None = None
    # Optional: called with the work folder and the report files once they are written (an
    # artifact lists and hashes them in its manifest).
    finalize: Callable[[Path, list[str]], None] | None = None


Handler = Callable[["QuantizeConfig", Path, list[Observation]], MethodOutput]


@dataclass(frozen=True)
class QuantMethod:
    name: str
    handler: Handler
    bits: int
    block_sizes: tuple[int | None, ...]  # accepted block sizes; the first is the default
    source: str  # what it reads: "checkpoint" (torch side) or "artifact" (ONNX side)
    description: str
    targets: tuple[str, ...] = ()  # runtimes its output is for, the first is the default; () = n/a
    algorithms: tuple[str, ...] = ()  # weight rounding algorithms, the first is the default

    @property
    def reads_artifact(self) -> bool:
        """It quantizes a deploy artifact's ONNX graphs (the per-layer sensitivity pass is theirs)."""
        return self.source == "artifact"


_METHODS: dict[str, QuantMethod] = {}


def register_method(name: str, *, bits: int, block_sizes: tuple[int | None, ...] = (None,),
                    source: str = "checkpoint", description: str = "", targets: tuple[str, ...] = (),
                    algorithms: tuple[str, ...] = ()) -> Callable[[Handler], Handler]:
    """Register `handler` under `name`. Re-registering the same function is a no-op (re-import);
    a different one under a taken name is a programming error."""
    if source not in SOURCE_KINDS:
        raise ValueError(f"source must be one of {SOURCE_KINDS}, got {source!r}")
    if not block_sizes:
        raise ValueError("block_sizes needs at least one entry (None: per-channel)")

    def wrap(handler: Handler) -> Handler:
        existing = _METHODS.get(name)
        if existing is not None and _origin(existing.handler) != _origin(handler):
            raise ValueError(f"quantization method {name!r} is already registered by {_origin(existing.handler)}")
        _METHODS[name] = QuantMethod(name, handler, bits, tuple(block_sizes), source, description,
                                     tuple(targets), tuple(algorithms))
        return handler

    return wrap


def _origin(handler: Handler) -> str:
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', repr(handler))}"


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def known_methods() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)


def get_method(name: str) -> QuantMethod:
    _load_builtins()
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError("method", f"unknown quantization method {name!r}; known: {sorted(_METHODS)}") from None
