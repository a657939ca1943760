"""Name -> component registries (strategies, scenarios, backbones).

Every component registers a builder under a unique name together with its config dataclass, so a YAML
section ``{name: ..., **params}`` can be validated (unknown keys raise) and built the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    """One registered component: its builder (class or function) and its config dataclass (or None)."""

    name: str
    builder: Callable[..., Any]
    config: type | None


class Registry:
    """A named collection of builders. Duplicate names raise; unknown names raise listing the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, config: type | None = None) -> Callable:
        """Decorator registering ``builder`` under ``name`` with its config dataclass."""
        if config is not None and not dataclasses.is_dataclass(config):
            raise TypeError(f"{self.kind} {name!r}: config must be a dataclass, got {config!r}")

        def deco(builder: Callable) -> Callable:
            if name in self._entries:
                old = self._entries[name].builder
                raise KeyError(
                    f"duplicate {self.kind} name {name!r}: already registered by "
                    f"{old.__module__}.{getattr(old, '__qualname__', old)}"
                )
            self._entries[name] = Entry(name, builder, config)
            return builder

        return deco

    def get(self, name: str) -> Entry:
        """The entry for ``name``; an unknown name raises ``KeyError`` listing the valid names."""
        load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; valid {self.kind} names: {self.names()}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        load_builtins()
        return name in self._entries

    def __iter__(self):
        load_builtins()
        return iter(sorted(self._entries))


STRATEGIES = Registry("strategy")
SCENARIOS = Registry("scenario")
BACKBONES = Registry("backbone")

_BUILTIN_PACKAGES = ("ctta.backbones", "ctta.scenarios", "ctta.strategies")
_loaded = False


def load_builtins() -> None:
    """Import every module of the built-in packages so their components register (idempotent).

    Modules whose optional dependencies are missing are skipped only if the import error names that
    dependency; any other import error propagates, so a broken component is never silently absent.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    for pkg_name in _BUILTIN_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{mod.name}")
