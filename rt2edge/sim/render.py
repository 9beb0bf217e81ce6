"""Top-down numpy renderer: table, mats, flags, objects, shadows and the gripper.

Drawn at `supersample` x the output size and box-filtered down, so edges are anti-aliased and a
3-pixel object still reads as a disc, a square or a triangle. The static part (table, mats, flags)
is drawn once per reset and copied each step; a step only draws what moves.

Height cues, so a single image tells the policy how high the gripper is: things above the table
are drawn larger (HEIGHT_SCALE) and cast a shadow displaced by SHADOW_SHIFT * z.
"""

from __future__ import annotations

import numpy as np

from rt2edge.errors import ConfigError
from rt2edge.sim.world import COLOURS, FLAG_HALF, MAT_HALF, Flag, Scene, SimObject

TABLE_RGB = (205, 190, 160)
OUTLINE_RGB = (30, 30, 30)
GRIPPER_RGB = (45, 45, 55)
WRIST_RGB = (110, 110, 125)
HEIGHT_SCALE = 1.5  # drawn size multiplier per metre of height
SHADOW_SHIFT = 0.5  # shadow offset (m) per metre of height, towards the bottom right
SHADOW_KEEP = 150  # shadowed pixels keep 150/256 of their brightness
OUTLINE = 0.012
TRIANGLE_SCALE = 1.4  # circumradius / size radius: keeps the triangle's area close to the disc's
CUBE_SCALE = 0.88  # half side / size radius
FINGER_HALF = (0.012, 0.035)
OPEN_GAP = 0.1
HELD_GAP = 0.6  # finger offset from the centre when holding, as a fraction of the drawn radius

# Flags: (kind, colours) with kind "v" vertical stripes, "h" horizontal stripes, or special.
FLAG_STYLES: dict[str, tuple[str, tuple[tuple[int, int, int], ...]]] = {
    "japan": ("disc", ((255, 255, 255), (200, 16, 46))),
    "france": ("v", ((0, 85, 164), (255, 255, 255), (239, 65, 53))),
    "italy": ("v", ((0, 146, 70), (255, 255, 255), (206, 43, 55))),
    "germany": ("h", ((20, 20, 20), (221, 0, 0), (255, 206, 0))),
    "ukraine": ("h", ((0, 87, 183), (255, 215, 0))),
    "switzerland": ("cross", ((218, 41, 28), (255, 255, 255))),
}


def mat_fill_rgb(colour: str) -> np.ndarray:
    """The uint8 RGB inside a mat of `colour`: its colour tinted towards the table."""
    rgb, table = np.asarray(COLOURS[colour], dtype=np.float64), np.asarray(TABLE_RGB, dtype=np.float64)
    return (0.55 * rgb + 0.45 * table).astype(np.uint8)


