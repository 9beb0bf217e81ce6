"""`rt2edge <command> ...`: parse options, call the stage's one entry function, print the result.

Commands live in `rt2edge/commands/<name>.py`, one small module each with a `register(app)`
function. They import their stage (torch, transformers, onnx) inside the command body, so
`rt2edge --help` and the robot-side commands stay fast and torch-free.
"""

from __future__ import annotations

import importlib

import typer

# Each stage adds its module here as it lands; no placeholder commands.
COMMAND_MODULES: tuple[str, ...] = ("info", "act", "data", "export", "distill", "eval", "bench", "quantize", "pipeline")

app = typer.Typer(
    name="rt2edge",
    help="Distill, quantize, export and benchmark RT-2-style VLA policies for robots.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Distill, quantize, export and benchmark RT-2-style VLA policies for robots."""


@app.command()
def version() -> None:
    """Print the rt2edge version."""
    from rt2edge import __version__

    typer.echo(__version__)


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"rt2edge.commands.{name}").register(app)


_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
