"""`Registry`: name -> handler tables (VLM families, export targets/adapters, ...), numpy-free.

Stages register what they support with a decorator instead of growing if/elif chains (torchao's
`register_quantize_module_handler`), and an unknown name is refused with a ConfigError naming the
field and listing what is registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from rt2edge.errors import ConfigError

T = TypeVar("T")
_REQUIRED = object()  # Registry.get without a default raises instead of returning None


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping filled by `register_class`; `get` gives a typed error for unknown names."""

    def __init__(self, kind: str, field: str):
        self.kind = kind  # what the entries are, for messages: "VLM family", "export target"
        self.field = field  # the config field / option a user sets to pick one
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item

    def register_class(self, key: str) -> Callable[[type], type]:
        """Class decorator: registers one instance of the class under its attribute `key`."""

        def decorate(cls: type) -> type:
            self.add(getattr(cls, key), cls())
            return cls

        return decorate

    def get(self, name: str, default: object = _REQUIRED) -> T:  # type: ignore[override]
        """The entry called `name`; unknown: `default` if given (as Mapping.get), else ConfigError."""
        if name in self._items:
            return self._items[name]
        if default is not _REQUIRED:
            return default  # type: ignore[return-value]
        raise ConfigError(self.field, f"unknown {self.kind} {name!r}; registered: "
                                          f"{sorted(self._items)}")

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