class Renderer:
    def __init__(self, size: int = 64, supersample: int = 2):
        if not 16 <= size <= 1024:
            raise ConfigError("image_size", f"must be in [16, 1024], got {size}")
        if supersample not in (1, 2, 3, 4):
            raise ConfigError("supersample", f"must be 1, 2, 3 or 4, got {supersample}")
        self.size, self.ss = size, supersample
        self.n = size * supersample
        centres = (np.arange(self.n) + 0.5) / self.n
        self.xs = centres - 0.5  # x of each column's pixel centre
        self.ys = 0.5 - centres  # y of each row's pixel centre (y points up the image)
        self._static: np.ndarray | None = None

    # ----------------------------------------------------------------------------- pixel spans
    def _cols(self, x0: float, x1: float) -> tuple[int, int]:
        c0 = int(np.ceil((x0 + 0.5) * self.n - 0.5))
        c1 = int(np.floor((x1 + 0.5) * self.n - 0.5)) + 1
        return max(c0, 0), min(c1, self.n)

    def _rows(self, y0: float, y1: float) -> tuple[int, int]:
        r0 = int(np.ceil((0.5 - y1) * self.n - 0.5))
        r1 = int(np.floor((0.5 - y0) * self.n - 0.5)) + 1
        return max(r0, 0), min(r1, self.n)

    def _rect(self, canvas: np.ndarray, x: float, y: float, hw: float, hh: float, rgb) -> None:
        r0, r1 = self._rows(y - hh, y + hh)
        c0, c1 = self._cols(x - hw, x + hw)
        if r0 < r1 and c0 < c1:
            canvas[r0:r1, c0:c1] = rgb

    def _local(self, x: float, y: float, reach: float):
        """Pixel window around (x, y) and the offsets of its pixel centres, or None if empty."""
        r0, r1 = self._rows(y - reach, y + reach)
        c0, c1 = self._cols(x - reach, x + reach)
        if r0 >= r1 or c0 >= c1:
            return None
        dx = self.xs[c0:c1][None, :] - x
        dy = self.ys[r0:r1][:, None] - y
        return (slice(r0, r1), slice(c0, c1)), dx, dy

    def _shape(self, canvas: np.ndarray, shape: str, x: float, y: float, r: float, rgb) -> None:
        reach = r * (TRIANGLE_SCALE if shape == "triangle" else 1.0)
        local = self._local(x, y, reach)
        if local is None:
            return
        window, dx, dy = local
        if shape == "sphere" or shape == "disc":
            mask = dx * dx + dy * dy <= r * r
        elif shape == "cube":
            half = r * CUBE_SCALE
            mask = (np.abs(dx) <= half) & (np.abs(dy) <= half)
        elif shape == "triangle":
            # upright equilateral triangle, centroid at (x, y), circumradius R: inside when below
            # both slanted edges (sqrt(3)|dx| + dy <= R) and above the base (dy >= -R/2)
            big_r = r * TRIANGLE_SCALE
            mask = (np.sqrt(3.0) * np.abs(dx) + dy <= big_r) & (dy >= -big_r / 2)
        else:
            raise ValueError(f"unknown shape {shape!r}")
        canvas[window][mask] = rgb

    def _shadow(self, canvas: np.ndarray, x: float, y: float, r: float) -> None:
        local = self._local(x, y, r)
        if local is None:
            return
        window, dx, dy = local
        mask = dx * dx + dy * dy <= r * r
        region = canvas[window]
        region[mask] = (region[mask].astype(np.uint16) * SHADOW_KEEP >> 8).astype(np.uint8)

    # ----------------------------------------------------------------------------- static layer
    def set_static(self, scene: Scene) -> None:
        """Draw what does not move (table, mats, flags); call once per reset."""
        canvas = np.empty((self.n, self.n, 3), dtype=np.uint8)
        canvas[:] = TABLE_RGB
        for mat in scene.mats:
            rgb = np.asarray(COLOURS[mat.colour], dtype=np.float64)
            # a paler tint than the objects' colour, with a darker rim: a mat never looks like a
            # cube, and a red cube stays visible on the red mat
            self._rect(canvas, mat.x, mat.y, MAT_HALF, MAT_HALF, (0.7 * rgb).astype(np.uint8))
            inner = MAT_HALF - 0.012
            self._rect(canvas, mat.x, mat.y, inner, inner, mat_fill_rgb(mat.colour))
        for flag in scene.flags:
            self._flag(canvas, flag)
        self._static = canvas

    def _flag(self, canvas: np.ndarray, flag: Flag) -> None:
        hw, hh = FLAG_HALF
        pad = 0.008
        self._rect(canvas, flag.x, flag.y, hw + pad, hh + pad, (90, 90, 90))
        kind, colours = FLAG_STYLES[flag.country]
        if kind == "v":
            width = 2 * hw / len(colours)
            for i, rgb in enumerate(colours):
                cx = flag.x - hw + width * (i + 0.5)
                self._rect(canvas, cx, flag.y, width / 2, hh, rgb)
        elif kind == "h":
            height = 2 * hh / len(colours)
            for i, rgb in enumerate(colours):  # first stripe on top
                cy = flag.y + hh - height * (i + 0.5)
                self._rect(canvas, flag.x, cy, hw, height / 2, rgb)
        elif kind == "disc":
            self._rect(canvas, flag.x, flag.y, hw, hh, colours[0])
            self._shape(canvas, "disc", flag.x, flag.y, 0.6 * hh, colours[1])
        elif kind == "cross":
            self._rect(canvas, flag.x, flag.y, hw, hh, colours[0])
            arm, thick = 0.6 * hh, 0.18 * hh
            self._rect(canvas, flag.x, flag.y, arm, thick, colours[1])
            self._rect(canvas, flag.x, flag.y, thick, arm, colours[1])

    # ----------------------------------------------------------------------------- per step
    def render(self, scene: Scene) -> np.ndarray:
        """The camera image, uint8 (size, size, 3). `set_static` must have seen this scene."""
        if self._static is None:
            self.set_static(scene)
        canvas = self._static.copy()
        ex, ey, ez = (float(v) for v in scene.ee)
        for obj in scene.objects:
            if obj.z > 0.005:
                self._shadow(canvas, obj.x + SHADOW_SHIFT * obj.z, obj.y - SHADOW_SHIFT * obj.z,
                             obj.radius)
        self._shadow(canvas, ex + SHADOW_SHIFT * ez, ey - SHADOW_SHIFT * ez, 0.045)
        order = sorted(range(len(scene.objects)), key=lambda i: (scene.objects[i].z, i))
        for i in order:
            self._object(canvas, scene.objects[i])
        self._gripper(canvas, scene)
        if self.ss == 1:
            return canvas
        # box filter as a sum of k*k strided views: ~7x faster than reshape(...).sum(axis=(1, 3))
        k = self.ss
        wide = canvas.astype(np.uint16)
        summed = np.full((self.size, self.size, 3), (k * k) // 2, dtype=np.uint16)  # rounding
        for i in range(k):
            for j in range(k):
                summed += wide[i::k, j::k]
        return (summed // (k * k)).astype(np.uint8)

    def _object(self, canvas: np.ndarray, obj: SimObject) -> None:
        scale = 1.0 + HEIGHT_SCALE * obj.z
        r = obj.radius * scale
        self._shape(canvas, obj.shape, obj.x, obj.y, r + OUTLINE, OUTLINE_RGB)
        self._shape(canvas, obj.shape, obj.x, obj.y, r, COLOURS[obj.colour])

    def _gripper(self, canvas: np.ndarray, scene: Scene) -> None:
        """Two fingers and a palm bar on the robot's side; the finger gap shows open/closed."""
        ex, ey, ez = (float(v) for v in scene.ee)
        scale = 1.0 + HEIGHT_SCALE * ez
        if not scene.gripper_closed:
            gap = OPEN_GAP
        elif scene.held is not None:
            # Fingers pinch the held object inside its outline. Drawn hugging its outside, they
            # sat where the open fingers sit for a large object (0.108 vs OPEN_GAP 0.1): the grasp
            # frame (open, "close") and the hold frame (closed, "lift") differed by 11 px on
            # average, 0 for some, and policies lifted at chance (README items 12-13).
            held = scene.objects[scene.held]
            gap = HELD_GAP * held.radius * (1.0 + HEIGHT_SCALE * held.z) / scale
        else:
            gap = 0.02
        fw, fh = FINGER_HALF[0] * scale, FINGER_HALF[1] * scale
        for side in (-1.0, 1.0):
            self._rect(canvas, ex + side * gap * scale, ey, fw, fh, GRIPPER_RGB)
        palm_y = ey - fh
        self._rect(canvas, ex, palm_y, gap * scale + fw, 0.01 * scale, GRIPPER_RGB)
        self._shape(canvas, "disc", ex, palm_y - 0.02 * scale, 0.022 * scale, WRIST_RGB)
