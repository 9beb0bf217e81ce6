"""CLI command modules, one per stage; each has `register(app)`. Shared helpers live here."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import typer

from rt2edge.errors import ConfigError


def bad_option(exc: ConfigError, aliases: Mapping[str, str] | None = None) -> typer.BadParameter:
    """A config error as a usage error on the option that sets the field (`--field-name`, or the
    command's own name for it in `aliases`)."""
    option = (aliases or {}).get(exc.field, exc.field.replace("_", "-"))
    return typer.BadParameter(str(exc), param_hint=f"--{option}")


def int_list(text: str, field: str) -> list[int]:
    """`"3,4"` -> [3, 4]; anything else is a ConfigError on `field`."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(field, f"expected comma-separated integers, got {text!r}") from exc


@contextmanager
def user_errors() -> Iterator[None]:
    """Typed rt2edge errors (bad input, corrupt artifact, missing extra) print one line and exit 2
    instead of a traceback: they are the user's to fix, not a bug."""
    from rt2edge.errors import Rt2EdgeError

    try:
        yield
    except Rt2EdgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
