"""A tiny name -> backend registry used by every board-side facade (runtimes, transports).

Looking up an unknown name raises an error that lists the known names; registering a name that
is already taken (eagerly or lazily) raises one naming the capability and the name, so a second
backend can never silently replace the first. A backend with heavy dependencies (pyserial,
bumble, LiteRT) is registered lazily as ``"module:attribute"`` so it is imported only when a
board actually uses it. It must not import any backend at registration time.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps backend names to factories; ``what`` names the capability in error messages, and
    ``error`` is what an unknown, unavailable or already registered name raises."""

    def __init__(self, what: str, *, error: type[Exception] = KeyError) -> None:
        self.what = what
        self._error = error
        self._factories: dict[str, Callable[..., T]] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` as ``name``; refuses a name already registered."""
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            self._claim(name)
            self._factories[name] = factory
            return factory
        return deco

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:Attribute"``, imported on first ``get(name)``; refuses a
        name already registered."""
        self._claim(name)
        self._lazy[name] = target

    def _claim(self, name: str) -> None:
        if name in self._factories or name in self._lazy:
            where = self._lazy.get(name) or getattr(self._factories[name], "__qualname__", "a factory")
            raise self._error(f"{self.what} {name!r} is already registered (to {where}); "
                              f"expected a new name, not one of {', '.join(self.names())}")

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
