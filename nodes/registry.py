"""A tiny name -> backend registry used by every board-side facade (runtimes, transports).

Looking up an unknown name raises an error that lists the known names.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps backend names to factories; ``what`` names the capability in error messages."""

    def __init__(self, what: str, *, error: type[Exception] = KeyError) -> None:
        self.what = what
        self._error = error
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            self._factories[name] = factory
            return factory
        return deco

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            raise self._error(f"unknown {self.what} {name!r}; expected one of {', '.join(self.names())}") from None
