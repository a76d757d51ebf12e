"""One registry type for everything geolocus builds by name.

Refiners, trainable models, image and location encoders, segmenters and OCR
backends each keep a :class:`Registry`: ``register(name)`` adds a factory (a
class or function, or a ``"module:attribute"`` string imported on first use, so
that listing names never imports torch), ``names()`` lists them in registration
order, ``create(name, **kw)`` builds one, and an unknown name is one user error
that lists the choices.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

from geolocus.errors import GeolocusError, InputError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Named factories of ``T``; ``kind`` names them in messages ("refiner", ...)."""

    def __init__(self, kind: str, error: type[GeolocusError] = InputError) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, Callable[..., T] | str] = {}

    @overload
    def register(self, name: str) -> Callable[[F], F]: ...

    @overload
    def register(self, name: str, factory: Callable[..., T] | str) -> None: ...

    def register(self, name: str, factory: Callable[..., T] | str | None = None) -> Any:
        """Add ``factory`` under ``name`` (replacing an earlier one); without ``factory``,
        a decorator that registers what it decorates."""
        if factory is not None:
            self._entries[name] = factory
            return None

        def decorate(f: F) -> F:
            self._entries[name] = f
            return f

        return decorate

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name`` (imported now if it was given as a string)."""
        try:
            entry = self._entries[name]
        except KeyError:
            raise self.error(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            entry = self._entries[name] = obj
        return entry

    def create(self, name: str, **kwargs: Any) -> T:
        """A new ``T`` from the factory registered under ``name``."""
        return self.get(name)(**kwargs)
