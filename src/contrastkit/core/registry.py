"""Registries: names -> components, so that ``--objective NAME``, ``--method NAME``,
``--backbone NAME`` find their component and an unknown name gets the closest valid ones.

- :class:`Registry`: name -> factory, filled by decorators (objectives, backbones).
- :data:`METHODS` (:class:`MethodRegistry`): the one registry of methods of every modality; lazy,
  so that listing methods or parsing a command imports no method's code."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from contrastkit.core.errors import ConfigError, unknown_name_message


class Registry:
    """Maps names to factories (classes or functions). ``kind`` is used in error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, *names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@OBJECTIVES.register("infonce", "ntxent")``."""

        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            for name in names:
                if name in self._factories:
                    raise ValueError(f"{self.kind} '{name}' is registered twice")
                self._factories[name] = factory
            return factory

        return decorate

    def factory(self, name: str) -> Callable[..., Any]:
        if name not in self._factories:
            raise ConfigError(unknown_name_message(self.kind, name, self._factories))
        return self._factories[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.factory(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclass(frozen=True)
class MethodEntry:
    """One method of one modality, known by name before anything heavy is imported.

    ``target`` is ``"package.module:attribute"``: the method's builder (or class), imported only when
    the method is built. ``excluded_options`` are options of the modality's command line that do not
    apply to this method (giving one is an error that lists the method's options)."""

    modality: str
    name: str
    target: str
    summary: str
    excluded_options: frozenset[str] = frozenset()


class MethodRegistry:
    """The one registry of methods of every modality: (modality, name) -> :class:`MethodEntry`.

    Lazy: modalities add entries from light modules (``contrastkit.modalities.<m>.plugin``), and a
    method's code is imported by :meth:`load`. A name may be shared by several modalities (SimCLR on
    images and on spectrograms); :meth:`resolve` then needs the modality."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], MethodEntry] = {}

    def add(self, modality: str, name: str, target: str, summary: str,
            excluded_options: Iterable[str] = ()) -> MethodEntry:
        if (modality, name) in self._entries:
            raise ValueError(f"method '{name}' of modality '{modality}' is registered twice")
        if ":" not in target:
            raise ValueError(f"method '{name}': target must be 'module:attribute', got '{target}'")
        entry = MethodEntry(modality, name, target, summary, frozenset(excluded_options))
        self._entries[(modality, name)] = entry
        return entry

    def remove(self, modality: str, name: str) -> None:
        del self._entries[(modality, name)]

    def entries(self, name: str | None = None, modality: str | None = None) -> list[MethodEntry]:
        return [e for (m, n), e in sorted(self._entries.items())
                if (name is None or n == name) and (modality is None or m == modality)]

    def names(self, modality: str | None = None) -> list[str]:
        return sorted({e.name for e in self.entries(modality=modality)})

    def modalities(self) -> list[str]:
        return sorted({m for m, _ in self._entries})

    def get(self, modality: str, name: str) -> MethodEntry:
        if (modality, name) not in self._entries:
            raise ConfigError(unknown_name_message(f"{modality} method", name, self.names(modality)))
        return self._entries[(modality, name)]

    def load(self, modality: str, name: str) -> Any:
        """The builder (or class) of a method, imported now."""
        module, _, attribute = self.get(modality, name).target.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def resolve(self, name: str, modality: str | None = None,
                recognise: Callable[[list[str]], list[str]] | None = None) -> MethodEntry:
        """The entry called ``name``: of ``modality`` when given; else the only one with that name;
        else the one whose modality ``recognise(candidates)`` picks (e.g. from the data); else a
        ConfigError saying which ``--modality`` to add."""
        candidates = self.entries(name=name)
        if not candidates:
            raise ConfigError(unknown_name_message("method", name, self.names()))
        if modality is not None:
            return self.get(modality, name)
        if len(candidates) == 1:
            return candidates[0]
        modalities = [e.modality for e in candidates]
        picked = recognise(modalities) if recognise is not None else []
        if len(picked) == 1:
            return self.get(picked[0], name)
        raise ConfigError(f"Method '{name}' exists for several modalities ({', '.join(modalities)}) and the data "
                          f"does not say which: add --modality {' or --modality '.join(modalities)}.")

    def __contains__(self, name: object) -> bool:
        return any(n == name for _, n in self._entries)


# Every method of every modality; filled by contrastkit.modalities.load_plugins().
METHODS = MethodRegistry()
