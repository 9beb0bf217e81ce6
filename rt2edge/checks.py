"""Value checks shared by every stage's config: each raises ConfigError naming the field."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Iterable, Mapping

from rt2edge.errors import ConfigError


def is_int(value: Any) -> bool:
    """A real int: True/False are ints to Python but never a count, size or seed here."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """`value` is an int >= low (and <= high when given), else ConfigError on `name`."""
    if not is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(name, f"must be an int {bound}, got {value!r}")


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> None:
    """low <= value (low < value when low_open) and value <= high, each bound when given."""
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(name, f"must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(name, f"must be <= {high}, got {value}")


def check_finite(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:
    """`value` is a finite int or float (not a bool) within the bounds given, else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    check_range(name, value, low, high, low_open)


def check_known_keys(cls: type, data: Any, also: Iterable[str] = ()) -> None:
    """`data` is a mapping whose keys are fields of the dataclass `cls` (or in `also`: keys a
    saved config may carry that are not settings), else ConfigError naming the first unknown key."""
    if not isinstance(data, Mapping):
        raise ConfigError("config", f"expected a mapping of {cls.__name__} settings, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known - set(also))
    if unknown:
        raise ConfigError(unknown[0], f"is not a {cls.__name__} setting (known: {sorted(known)})")
