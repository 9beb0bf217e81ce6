"""Lazy package attributes: `from export import run` imports torch only when `run` is used.

A package's `__init__` lists {name: module} and assigns the returned function to `__getattr__`
(PEP 562), so importing the package itself stays cheap and torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__
