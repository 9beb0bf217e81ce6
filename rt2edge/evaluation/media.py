"""One rollout as an animated GIF or a PNG image strip (pillow, the toolkit extra).

Frames are upscaled with nearest-neighbour (a 64x64 sim image is unreadable at 1x) and captioned
with the instruction and the outcome, so a strip in a report explains itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rt2edge.errors import ConfigError
from rt2edge.optional import require

CAPTION_H = 14
MAX_STRIP_FRAMES = 12  # a strip wider than this is unreadable: frames are subsampled evenly


def _caption(frame: np.ndarray, text: str, scale: int):
    image_mod = require("PIL.Image", extra="toolkit", purpose="writing rollout GIFs / strips")
    draw_mod = require("PIL.ImageDraw", extra="toolkit", purpose="writing rollout GIFs / strips")
    h, w = frame.shape[:2]
    big = image_mod.fromarray(frame).resize((w * scale, h * scale), image_mod.NEAREST)
    canvas = image_mod.new("RGB", (w * scale, h * scale + CAPTION_H), (255, 255, 255))
    canvas.paste(big, (0, CAPTION_H))
    draw_mod.Draw(canvas).text((2, 1), text, fill=(0, 0, 0))
    return canvas


def save_rollout(frames: np.ndarray, path: str | Path, instruction: str = "", success: bool | None = None,
                 scale: int = 4, fps: int = 8) -> Path:
    """Write frames (T, H, W, 3) uint8 as a GIF (path ends in .gif) or a PNG strip (.png)."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ConfigError("frames", f"expected (T, H, W, 3) uint8, got shape {frames.shape}")
    outcome = "" if success is None else ("  [success]" if success else "  [failure]")
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        images = [_caption(f, f"{instruction}  t={t}{outcome}", scale) for t, f in enumerate(frames)]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    elif suffix == ".png":
        image_mod = require("PIL.Image", extra="toolkit", purpose="writing rollout strips")
        picks = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), MAX_STRIP_FRAMES)).round().astype(int))
        tiles = [_caption(frames[t], f"t={t}", scale) for t in picks]
        w, h = tiles[0].size
        strip = image_mod.new("RGB", (w * len(tiles), h + CAPTION_H), (255, 255, 255))
        for i, tile in enumerate(tiles):
            strip.paste(tile, (i * w, CAPTION_H))
        require("PIL.ImageDraw", extra="toolkit").Draw(strip).text((2, 1), instruction + outcome, fill=(0, 0, 0))
        strip.save(path)
    else:
        raise ConfigError("gif", f"{path.name}: use a .gif (animation) or .png (image strip) file name")
    return path
