"""Image augmentation for co-fine-tuning (numpy only, seeded per sample).

Why these two and not more:
- Random shift (pad by ~6% with edge pixels, crop back to the original size; DrQ's augmentation
  for pixel-based control). Unlike a random *resized* crop it keeps the object scale, so the
  robot-side preprocessing (a plain resize, shared with the runtime) sees the same scale at test
  time and no test-time centre crop is needed.
- Brightness / contrast / saturation jitter. No hue jitter: instructions and VQA answers name
  colours ("pick the red block"), and a hue shift would make those labels wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageAugmentation:
    shift_fraction: float = 0.0625
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        """(H, W, 3) uint8 -> augmented (H, W, 3) uint8; the same seed gives the same result."""
        rng = np.random.default_rng(seed)
        out = random_shift(image, rng, self.shift_fraction)
        return colour_jitter(out, rng, self.brightness, self.contrast, self.saturation)


def random_shift(image: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    h, w = image.shape[:2]
    pad = int(round(fraction * min(h, w)))
    if pad == 0:
        return image
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * pad + 1, size=2)
    return padded[dy:dy + h, dx:dx + w]


def colour_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float,
                  contrast: float, saturation: float) -> np.ndarray:
    x = image.astype(np.float32)
    b, c, s = (1.0 + rng.uniform(-m, m) for m in (brightness, contrast, saturation))
    x = x * b
    grey = x @ np.asarray([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as torchvision
    x = (x - grey.mean()) * c + grey.mean()
    grey = (x @ np.asarray([0.299, 0.587, 0.114], np.float32))[..., None]
    x = (x - grey) * s + grey
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
