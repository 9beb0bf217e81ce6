"""The tabletop world: vocabulary, scene state, deterministic dynamics, layout sampling.

Coordinates: the table spans [-0.5, 0.5] m in x (image right) and y (image up); z is height above
the table in [0, Z_MAX]. The camera sees exactly the table, so a position maps to one pixel at any
image size. Objects are "bottom at z" discs/cubes/triangles of three size classes.

The dynamics are kinematic on purpose (no contact physics): a policy trained on a few thousand
frames has to learn *where* to go, not how to push, and every outcome is a pure function of the
seed and the actions.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

# ----------------------------------------------------------------------------- vocabulary
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (40, 170, 70),
    "blue": (45, 90, 225),
    "yellow": (240, 210, 40),
    "purple": (150, 70, 200),
    "orange": (245, 135, 30),
}
SHAPES: tuple[str, ...] = ("cube", "sphere", "triangle")
# Radii of the size classes. Adjacent classes differ by >= 1.2 px at 64x64, so "smallest" and
# "largest" are visible, and every class is >= 3 px so the shape stays recognisable.
SIZES: dict[str, float] = {"small": 0.05, "medium": 0.07, "large": 0.09}
# Countries whose flags stay distinctive at ~13x8 pixels.
COUNTRIES: dict[str, str] = {  # country -> adjective, for paraphrases ("the japanese flag")
    "japan": "japanese",
    "france": "french",
    "germany": "german",
    "italy": "italian",
    "ukraine": "ukrainian",
    "switzerland": "swiss",
}

# ----------------------------------------------------------------------------- geometry (metres)
TABLE_HALF = 0.5
Z_MAX = 0.25
MAT_HALF = 0.12  # mats are 0.24 m squares: clearly bigger than the largest cube (0.16 m)
FLAG_HALF = (0.1, 0.065)  # flags are 0.2 x 0.13 m, landscape
EDGE_MARGIN = 0.04  # keep everything fully on the table with a visible border
# Objects start at least this far apart (edge to edge), more than NEAR_GAP, so that no pair is
# "near" before the robot acts and every `move X near Y` needs a real move.
MIN_OBJECT_GAP = 0.1
MIN_ITEM_GAP = 0.03  # between mats / flags / objects of different kinds

# ----------------------------------------------------------------------------- dynamics
MAX_STEP = 0.1  # default cap of |delta| per axis and step
# Heights are chosen so that the expert only ever sits at two z levels, START_Z == CARRY_Z and
# GRASP_Z, one full step apart: z is then a binary, clearly visible cue (size and shadow), and the
# z action is -max_step / 0 / +max_step.
GRASP_Z = 0.02  # where the expert closes the gripper
CARRY_Z = 0.12  # travel height with an object; also the "lifted" height of `pick`
START_Z = 0.12
GRASP_MAX_DZ = 0.06  # fingertips may be at most this far above an object's bottom to grasp it
LIFTED_Z = 0.08  # bottom above this = lifted; one full step up from a grasp (0.10) clears it
NEAR_GAP = 0.07  # edge-to-edge distance that counts as "near"


@dataclass
class SimObject:
    colour: str
    shape: str
    size: str
    x: float
    y: float
    z: float = 0.0  # height of the bottom above the table
    on: int | None = None  # index of the object it rests on, None = the table

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def height(self) -> float:
        return SIZES[self.size]

    @property
    def top(self) -> float:
        return self.z + self.height


class _TableRegion:
    """A rectangle drawn on the table, centred at (x, y) with half-extents `HALF` (x, y)."""

    HALF: tuple[float, float]
    x: float
    y: float

    def contains(self, x: float, y: float) -> bool:
        return abs(x - self.x) <= self.HALF[0] and abs(y - self.y) <= self.HALF[1]

    def distance_outside(self, x: float, y: float) -> float:
        """How far (x, y) lies outside the rectangle (metres); 0 inside or on its edge."""
        dx = max(0.0, abs(x - self.x) - self.HALF[0])
        dy = max(0.0, abs(y - self.y) - self.HALF[1])
        return float(np.hypot(dx, dy))


@dataclass(frozen=True)
class Mat(_TableRegion):
    HALF = (MAT_HALF, MAT_HALF)
    colour: str
    x: float
    y: float


@dataclass(frozen=True)
class Flag(_TableRegion):
    HALF = FLAG_HALF
    country: str
    x: float
    y: float


@dataclass
class Scene:
    """Everything the renderer, the experts, the success predicates and the VQA read."""

    objects: list[SimObject]
    mats: list[Mat]
    flags: list[Flag]
    ee: np.ndarray = field(default_factory=lambda: np.array([0.0, -0.4, START_Z]))
    gripper_closed: bool = False
    held: int | None = None
    grasp_offset: float = 0.0  # ee z minus the held object's bottom, fixed at grasp time

    def copy(self) -> Scene:
        return copy.deepcopy(self)

    def state_vector(self) -> np.ndarray:
        """[ee x, ee y, ee z, gripper closed (0/1), holding (0/1)] as float32."""
        return np.array([*self.ee, float(self.gripper_closed), float(self.held is not None)],
                        dtype=np.float32)

    def state_key(self) -> bytes:
        """Everything that changes within an episode (gripper pose and state, what it holds, every
        object's position and support), rounded to 1 um: equal keys render the same image, so a
        policy of the image alone that meets a key twice in an episode is in a loop."""
        values = [*self.ee, float(self.gripper_closed), -1.0 if self.held is None else float(self.held),
                  self.grasp_offset]
        for o in self.objects:
            values += [o.x, o.y, o.z, -1.0 if o.on is None else float(o.on)]
        return np.round(np.asarray(values, np.float64), 6).tobytes()

    def mat(self, colour: str) -> Mat:
        return next(m for m in self.mats if m.colour == colour)

    def flag(self, country: str) -> Flag:
        return next(f for f in self.flags if f.country == country)

    def distance_xy(self, i: int, j: int) -> float:
        a, b = self.objects[i], self.objects[j]
        return float(np.hypot(a.x - b.x, a.y - b.y))

    def edge_gap(self, i: int, j: int) -> float:
        """Edge-to-edge distance of two objects in xy (centre distance less both radii)."""
        return self.distance_xy(i, j) - self.objects[i].radius - self.objects[j].radius


STATE_NAMES = ("ee_x", "ee_y", "ee_z", "gripper_closed", "holding")


# ----------------------------------------------------------------------------- dynamics
def apply_action(scene: Scene, action: np.ndarray, max_step: float) -> None:
    """One control step: move the end effector (clipped), then open/close the gripper.

    Motion comes before the gripper so that a policy that closes on arrival grasps what it
    arrived at. Rotation dims (3:6) are accepted and ignored: the gripper is top-down.
    """
    delta = np.clip(action[:3], -max_step, max_step)
    low = np.array([-TABLE_HALF, -TABLE_HALF, 0.0])
    high = np.array([TABLE_HALF, TABLE_HALF, Z_MAX])
    scene.ee = np.clip(scene.ee + delta, low, high)
    if scene.held is not None:
        _follow(scene)
    close = float(action[6]) > 0.0
    if close and not scene.gripper_closed:
        scene.gripper_closed = True
        _grasp(scene)
    elif not close and scene.gripper_closed:
        scene.gripper_closed = False
        _release(scene)


def _follow(scene: Scene) -> None:
    obj = scene.objects[scene.held]
    obj.x, obj.y = float(scene.ee[0]), float(scene.ee[1])
    obj.z = max(0.0, float(scene.ee[2]) - scene.grasp_offset)


def grasp_candidate(scene: Scene) -> int | None:
    """The object the fingers would close on: its footprint holds the ee and the fingertips are
    low enough; among several (a stack), the highest one."""
    ex, ey, ez = scene.ee
    best, best_z = None, -1.0
    for i, obj in enumerate(scene.objects):
        if np.hypot(obj.x - ex, obj.y - ey) > obj.radius:
            continue
        if not (obj.z - 0.01 <= ez <= obj.z + GRASP_MAX_DZ):
            continue
        if obj.z > best_z:
            best, best_z = i, obj.z
    return best


def _grasp(scene: Scene) -> None:
    idx = grasp_candidate(scene)
    if idx is None:
        return
    scene.held = idx
    obj = scene.objects[idx]
    scene.grasp_offset = float(scene.ee[2]) - obj.z
    obj.on = None
    # whatever rested on the grasped object falls to what is below it now
    for i, other in enumerate(scene.objects):
        if other.on == idx:
            _drop(scene, i)


def _release(scene: Scene) -> None:
    if scene.held is None:
        return
    idx, scene.held = scene.held, None
    _drop(scene, idx)


def _drop(scene: Scene, idx: int) -> None:
    """Let an object fall onto the highest object whose footprint contains its centre."""
    obj = scene.objects[idx]
    support, top = None, 0.0
    for j, other in enumerate(scene.objects):
        if j == idx or j == scene.held:
            continue
        if np.hypot(obj.x - other.x, obj.y - other.y) <= other.radius and other.top > top:
            support, top = j, other.top
    obj.z, obj.on = top, support


# ----------------------------------------------------------------------------- layout
def _rect_gap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Edge distance between two (x, y, half_w, half_h) boxes; negative when they overlap."""
    dx = abs(a[0] - b[0]) - a[2] - b[2]
    dy = abs(a[1] - b[1]) - a[3] - b[3]
    if dx < 0 and dy < 0:
        return max(dx, dy)
    return float(np.hypot(max(dx, 0.0), max(dy, 0.0)))


def place_items(rng: np.random.Generator, boxes: list[tuple[float, float, str]],
                keep_out: list[tuple[float, float, float, float]] = (),
                tries: int = 200) -> list[tuple[float, float]] | None:
    """Random non-overlapping centres for items given as (half_w, half_h, kind).

    Objects ("object") are placed as their bounding squares; two objects keep MIN_OBJECT_GAP,
    anything else MIN_ITEM_GAP. `keep_out` boxes (x, y, half_w, half_h) stay free (the gripper's
    start, so it hides nothing in the first image). None when this draw is too crowded.
    """
    placed: list[tuple[float, float, float, float, str]] = [(*box, "keep_out") for box in keep_out]
    n_fixed = len(placed)
    for half_w, half_h, kind in boxes:
        for _ in range(tries):
            x = rng.uniform(-TABLE_HALF + EDGE_MARGIN + half_w, TABLE_HALF - EDGE_MARGIN - half_w)
            y = rng.uniform(-TABLE_HALF + EDGE_MARGIN + half_h, TABLE_HALF - EDGE_MARGIN - half_h)
            box = (x, y, half_w, half_h)
            ok = all(
                _rect_gap(box, p[:4])
                >= (MIN_OBJECT_GAP if kind == p[4] == "object" else MIN_ITEM_GAP)
                for p in placed
            )
            if ok:
                placed.append((x, y, half_w, half_h, kind))
                break
        else:
            return None
    return [(p[0], p[1]) for p in placed[n_fixed:]]


START_KEEP_OUT = 0.12  # half side of the free square around the gripper's start


def sample_start_ee(rng: np.random.Generator, anywhere: bool = False) -> np.ndarray:
    """The gripper starts near the robot's base (bottom of the image), open, at travel height,
    far enough from the edge that its whole drawing (fingers, palm, wrist) is in view.
    anywhere: over a random point of the table instead (a data-generation option, see TaskSampler)."""
    if anywhere:
        reach = TABLE_HALF - START_KEEP_OUT
        return np.array([rng.uniform(-reach, reach), rng.uniform(-reach, reach), START_Z])
    return np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.4, -0.32), START_Z])
