"""The one place optional heavy packages are imported (DESIGN.md dependency rule 4).

    trt = require("tensorrt", extra="gpu")

raises MissingDependencyError("... pip install 'rt2edge[gpu]'") instead of a bare ImportError deep
inside a stage, and never hides a broken install behind `except ImportError: pass`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from rt2edge.errors import MissingDependencyError


def is_available(module: str) -> bool:
    """True when `module` can be imported; does not import it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """Import `module` or raise an error that tells the user which rt2edge extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there but one of *its* imports failed: show the real error
        why = f" (needed for {purpose})" if purpose else ""
        raise MissingDependencyError(
            f"'{module}' is not installed{why}. Install it with: pip install 'rt2edge[{extra}]'"
        ) from exc


def require_toml(purpose: str) -> ModuleType:
    """The TOML reader: stdlib `tomllib` from Python 3.11, the `tomli` backport on 3.10 (same API)."""
    return require("tomllib" if sys.version_info >= (3, 11) else "tomli", extra="toolkit", purpose=purpose)
