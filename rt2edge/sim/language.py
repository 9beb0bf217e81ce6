"""Instruction templates, the train / heldout split of language and objects, and the corpus.

[Contract] Splits:
  train    instructions use a TRAIN template and name only TRAIN_COMBOS objects.
  heldout  instructions use a HELDOUT template (a paraphrase no train template produces) and the
           object to move is one of HELDOUT_COMBOS (colour/shape pairs never named in train), so
           no heldout instruction can appear in the train corpus. Heldout templates reuse train
           words, so a text tokenizer trained on the train corpus has no unknown words.
Distractor objects may be of any combination in both splits: unseen combos are visible but never
named in train.
"""

from __future__ import annotations

import itertools
import string

from rt2edge.errors import ConfigError
from rt2edge.sim.world import COLOURS, COUNTRIES, SHAPES

SPLITS = ("train", "heldout")
FAMILIES = ("pick", "move_near", "put_on", "pick_extreme", "move_to_mat", "move_to_flag")
EXTREMES = ("smallest", "largest")

# One unseen colour/shape pair per shape plus one more, each colour and shape still seen in train.
HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"), ("green", "cube"), ("blue", "sphere"), ("yellow", "triangle"),
)
ALL_COMBOS: tuple[tuple[str, str], ...] = tuple(itertools.product(COLOURS, SHAPES))
TRAIN_COMBOS: tuple[tuple[str, str], ...] = tuple(c for c in ALL_COMBOS if c not in HELDOUT_COMBOS)

# Placeholders: {x} object to move, {y} reference object, {c} mat colour, {k} country,
# {a} country adjective, {e} smallest/largest.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "pick": {
        "train": ("pick up the {x}", "pick the {x}", "lift the {x}", "grab the {x} and lift it"),
        "heldout": ("lift up the {x}", "grab the {x} and pick it up"),
    },
    "move_near": {
        "train": ("move the {x} near the {y}", "move the {x} next to the {y}",
                  "put the {x} near the {y}"),
        "heldout": ("place the {x} next to the {y}", "put the {x} next to the {y}"),
    },
    "put_on": {
        "train": ("put the {x} on the {y}", "place the {x} on top of the {y}",
                  "stack the {x} on the {y}"),
        "heldout": ("put the {x} on top of the {y}", "stack the {x} on top of the {y}"),
    },
    "pick_extreme": {
        "train": ("pick up the {e} object", "pick the {e} object", "lift the {e} object"),
        "heldout": ("grab the {e} object and lift it", "lift up the {e} object"),
    },
    "move_to_mat": {
        "train": ("move the {x} to the {c} mat", "put the {x} on the {c} mat",
                  "place the {x} on the {c} mat"),
        "heldout": ("move the {x} on top of the {c} mat", "put the {x} on top of the {c} mat"),
    },
    "move_to_flag": {
        "train": ("move the {x} to the flag of {k}", "put the {x} on the flag of {k}",
                  "place the {x} on the {a} flag"),
        "heldout": ("move the {x} to the {a} flag", "put the {x} on top of the flag of {k}"),
    },
}


def check_split(split: str, field: str = "split") -> str:
    if split not in SPLITS:
        raise ConfigError(field, f"must be one of {SPLITS}, got {split!r}")
    return split


def check_families(families: tuple[str, ...] | list[str] | None,
                   field: str = "families") -> tuple[str, ...]:
    if families is None:
        return FAMILIES
    fams = tuple(families)
    unknown = [f for f in fams if f not in FAMILIES]
    if not fams or unknown:
        raise ConfigError(field, f"unknown task families {unknown or fams}; choose from {FAMILIES}")
    return fams


def mover_combos(split: str) -> tuple[tuple[str, str], ...]:
    """Colour/shape pairs the object to move ({x}) may have in `split`."""
    return TRAIN_COMBOS if check_split(split) == "train" else HELDOUT_COMBOS


def reference_combos(split: str) -> tuple[tuple[str, str], ...]:
    """Pairs a named reference object ({y}) may have: train never names an unseen pair."""
    return TRAIN_COMBOS if check_split(split) == "train" else ALL_COMBOS


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def fill(template: str, **values: str) -> str:
    """Fill a template; extra values are ignored so callers can pass everything they know."""
    return template.format(**{k: v for k, v in values.items() if k in placeholders(template)})


def instructions_of(family: str, split: str) -> list[str]:
    """Every instruction the sampler can produce for `family` in `split` (sorted, unique)."""
    movers = [f"{c} {s}" for c, s in mover_combos(split)]
    texts = set()
    for template in TEMPLATES[family][check_split(split)]:
        keys = placeholders(template)
        xs = movers if "x" in keys else [""]
        for x in xs:
            ys = ([f"{c} {s}" for c, s in reference_combos(split) if f"{c} {s}" != x]
                  if "y" in keys else [""])
            for y, colour, (country, adj), extreme in itertools.product(
                ys,
                COLOURS if "c" in keys else [""],
                COUNTRIES.items() if keys & {"k", "a"} else [("", "")],
                EXTREMES if "e" in keys else [""],
            ):
                texts.add(fill(template, x=x, y=y, c=colour, k=country, a=adj, e=extreme))
    return sorted(texts)
