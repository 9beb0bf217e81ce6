"""Tasks: what an instruction asks for, when it is done, and how a (scene, task) is drawn.

Every family has a success predicate over the scene state (registered in SUCCESS) and the
sampler draws a layout that makes the task well posed: named objects are unique in the scene,
`smallest`/`largest` is unique by a whole size class, and nothing starts already done.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Collection

import numpy as np

from rt2edge.checks import check_finite
from rt2edge.errors import ConfigError
from rt2edge.sim import language
from rt2edge.sim.language import EXTREMES, TEMPLATES, check_families, check_split
from rt2edge.sim.world import (
    COLOURS, COUNTRIES, FLAG_HALF, LIFTED_Z, MAT_HALF, NEAR_GAP, SIZES, Flag, Mat, Scene,
    START_KEEP_OUT, SimObject, place_items, sample_start_ee,
)

OBJECT_COUNTS = (3, 4)  # objects per scene: few enough to stay readable at 64x64
MIN_OBJECTS, MAX_OBJECTS = 2, 5  # a reference needs 2; more than 5 rarely fits with mats and flags
N_MATS = 2
N_FLAGS = 2
MAX_LAYOUT_TRIES = 100


@dataclass(frozen=True)
class Task:
    family: str
    instruction: str
    target: int  # index of the object to pick / move
    reference: int | None = None  # move_near / put_on: the object named second
    mat_colour: str | None = None
    country: str | None = None
    extreme: str | None = None  # pick_extreme: "smallest" | "largest"
    template: str = ""

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# ----------------------------------------------------------------------------- success predicates
def _resting(scene: Scene, idx: int) -> bool:
    return scene.held != idx


def _lifted(scene: Scene, task: Task) -> bool:
    return scene.held == task.target and scene.objects[task.target].z >= LIFTED_Z


def _near(scene: Scene, task: Task) -> bool:
    return (_resting(scene, task.target) and scene.objects[task.target].on != task.reference
            and scene.edge_gap(task.target, task.reference) <= NEAR_GAP)


def _on(scene: Scene, task: Task) -> bool:
    return _resting(scene, task.target) and scene.objects[task.target].on == task.reference


def _on_mat(scene: Scene, task: Task) -> bool:
    obj = scene.objects[task.target]
    mat = scene.mat(task.mat_colour)
    return _resting(scene, task.target) and mat.contains(obj.x, obj.y)


def _on_flag(scene: Scene, task: Task) -> bool:
    obj = scene.objects[task.target]
    flag = scene.flag(task.country)
    return _resting(scene, task.target) and flag.contains(obj.x, obj.y)


SUCCESS: dict[str, Callable[[Scene, Task], bool]] = {
    "pick": _lifted,
    "pick_extreme": _lifted,
    "move_near": _near,
    "put_on": _on,
    "move_to_mat": _on_mat,
    "move_to_flag": _on_flag,
}


def is_success(scene: Scene, task: Task) -> bool:
    return bool(SUCCESS[task.family](scene, task))


# ----------------------------------------------------------------------------- failure kinds
MOVED_TOL = 0.01  # metres an object's centre must travel in xy to count as moved

# Why a failed episode failed, read off its final scene: which ones dominate tells grounding
# errors (wrong object / destination) from placement precision (near miss) and control ones.
FAILURE_KINDS = {
    "untouched": "no object moved",
    "wrong_object": "another object moved or is held; the named one did not move",
    "held": "the named object is still in the gripper (pick: not lifted high enough)",
    "dropped": "pick: the named object was grasped or moved but is not in the gripper",
    "on_reference": "move near: the named object was stacked on the reference",
    "near_miss": f"the named object rests within {NEAR_GAP} m of where it would count",
    "wrong_destination": f"the named object rests more than {NEAR_GAP} m from where it would count, "
                         "where the task with another destination (the other mat or flag, another "
                         "reference object) would succeed",
    "elsewhere": f"the named object rests more than {NEAR_GAP} m from where it would count",
}


def failure_kind(scene: Scene, task: Task, start_xy: list[tuple[float, float]],
                 ever_held: Collection[int] = ()) -> str | None:
    """The FAILURE_KINDS key that describes the scene at the end of an episode that started with
    the objects at `start_xy` and grasped the objects `ever_held` on the way; None when the task
    holds. The kinds are tried in FAILURE_KINDS order, the more direct reading first."""
    if is_success(scene, task):
        return None
    # Grasped counts as moved: a pick released where it was lifted lands back within MOVED_TOL.
    moved = {i for i, o in enumerate(scene.objects)
             if i in ever_held or scene.held == i or np.hypot(o.x - start_xy[i][0], o.y - start_xy[i][1]) > MOVED_TOL}
    if scene.held == task.target:
        return "held"
    if task.target not in moved:
        return "wrong_object" if moved else "untouched"
    if task.family in ("pick", "pick_extreme"):
        return "dropped"
    if task.family == "move_near" and scene.objects[task.target].on == task.reference:
        return "on_reference"
    if goal_distance(scene, task) <= NEAR_GAP:
        return "near_miss"
    if any(is_success(scene, dataclasses.replace(task, **swap)) for swap in _destination_swaps(scene, task)):
        return "wrong_destination"
    return "elsewhere"


def goal_distance(scene: Scene, task: Task) -> float:
    """Placement families: how far (metres, xy) the named object rests from where the task would
    count: past the near gap, off the reference's top, outside the mat / flag; 0 inside."""
    if task.family == "move_near":
        return max(0.0, scene.edge_gap(task.target, task.reference) - NEAR_GAP)
    if task.family == "put_on":
        return max(0.0, scene.distance_xy(task.target, task.reference) - scene.objects[task.reference].radius)
    if task.family in ("move_to_mat", "move_to_flag"):
        obj = scene.objects[task.target]
        region = scene.mat(task.mat_colour) if task.family == "move_to_mat" else scene.flag(task.country)
        return region.distance_outside(obj.x, obj.y)
    raise ValueError(f"{task.family!r} has no destination")


