"""A tiny name -> backend registry used by every board-side facade (runtimes, transports).

Looking up an unknown name raises an error that lists the known names. A backend with heavy
dependencies (pyserial, bumble, LiteRT) is registered lazily as ``"module:attribute"`` so it is
imported only when a board actually uses it.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps backend names to factories; ``what`` names the capability in error messages."""

    def __init__(self, what: str, *, error: type[Exception] = KeyError) -> None:
        self.what = what
        self._error = error
        self._factories: dict[str, Callable[..., T]] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            self._factories[name] = factory
            return factory
        return deco

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:Attribute"``, imported on first ``get(name)``."""
        self._lazy[name] = target

    def names(self) -> list[str]:
        return sorted({*self._factories, *self._lazy})

    def get(self, name: str) -> Callable[..., T]:
        if name in self._factories:
            return self._factories[name]
        if name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            try:
                factory = getattr(importlib.import_module(module), attr)
            except ImportError as exc:
                raise self._error(f"{self.what} {name!r} is not available on this machine: {exc}") from exc
            self._factories[name] = factory
            return factory
        raise self._error(f"unknown {self.what} {name!r}; expected one of {', '.join(self.names())}")
