"""VQA about a scene: questions whose answers are computed from the scene state.

Used for RT-2-style co-training (rt2edge.data.vqa renders the images). Only questions with one
clear answer are asked: spatial relations need a margin (SPATIAL_MARGIN, ~3 px at 64x64) and
"largest" needs a unique size class. Answers are short lowercase words.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from rt2edge.sim.world import COLOURS, COUNTRIES, SHAPES, Scene

SPATIAL_MARGIN = 0.05
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
DIRECTIONS = {  # word -> (axis, sign): "left" = smaller x, "top" = larger y (image up)
    "left": (0, -1), "right": (0, 1), "top": (1, 1), "bottom": (1, -1),
}
PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
           "bottom": "at the bottom"}


@dataclass(frozen=True)
class Question:
    kind: str
    question: str
    answer: str


def _plural(shape: str) -> str:
    return shape + "s"


def _extreme(scene: Scene, largest: bool) -> str | None:
    radii = [o.radius for o in scene.objects]
    best = max(radii) if largest else min(radii)
    winners = [o for o in scene.objects if o.radius == best]
    return winners[0].name if len(winners) == 1 else None


def _pair_position(items, direction: str) -> object | None:
    """The one of two items lying clearly further in `direction`, else None."""
    axis, sign = DIRECTIONS[direction]
    if len(items) != 2:
        return None
    a, b = items
    pa, pb = (a.x, a.y)[axis] * sign, (b.x, b.y)[axis] * sign
    if abs(pa - pb) < SPATIAL_MARGIN * 2:
        return None
    return a if pa > pb else b


def scene_questions(scene: Scene) -> list[Question]:
    """Every question this module can ask about `scene`, with its answer."""
    out: list[Question] = []
    objects = [o for o in scene.objects]
    by_shape = {s: [o for o in objects if o.shape == s] for s in SHAPES}
    by_colour = {c: [o for o in objects if o.colour == c] for c in COLOURS}
    for shape, found in by_shape.items():
        out.append(Question("count_shape", f"how many {_plural(shape)} are there?",
                            NUMBERS[len(found)]))
        if len(found) == 1:
            out.append(Question("colour_of_shape", f"what colour is the {shape}?", found[0].colour))
    for colour, found in by_colour.items():
        if len(found) == 1:
            out.append(Question("shape_of_colour", f"what shape is the {colour} object?",
                                found[0].shape))
    out.append(Question("count_objects", "how many objects are there?", NUMBERS[len(objects)]))
    for word, largest in (("largest", True), ("smallest", False)):
        name = _extreme(scene, largest)
        if name is not None:
            out.append(Question("extreme", f"which object is the {word}?", name))
    for obj in objects:
        for side in ("left", "right"):
            axis, sign = DIRECTIONS[side]
            others = [o for o in objects if o is not obj
                      and (o.x - obj.x) * sign > SPATIAL_MARGIN]
            if len(others) == 1:
                out.append(Question("relation",
                                    f"what colour is the object {side} of the {obj.name}?",
                                    others[0].colour))
        for mat in scene.mats:
            on = scene.held is None or scene.objects[scene.held] is not obj
            answer = "yes" if on and obj.z == 0.0 and mat.contains(obj.x, obj.y) else "no"
            out.append(Question("on_mat", f"is the {obj.name} on the {mat.colour} mat?", answer))
    for direction, phrase in PHRASES.items():
        flag = _pair_position(scene.flags, direction)
        if flag is not None:
            out.append(Question("flag_position", f"which flag is {phrase}?", flag.country))
        mat = _pair_position(scene.mats, direction)
        if mat is not None:
            out.append(Question("mat_position", f"what colour is the mat {phrase}?", mat.colour))
    out.append(Question("gripper", "is the gripper open?", "no" if scene.gripper_closed else "yes"))
    held = None if scene.held is None else scene.objects[scene.held].name
    out.append(Question("holding", "is the robot holding something?",
                        "no" if held is None else "yes"))
    out.append(Question("holding", "what is the robot holding?", held or "nothing"))
    return out


def question_corpus() -> list[str]:
    """Every question and answer text `scene_questions` can produce (sorted, unique)."""
    names = [f"{c} {s}" for c, s in itertools.product(COLOURS, SHAPES)]
    texts = set(NUMBERS) | set(COLOURS) | set(SHAPES) | set(COUNTRIES) | set(names)
    texts |= {"yes", "no", "nothing", "how many objects are there?", "is the gripper open?",
              "is the robot holding something?", "what is the robot holding?"}
    for shape in SHAPES:
        texts |= {f"how many {_plural(shape)} are there?", f"what colour is the {shape}?"}
    for colour in COLOURS:
        texts.add(f"what shape is the {colour} object?")
    texts |= {f"which object is the {w}?" for w in ("largest", "smallest")}
    for name in names:
        texts |= {f"what colour is the object {side} of the {name}?" for side in ("left", "right")}
        texts |= {f"is the {name} on the {c} mat?" for c in COLOURS}
    for phrase in PHRASES.values():
        texts |= {f"which flag is {phrase}?", f"what colour is the mat {phrase}?"}
    return sorted(texts)
