"""A name -> factory registry, so that `--objective NAME`, `--method NAME`, `--backbone NAME`
find their component and an unknown name gets the closest valid ones in its error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
