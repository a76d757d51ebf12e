"""Stage 2, geo-cognitive refinement: choose the answer among retrieved candidates.

``create_refiner(name)`` builds a refiner by name; ``list_refiners()`` lists the
names; :data:`REFINERS` is the registry a new refiner class is added to.
Importing this package imports no refiner (the classes load on first use), so
the command line can list the names cheaply.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from geolocus.registry import Registry

if TYPE_CHECKING:
    from geolocus.refine.base import Ranking, Refiner
    from geolocus.refine.collection import CollectionRefiner
    from geolocus.refine.learned import BestRefiner
    from geolocus.refine.rules import DualGeoRefiner, KDERefiner, NearestRefiner

#: The refiners by name (each class's ``name``), imported on first use.
REFINERS: Registry[Refiner] = Registry("refine method")
REFINERS.register("nearest", "geolocus.refine.rules:NearestRefiner")
REFINERS.register("dualgeo", "geolocus.refine.rules:DualGeoRefiner")
REFINERS.register("kde", "geolocus.refine.rules:KDERefiner")
REFINERS.register("best", "geolocus.refine.learned:BestRefiner")
REFINERS.register("collection", "geolocus.refine.collection:CollectionRefiner")

#: Refiner used when none is named.
DEFAULT_REFINER = "dualgeo"

_LAZY = {
    "Ranking": "geolocus.refine.base",
    "Refiner": "geolocus.refine.base",
    "BestRefiner": "geolocus.refine.learned",
    "CollectionRefiner": "geolocus.refine.collection",
    "DualGeoRefiner": "geolocus.refine.rules",
    "KDERefiner": "geolocus.refine.rules",
    "NearestRefiner": "geolocus.refine.rules",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_refiners() -> list[str]:
    """Names of the registered refiners."""
    return REFINERS.names()


def create_refiner(name: str, **kwargs: Any) -> Refiner:
    """A new refiner by registry name."""
    return REFINERS.create(name, **kwargs)


__all__ = [
    "DEFAULT_REFINER",
    "REFINERS",
    "BestRefiner",
    "CollectionRefiner",
    "DualGeoRefiner",
    "KDERefiner",
    "NearestRefiner",
    "Ranking",
    "Refiner",
    "create_refiner",
    "list_refiners",
]
