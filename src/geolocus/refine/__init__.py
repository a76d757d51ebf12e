"""Stage 2, geo-cognitive refinement: choose the answer among retrieved candidates.

``create(name)`` builds a refiner by name; ``available()`` lists the names.
"""

from __future__ import annotations

from geolocus.errors import InputError
from geolocus.refine.base import Ranking, Refiner
from geolocus.refine.learned import BestRefiner
from geolocus.refine.rules import DualGeoRefiner, KDERefiner, NearestRefiner

_REGISTRY: dict[str, type[Refiner]] = {
    cls.name: cls for cls in (NearestRefiner, DualGeoRefiner, KDERefiner, BestRefiner)
}


def register(cls: type[Refiner]) -> type[Refiner]:
    """Add a refiner class to the registry (usable as a decorator)."""
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of the registered refiners."""
    return sorted(_REGISTRY)


def create(name: str, **kwargs) -> Refiner:
    """A new refiner by registry name."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise InputError(
            f"unknown refine method {name!r}; choose one of: {', '.join(available())}"
        ) from None
    return cls(**kwargs)


__all__ = [
    "BestRefiner",
    "DualGeoRefiner",
    "KDERefiner",
    "NearestRefiner",
    "Ranking",
    "Refiner",
    "available",
    "create",
    "register",
]
