"""Stage 2, geo-cognitive refinement: choose the answer among retrieved candidates.

``create_refiner(name)`` builds a refiner by name; ``list_refiners()`` lists the
names; :data:`REFINERS` is the registry a new refiner class is added to.
"""

from __future__ import annotations

from typing import Any

from geolocus.refine.base import REFINERS, Ranking, Refiner
from geolocus.refine.learned import BestRefiner
from geolocus.refine.rules import DualGeoRefiner, KDERefiner, NearestRefiner

for _cls in (NearestRefiner, DualGeoRefiner, KDERefiner, BestRefiner):
    REFINERS.register(_cls.name, _cls)

#: Refiner used when none is named.
DEFAULT_REFINER = "dualgeo"


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
    "DualGeoRefiner",
    "KDERefiner",
    "NearestRefiner",
    "Ranking",
    "Refiner",
    "create_refiner",
    "list_refiners",
]
