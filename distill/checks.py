"""Field validators shared by the distill stage's configs (finetune, teacher cache, KD).

Each raises ConfigError naming the field, so a bad CLI option or JSON value is reported as
"--field: must be ..." instead of failing deep inside a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rt2edge.checks import check_finite, check_int
from rt2edge.errors import ConfigError


def positive_int(name: str, value: Any) -> None:
    check_int(name, value, 1)


finite = check_finite  # the distill configs' name for it


def one_of(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(name, f"must be one of {tuple(choices)}, got {value!r}")


def required(name: str, value: Any, what: str) -> None:
    if not value:
        raise ConfigError(name, f"is required ({what})")


def existing_dir(name: str, value: str, what: str) -> None:
    if not Path(value).is_dir():
        raise ConfigError(name, f"{what} {value!r} does not exist")