def _destination_swaps(scene: Scene, task: Task) -> list[dict[str, object]]:
    """The task's destination fields for each other destination the scene offers, in scene order:
    the other mats / flags, or every other object as the reference. [] for the pick families."""
    if task.family == "move_to_mat":
        return [{"mat_colour": m.colour} for m in scene.mats if m.colour != task.mat_colour]
    if task.family == "move_to_flag":
        return [{"country": f.country} for f in scene.flags if f.country != task.country]
    if task.family in ("move_near", "put_on"):
        return [{"reference": j} for j in range(len(scene.objects)) if j not in (task.target, task.reference)]
    return []


# ----------------------------------------------------------------------------- counterfactuals
def _destination_words(scene: Scene, task: Task) -> dict[str, str]:
    """The template slots that name the task's destination."""
    if task.family == "move_to_mat":
        return {"c": task.mat_colour}
    if task.family == "move_to_flag":
        return {"k": task.country, "a": COUNTRIES[task.country]}
    return {"y": scene.objects[task.reference].name}


def counterfactual_destinations(scene: Scene, task: Task, split: str) -> list[Task]:
    """The task with each other destination the scene offers: the other mat / flag, or another
    object as the reference (with a name of its own, one `split` may name as a reference). The
    instruction is the task's template filled again, so only the destination's words change and it
    is an instruction of the same split. [] for families without a destination, or when the
    instruction is not its template's (a hand-made task)."""
    swaps = _destination_swaps(scene, task)
    if task.family in ("move_near", "put_on"):
        names = [o.name for o in scene.objects]
        allowed = {f"{c} {s}" for c, s in language.reference_combos(split)}

        def nameable(j: int) -> bool:
            name = scene.objects[j].name
            return names.count(name) == 1 and name in allowed and name not in task.instruction

        swaps = [s for s in swaps if nameable(s["reference"])]
    if not swaps:
        return []
    mover = scene.objects[task.target].name
    if language.fill(task.template, x=mover, **_destination_words(scene, task)) != task.instruction:
        return []
    out = []
    for swap in swaps:
        other = dataclasses.replace(task, **swap)
        out.append(dataclasses.replace(other, instruction=language.fill(
            task.template, x=mover, **_destination_words(scene, other))))
    return out


