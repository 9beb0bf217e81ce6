"""Observation contract shared by the torch policy and the robot runtime (numpy only).

One implementation of image preprocessing, instruction checks and prompt assembly, used by
`VLAPolicy.predict_action` and `rt2edge.runtime.Policy.act`, so that both feed a model the same
numbers: parity between torch and the exported graphs starts here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from rt2edge.errors import InputError

RT2_PROMPT_TEMPLATE = "What action should the robot take to {instruction}?"
MAX_INSTRUCTION_CHARS = 512


@dataclass(frozen=True)
class ImagePreprocessing:
    """uint8 HxWx3 RGB -> float32 3xSxS, resized (bilinear) and normalized per channel."""

    size: int = 64
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.size < 8:
            raise InputError("image_preprocessing.size", f"must be >= 8, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InputError("image_preprocessing", "mean and std need 3 values, std > 0")

    def __call__(self, images: Any) -> np.ndarray:
        """(H, W, 3) or (B, H, W, 3) uint8 -> (B, 3, size, size) float32."""
        batch = validate_images(images)
        if batch.shape[1:3] != (self.size, self.size):
            batch = resize_bilinear(batch, self.size)
        x = batch.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImagePreprocessing:
        return cls(size=int(data["size"]), mean=tuple(data["mean"]), std=tuple(data["std"]))


def validate_images(images: Any) -> np.ndarray:
    """Accept one (H, W, 3) or a batch (B, H, W, 3) uint8 RGB image; return (B, H, W, 3)."""
    if not isinstance(images, np.ndarray):
        raise InputError("image", f"expected a numpy uint8 array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise InputError("image", f"expected dtype uint8 (0-255 RGB), got {images.dtype}")
    images = np.asarray(images)  # a subclass (masked array, matrix) as the plain pixels it holds
    batch = images[None] if images.ndim == 3 else images
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise InputError("image", f"expected shape (H, W, 3) or (B, H, W, 3), got {images.shape}")
    if batch.shape[0] < 1 or min(batch.shape[1:3]) < 8 or max(batch.shape[1:3]) > 8192:
        raise InputError("image", f"expected 8 <= H, W <= 8192 and B >= 1, got {images.shape}")
    return batch


def resize_bilinear(batch: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (B, H, W, C) to (B, size, size, C), half-pixel centers (like PIL/OpenCV)."""
    _, h, w, _ = batch.shape

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(size, dtype=np.float64) + 0.5) * (n_in / size) - 0.5
        pos = np.clip(pos, 0.0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, wy = axis(h)
    x0, x1, wx = axis(w)
    img = batch.astype(np.float32)
    top = img[:, y0][:, :, x0] * (1 - wx)[None, None, :, None] + img[:, y0][:, :, x1] * wx[None, None, :, None]
    bot = img[:, y1][:, :, x0] * (1 - wx)[None, None, :, None] + img[:, y1][:, :, x1] * wx[None, None, :, None]
    out = top * (1 - wy)[None, :, None, None] + bot * wy[None, :, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def validate_instruction(instruction: Any, max_chars: int = MAX_INSTRUCTION_CHARS) -> str:
    if not isinstance(instruction, str):
        raise InputError("instruction", f"expected a str, got {type(instruction).__name__}")
    text = " ".join(instruction.split())
    if not text:
        raise InputError("instruction", "is empty")
    if len(text) > max_chars:
        raise InputError("instruction", f"is {len(text)} characters, the limit is {max_chars}")
    return text


@dataclass(frozen=True)
class PromptFormat:
    """How an instruction becomes the token sequence a VLA model reads.

    [Contract] sequence = [image_token_id] * num_image_tokens + [bos_token_id] (if any)
                          + tokenize(template.format(instruction)) + suffix_ids
               or, instruction_first: [bos] + tokenize(...) + [image_token_id] * n + suffix_ids
    The default is PaliGemma's layout and works unchanged for LLaVA-style models (which replace the image
    placeholder ids with image features wherever they stand). The action tokens follow it.
    With `instruction_first`, [bos] + text comes before the image tokens (then the suffix): in a
    causal (LLaVA-style) decoder every image token can then attend to the instruction, so a patch
    can tell "I am the object named" (early fusion) instead of leaving all of that binding to the
    positions after the image. A prefix-LM attends both ways and gains nothing from it.
    """

    image_token_id: int
    num_image_tokens: int
    bos_token_id: int | None = None
    template: str = RT2_PROMPT_TEMPLATE
    suffix_ids: tuple[int, ...] = field(default_factory=tuple)
    max_text_tokens: int = 64
    instruction_first: bool = False

    def __post_init__(self) -> None:
        if "{instruction}" not in self.template:
            raise InputError("prompt.template", "must contain '{instruction}'")
        if self.num_image_tokens < 1:
            raise InputError("prompt.num_image_tokens", "must be >= 1")
        if not isinstance(self.instruction_first, bool):
            raise InputError("prompt.instruction_first", f"must be true or false, got {self.instruction_first!r}")

    def text(self, instruction: str) -> str:
        return self.template.format(instruction=validate_instruction(instruction))

    def build_input_ids(self, text_ids: Sequence[int]) -> np.ndarray:
        """Text token ids (no special tokens) of `self.text(...)` -> the full prompt ids (1-D)."""
        if len(text_ids) > self.max_text_tokens:
            raise InputError(
                "instruction", f"is {len(text_ids)} tokens, the limit is {self.max_text_tokens}"
            )
        text = ([] if self.bos_token_id is None else [self.bos_token_id]) + list(text_ids)
        image = [self.image_token_id] * self.num_image_tokens
        ids = (text + image if self.instruction_first else image + text) + list(self.suffix_ids)
        return np.asarray(ids, dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_token_id": self.image_token_id,
            "num_image_tokens": self.num_image_tokens,
            "bos_token_id": self.bos_token_id,
            "template": self.template,
            "suffix_ids": list(self.suffix_ids),
            "max_text_tokens": self.max_text_tokens,
            "instruction_first": self.instruction_first,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptFormat:
        return cls(
            image_token_id=int(data["image_token_id"]),
            num_image_tokens=int(data["num_image_tokens"]),
            bos_token_id=None if data.get("bos_token_id") is None else int(data["bos_token_id"]),
            template=str(data["template"]),
            suffix_ids=tuple(int(x) for x in data.get("suffix_ids", ())),
            max_text_tokens=int(data.get("max_text_tokens", 64)),
            instruction_first=data.get("instruction_first", False),  # older prompts: image first
        )
