"""CLI command modules, one per stage; each has `register(app)`. Shared helpers live here."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import typer


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
