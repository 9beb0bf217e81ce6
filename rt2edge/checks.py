"""Value checks shared by every stage's config: each raises ConfigError naming the field."""

from __future__ import annotations

from typing import Any

from rt2edge.errors import ConfigError


def is_int(value: Any) -> bool:
    """A real int: True/False are ints to Python but never a count, size or seed here."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """`value` is an int >= low (and <= high when given), else ConfigError on `name`."""
    if not is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(name, f"must be an int {bound}, got {value!r}")