# ----------------------------------------------------------------------------- sampling
def check_object_counts(counts, field: str = "object_counts") -> tuple[int, ...]:
    """Objects per scene to draw from uniformly, e.g. (3, 4); fewer distractors = an easier task."""
    try:
        values = tuple(int(c) for c in counts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(field, f"must be a list of integers, got {counts!r}") from exc
    if not values or not all(MIN_OBJECTS <= v <= MAX_OBJECTS for v in values):
        raise ConfigError(field, f"each count must be in [{MIN_OBJECTS}, {MAX_OBJECTS}], "
                                 f"got {counts!r}")
    return values


def check_start_anywhere(value, field: str = "start_anywhere") -> float:
    """The probability that a scene's gripper starts over a random point of the table instead of
    near the robot's base. Training data only: a policy cloned from base starts alone sees the
    approach from one side of every object (README item 12 measures what spreading it does);
    evaluation keeps the real task's start. The coin is drawn per layout attempt and crowded
    layouts are redrawn, which fail more often away from the base: at 0.5, ~46% of kept scenes
    start elsewhere."""
    check_finite(field, value, 0.0, 1.0)
    return float(value)


class TaskSampler:
    """Draws (scene, task) pairs of the given families from one split. Pure function of the rng."""

    def __init__(self, split: str = "train", families: tuple[str, ...] | list[str] | None = None,
                 object_counts: tuple[int, ...] | list[int] = OBJECT_COUNTS, start_anywhere: float = 0.0):
        self.split = check_split(split)
        self.families = check_families(families)
        self.object_counts = check_object_counts(object_counts)
        self.start_anywhere = check_start_anywhere(start_anywhere)

    def sample(self, rng: np.random.Generator, family: str | None = None) -> tuple[Scene, Task]:
        if family is None:
            family = self.families[int(rng.integers(len(self.families)))]
        elif family not in self.families:
            raise ConfigError("family", f"{family!r} is not one of this sampler's {self.families}")
        for _ in range(MAX_LAYOUT_TRIES):
            drawn = self._draw(rng, family)
            if drawn is not None:
                return drawn
        raise RuntimeError(f"could not lay out a {family!r} scene in {MAX_LAYOUT_TRIES} tries")

    def _draw(self, rng: np.random.Generator, family: str) -> tuple[Scene, Task] | None:
        n_objects = int(rng.choice(self.object_counts))
        role_combos, role_sizes = self._objects(rng, family, n_objects)
        # Scene order is a random permutation of the roles (mover, reference, distractors), so
        # neither the index nor the placement order tells which object the task is about.
        order = [int(i) for i in rng.permutation(n_objects)]
        combos = [role_combos[r] for r in order]
        sizes = [role_sizes[r] for r in order]
        target, reference = order.index(0), order.index(1)
        mat_colours = [str(c) for c in rng.choice(list(COLOURS), size=N_MATS, replace=False)]
        countries = [str(c) for c in rng.choice(list(COUNTRIES), size=N_FLAGS, replace=False)]
        boxes = ([(MAT_HALF, MAT_HALF, "mat")] * N_MATS + [(*FLAG_HALF, "flag")] * N_FLAGS
                 + [(SIZES[s], SIZES[s], "object") for s in sizes])
        # No draw at the default 0, so scenes of every seed stay what they were before the option.
        anywhere = self.start_anywhere > 0 and rng.uniform() < self.start_anywhere
        ee = sample_start_ee(rng, anywhere)
        centres = place_items(rng, boxes, keep_out=[(ee[0], ee[1], START_KEEP_OUT, START_KEEP_OUT)])
        if centres is None:
            return None
        mats = [Mat(c, *centres[i]) for i, c in enumerate(mat_colours)]
        flags = [Flag(c, *centres[N_MATS + i]) for i, c in enumerate(countries)]
        objects = [SimObject(col, shape, size, *centres[N_MATS + N_FLAGS + i])
                   for i, ((col, shape), size) in enumerate(zip(combos, sizes))]
        scene = Scene(objects=objects, mats=mats, flags=flags, ee=ee)
        template = str(rng.choice(TEMPLATES[family][self.split]))
        values = {
            "x": objects[target].name,
            "y": objects[reference].name,
            "c": str(rng.choice(mat_colours)),
            "k": str(rng.choice(countries)),
            "e": EXTREMES[0] if role_sizes[0] == "small" else EXTREMES[1],
        }
        values["a"] = COUNTRIES[values["k"]]
        keys = language.placeholders(template)
        task = Task(
            family=family,
            instruction=language.fill(template, **values),
            target=target,
            reference=reference if "y" in keys else None,
            mat_colour=values["c"] if "c" in keys else None,
            country=values["k"] if keys & {"k", "a"} else None,
            extreme=values["e"] if "e" in keys else None,
            template=template,
        )
        return scene, task

    def _objects(self, rng: np.random.Generator, family: str,
                 n: int) -> tuple[list[tuple[str, str]], list[str]]:
        """Distinct colour/shape pairs (mover first, then reference) and size classes."""
        chosen = [_pick(rng, language.mover_combos(self.split))]
        if family in ("move_near", "put_on"):
            chosen.append(_pick(rng, [c for c in language.reference_combos(self.split)
                                      if c not in chosen]))
        if family == "pick_extreme":
            # The target is unnamed, so in train it may be any pair; what must hold is that its
            # size class is strictly the smallest (largest) in the scene.
            chosen = [_pick(rng, language.ALL_COMBOS)]
        while len(chosen) < n:
            chosen.append(_pick(rng, [c for c in language.ALL_COMBOS if c not in chosen]))
        classes = list(SIZES)
        if family == "pick_extreme":
            if rng.random() < 0.5:
                sizes = [classes[0]] + [str(s) for s in rng.choice(classes[1:], size=n - 1)]
            else:
                sizes = [classes[-1]] + [str(s) for s in rng.choice(classes[:-1], size=n - 1)]
        else:
            sizes = [str(s) for s in rng.choice(classes, size=n)]
        return chosen, sizes


def _pick(rng: np.random.Generator, pool) -> tuple[str, str]:
    pool = list(pool)
    return tuple(pool[int(rng.integers(len(pool)))])  # type: ignore[return-value]
