"""A small name -> object registry shared by question sets, generation backends, judges and scoring
conventions (and usable by any other "looked up by name" concept). Upper floors register into lower
ones' registries (the toy world registers its question set and exact judge into eval's), so a lower
floor never imports an upper one. Unknown names raise UnknownNameError listing the known ones; CLI
`choices=` come from `names()`."""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any


class UnknownNameError(KeyError):
    """A name that is not in a registry; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain sentence
        return str(self.args[0])


class Registry:
    """`kind` names what is registered ("judge", "question set", ...) for error messages.

    `plugins` are module names imported on first lookup so that they can register themselves (e.g.
    "evilbench.toyworld.eval_plugin"), which keeps import order irrelevant without eval importing them
    at module level."""

    def __init__(self, kind: str, plugins: tuple[str, ...] = ()):
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._plugins = list(plugins)

    def _load_plugins(self) -> None:
        while self._plugins:
            importlib.import_module(self._plugins.pop(0))

    def register(self, name: str, obj: Any = None, *, replace: bool = False) -> Any:
        """register(name, obj), or @register(name) as a decorator."""
        if obj is None:
            def deco(o):
                self.register(name, o, replace=replace)
                return o
            return deco
        if name in self._items and not replace and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> Any:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        self._load_plugins()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, Any]]:
        self._load_plugins()
        return list(self._items.items())

