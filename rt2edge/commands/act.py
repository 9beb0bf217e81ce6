"""`rt2edge act ARTIFACT --image IMG --instruction TEXT`: one action from a deploy artifact.

Robot-side: needs only numpy + onnxruntime (+ pillow for PNG/JPEG; a .npy HxWx3 uint8 array works
without it), so an artifact can be smoke-tested on the robot before it drives anything.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from rt2edge.commands import user_errors


def read_image(path: Path):
    """PNG/JPEG via pillow, or a .npy array (H, W, 3) uint8 / float in [0, 1]."""
    import numpy as np

    from rt2edge.errors import InputError
    from rt2edge.optional import require

    if not path.is_file():
        raise InputError("image", f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)  # no pickle: an image file must not run code
    image_module = require("PIL.Image", extra="cpu", purpose=f"reading {path.suffix} images "
                           "(or pass a .npy array)")
    try:
        with image_module.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as exc:  # Pillow's UnidentifiedImageError is an OSError too
        raise InputError("image", f"{path}: cannot be read as an image ({exc})") from exc


def _print(action, provider: str) -> None:
    values = " ".join(f"{v:+.4f}" for v in action.values)
    t = action.timing
    stages = " ".join(f"{k} {v * 1e3:.2f}" for k, v in t.items() if k != "total")
    lines = [f"provider:  {provider}", f"action:    {values}",
             f"terminate: {'yes' if action.terminate else 'no'}",
             f"tokens:    {' '.join(str(int(x)) for x in action.tokens) or '-'}",
             f"latency:   {t.get('total', 0.0) * 1e3:.2f} ms ({stages} ms)"]
    if action.safe_fallback:
        lines.append(f"SAFE FALLBACK: {action.reason}")
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    @app.command()
    def act(
        artifact: Path = typer.Argument(..., help="A deploy artifact folder (manifest.json + graphs)."),
        image: Path = typer.Option(..., "--image", help="RGB image: .png/.jpg (pillow) or .npy."),
        instruction: str = typer.Option(..., "--instruction", help="What the robot should do."),
        providers: str = typer.Option(None, "--providers",
                                      help="Comma-separated backends, best first (cpu, cuda, tensorrt, "
                                           "engine or ONNX Runtime EP names). Default: best available."),
        threads: int = typer.Option(None, "--threads", min=1, help="Intra-op threads per graph."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Log backend selection."),
    ) -> None:
        """Load an artifact (hash-verified) and print the action for one image + instruction."""
        from rt2edge.runtime import Policy

        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format="%(levelname)s %(message)s")
        with user_errors():
            policy = Policy.load(artifact, providers=providers, num_threads=threads)
            action = policy.act(read_image(image), instruction)
        if as_json:
            typer.echo(json.dumps({"provider": policy.provider, **action.to_dict()}, indent=2))
        else:
            _print(action, policy.provider)
        if action.safe_fallback:
            raise typer.Exit(code=1)
