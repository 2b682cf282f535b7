"""Name -> object registries with third-party plugins through entry points.

Every pluggable thing (model presets, optimizers, tokenizers, data formats, kernel backends)
lives in one ``Registry``. Built-ins register with the decorator; other distributions add
entries through the ``vesper.<kind>`` entry-point group, loaded lazily on the first lookup.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from vesper_core.errors import ConfigError, UnknownNameError

T = TypeVar("T")

BUILTIN = "builtin"


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    origin: str  # "builtin" or "plugin <distribution> (<module:attr>)"


class Registry(Generic[T]):
    """A named collection that refuses duplicates and explains misses."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        self._plugins_loaded = entry_point_group is None

    # -- registration ------------------------------------------------------------------
    def register(self, name: str, obj: T | None = None, *, aliases: tuple[str, ...] = (),
                 origin: str = BUILTIN):
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator."""

        def add(target: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ConfigError(
                        f"duplicate {self.kind} name {key!r}: already registered by "
                        f"{self._entries[self._aliases.get(key, key)].origin}; pick another name"
                    )
            self._entries[name] = Entry(name, target, origin)
            for alias in aliases:
                self._aliases[alias] = name
            return target

        if obj is None:
            return add
        return add(obj)

    def load_plugins(self) -> None:
        """Import every entry point of this registry's group (once)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            if ep.name in self._entries or ep.name in self._aliases:
                continue  # a built-in (or an earlier plugin) keeps its name
            dist = ep.dist.name if ep.dist is not None else "?"
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the tool
                raise ConfigError(
                    f"plugin {ep.name!r} from {dist} ({ep.value}) failed to load: {exc}; "
                    f"fix or uninstall that package"
                ) from exc
            self.register(ep.name, obj, origin=f"plugin {dist} ({ep.value})")

    # -- lookup ------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """Canonical name for ``name`` (follows aliases); raises UnknownNameError."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        self.load_plugins()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        choices = self.names()
        close = difflib.get_close_matches(name, choices + list(self._aliases), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}{hint} choices: {', '.join(choices)}"
        )

    def get(self, name: str) -> T:
        return self._entries[self.resolve(name)].obj

    def entry(self, name: str) -> Entry[T]:
        return self._entries[self.resolve(name)]

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._entries)

    def aliases(self) -> dict[str, str]:
        self.load_plugins()
        return dict(self._aliases)

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[Entry[T]]:
        self.load_plugins()
        return iter([self._entries[n] for n in sorted(self._entries)])

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and interactive use)."""
        canonical = self.resolve(name)
        del self._entries[canonical]
        for alias, target in list(self._aliases.items()):
            if target == canonical:
                del self._aliases[alias]


Factory = Callable[..., T]
