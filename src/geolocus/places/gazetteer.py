"""Offline reverse geocoding and a population prior over GeoNames places.

:class:`Gazetteer` holds every GeoNames place above a population threshold as
column arrays (``lat``, ``lon``, ``population``, ``country_code``) with a k-d
tree over their unit vectors. Chord length between unit vectors grows
monotonically with great-circle distance, so the tree's nearest neighbours are
exactly the nearest places on the sphere, across the antimeridian and at the
poles; distances are then reported by :func:`geolocus.geo.haversine_km`.

Every query method is vectorised: it takes scalars or arrays of latitude and
longitude in degrees (broadcast together) and returns arrays of their shape.

Countries are approximated by the country of the nearest place, which is right
well inside a country and can be wrong within a few tens of km of a border or
for points at sea (they get the nearest coast's country). South of 60°S, the
Antarctic Treaty area, where GeoNames lists no populated place, the country is
Antarctica.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
from scipy.spatial import cKDTree

from geolocus.geo import EARTH_RADIUS_KM, haversine_km, to_unit, validate_latlon
from geolocus.places._data import CONTINENTS, PlaceTables, load_tables
from geolocus.places.text import TEMPLATE, UNKNOWN, join_parts, sentence

#: South of this latitude a location is in Antarctica (the Antarctic Treaty area).
ANTARCTIC_LAT = -60.0
# Query points per chunk in population_within: bounds the memory of the pair list.
_CHUNK = 4096


@dataclass(frozen=True)
class Place:
    """A named place and how far the queried location is from it."""

    name: str
    region: str
    country: str
    country_code: str
    lat: float
    lon: float
    population: int
    distance_km: float
    continent: str = ""

    @property
    def label(self) -> str:
        """ "City, Region, Country", missing or repeated parts left out."""
        return join_parts(self.name, self.region, self.country)

    def describe(self, template: str = TEMPLATE, unknown: str = UNKNOWN) -> str:
        """The TransGeoCLIP sentence, "A photo taken in City, Region, Country."."""
        return sentence(self.label, template, unknown)


def _km_to_chord(radius_km: Any) -> Any:
    """Straight-line distance between unit vectors ``radius_km`` apart on the Earth."""
    ang = np.clip(np.asarray(radius_km, dtype=float) / EARTH_RADIUS_KM, 0.0, np.pi)
    return 2.0 * np.sin(ang / 2.0)


@functools.lru_cache(maxsize=1)
def _tables() -> PlaceTables:
    return load_tables()


class Gazetteer:
    """GeoNames places with at least ``min_population`` inhabitants (use :meth:`load`)."""

    def __init__(self, tables: PlaceTables, min_population: int = 0) -> None:
        self.min_population = int(min_population)
        self._t = tables
        rows = np.flatnonzero(tables.population >= self.min_population)
        self._rows = rows
        #: Latitude, longitude (degrees) and population of each place.
        self.lat: np.ndarray = tables.lat[rows]
        self.lon: np.ndarray = tables.lon[rows]
        self.population: np.ndarray = tables.population[rows]
        self._country = tables.country[rows]
        self._codes = np.array(tables.country_codes, dtype="U2")
        self._names = np.array(tables.country_names, dtype=object)
        self._cont = np.array(
            [CONTINENTS.get(c, "") for c in tables.country_continents], dtype=object
        )
        self._aq = tables.country_codes.index("AQ") if "AQ" in tables.country_codes else -1
        self._tree: cKDTree | None = None

    @classmethod
    def load(cls, min_population: int = 0) -> Gazetteer:
        """The shared gazetteer for this threshold (built once per process; fast after the
        first call on a machine, which converts the GeoNames JSON into a numpy cache)."""
        return _load(int(min_population))

    def __len__(self) -> int:
        return len(self.lat)

    def __repr__(self) -> str:
        return f"Gazetteer({len(self)} places, min_population={self.min_population})"

    # ---- column arrays -------------------------------------------------------------------
    @property
    def country_code(self) -> np.ndarray:
        """ISO 3166-1 alpha-2 code of each place, ``(P,)`` strings."""
        return self._codes[self._country]

    @property
    def tree(self) -> cKDTree:
        """k-d tree over the places' unit vectors (built on first use, ~0.1 s)."""
        if self._tree is None:
            self._tree = cKDTree(to_unit(self.lat, self.lon))
        return self._tree

    # ---- nearest places ------------------------------------------------------------------
    def _points(self, lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray]:
        lat_a, lon_a = np.broadcast_arrays(np.asarray(lat, float), np.asarray(lon, float))
        validate_latlon(lat_a, lon_a)
        if len(self) == 0:
            raise ValueError(f"no place has at least {self.min_population} inhabitants")
        return lat_a, lon_a

    def query(self, lat: Any, lon: Any, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Indices (into this gazetteer's arrays) and distances in km of the ``k`` nearest
        places of each point: shape ``(...)`` for ``k=1``, ``(..., k)`` otherwise."""
        lat_a, lon_a = self._points(lat, lon)
        k_eff = min(int(k), len(self))
        _, idx = self.tree.query(to_unit(lat_a, lon_a).reshape(-1, 3), k=k_eff)
        idx = np.asarray(idx).reshape(lat_a.shape + (() if k == 1 else (k_eff,)))
        la, lo = (lat_a, lon_a) if k == 1 else (lat_a[..., None], lon_a[..., None])
        return idx, haversine_km(la, lo, self.lat[idx], self.lon[idx])

    def place(self, i: int, distance_km: float = 0.0) -> Place:
        """The place at index ``i`` of this gazetteer's arrays."""
        row = self._rows[i]
        c = int(self._t.country[row])
        return Place(
            name=self._t.names[row],
            region=self._t.regions[int(self._t.region[row])],
            country=str(self._names[c]),
            country_code=str(self._codes[c]),
            lat=float(self._t.lat[row]),
            lon=float(self._t.lon[row]),
            population=int(self._t.population[row]),
            distance_km=float(distance_km),
            continent=str(self._cont[c]),
        )

    def nearest(self, lat: float, lon: float, k: int = 1) -> list[Place]:
        """The ``k`` places nearest one point, nearest first."""
        if np.ndim(lat) or np.ndim(lon):
            raise ValueError("nearest() takes one point; use query() or reverse_geocode() for many")
        idx, km = self.query(lat, lon, k=max(int(k), 2))
        return [self.place(int(i), float(d)) for i, d in zip(idx[:k], km[:k], strict=True)]

    def _antarctica(self, lat: float, lon: float) -> Place:
        c = self._aq
        return Place("", "", str(self._names[c]), "AQ", lat, lon, 0, 0.0, "Antarctica")

    @overload
    def reverse_geocode(self, lat: float, lon: float) -> Place: ...
    @overload
    def reverse_geocode(self, lat: Sequence[float] | np.ndarray, lon: Any) -> list[Place]: ...

    def reverse_geocode(self, lat: Any, lon: Any) -> Place | list[Place]:
        """The place each point is in or nearest to: one :class:`Place` for a scalar point,
        a flat list (in C order) for arrays. South of 60°S: Antarctica, with no city."""
        lat_a, lon_a = self._points(lat, lon)
        idx, km = self.query(lat_a, lon_a)
        out = [
            self._antarctica(float(la), float(lo))
            if la < ANTARCTIC_LAT
            else self.place(int(i), float(d))
            for la, lo, i, d in zip(
                lat_a.ravel(), lon_a.ravel(), idx.ravel(), km.ravel(), strict=True
            )
        ]
        return out[0] if lat_a.ndim == 0 else out

    def labels(self, lat: Any, lon: Any) -> list[str]:
        """ "City, Region, Country" of each point (a flat list)."""
        places = self.reverse_geocode(np.atleast_1d(lat), np.atleast_1d(lon))
        return [p.label for p in places]

    def describe(
        self, lat: Any, lon: Any, template: str = TEMPLATE, unknown: str = UNKNOWN
    ) -> str | list[str]:
        """TransGeoCLIP's text view, "A photo taken in {city}, {region}, {country}.": a string
        for one point, a flat list for arrays."""
        one = np.ndim(lat) == 0 and np.ndim(lon) == 0
        out = [sentence(lb, template, unknown) for lb in self.labels(lat, lon)]
        return out[0] if one else out

    # ---- countries -----------------------------------------------------------------------
    def _country_index(self, lat: Any, lon: Any) -> np.ndarray:
        lat_a, lon_a = self._points(lat, lon)
        idx, _ = self.query(lat_a, lon_a)
        c = self._country[idx].astype(np.int64)
        if self._aq >= 0:
            c = np.where(lat_a < ANTARCTIC_LAT, self._aq, c)
        return c

    def country_code_of(self, lat: Any, lon: Any) -> Any:
        """ISO alpha-2 country code of each point (nearest place's country; AQ south of
        60°S): a ``str`` for one point, an array of the points' shape otherwise."""
        return _pick(self._codes, self._country_index(lat, lon))

    def country_of(self, lat: Any, lon: Any) -> Any:
        """Country name of each point, by the same rule and in the same form as
        :meth:`country_code_of`."""
        return _pick(self._names, self._country_index(lat, lon))

    def continent_of(self, lat: Any, lon: Any) -> Any:
        """Continent name of each point's country (form as :meth:`country_code_of`)."""
        return _pick(self._cont, self._country_index(lat, lon))

    def admin_area_of(self, lat: Any, lon: Any) -> np.ndarray:
        """An int64 key of each point's first-level administrative area (admin-1: state,
        province, region), ``(N,)``: the area of the nearest place (no boundary polygons
        offline), i.e. country × 2**20 + region; the country alone where GeoNames gives no
        region, and Antarctica south of 60°S. What PIGEON's semantic geocells start from."""
        lat_a, lon_a = self._points(np.ravel(lat), np.ravel(lon))
        idx, _ = self.query(lat_a, lon_a)
        region = self._t.region[self._rows[idx]].astype(np.int64)
        c = self._country[idx].astype(np.int64)
        if self._aq >= 0:  # Antarctica: its own area, no region
            south = lat_a < ANTARCTIC_LAT
            c, region = np.where(south, self._aq, c), np.where(south, 0, region)
        return c * (1 << 20) + region

    # ---- population prior ----------------------------------------------------------------
    def nearest_km(self, lat: Any, lon: Any) -> np.ndarray:
        """Distance in km from each point to the nearest place of this gazetteer (e.g. of
        ``Gazetteer.load(min_population=100_000)``: the nearest city of 100k or more)."""
        return self.query(lat, lon)[1]

    def _within(self, lat: Any, lon: Any, radius_km: Any, weights: np.ndarray | None) -> np.ndarray:
        lat_a, lon_a = self._points(lat, lon)
        radii = np.atleast_1d(np.asarray(radius_km, dtype=float))
        if radii.ndim != 1 or np.any(~np.isfinite(radii)) or np.any(radii < 0):
            raise ValueError(f"radius_km must be non-negative and finite, got {radius_km!r}")
        chords = _km_to_chord(radii)
        q = to_unit(lat_a, lon_a).reshape(-1, 3)
        out = np.zeros((len(q), len(radii)), dtype=float)
        for s in range(0, len(q), _CHUNK):
            part = cKDTree(q[s : s + _CHUNK])
            pairs = self.tree.sparse_distance_matrix(part, chords.max(), output_type="ndarray")
            w = np.ones(len(pairs)) if weights is None else weights[pairs["i"]]
            for r, ch in enumerate(chords):
                keep = pairs["v"] <= ch
                out[s : s + _CHUNK, r] = np.bincount(
                    pairs["j"][keep], weights=w[keep], minlength=len(part.data)
                )
        shape = lat_a.shape if np.ndim(radius_km) == 0 else (*lat_a.shape, len(radii))
        return out.reshape(shape)

    def population_within(
        self, lat: Any, lon: Any, radius_km: float | Sequence[float]
    ) -> np.ndarray:
        """Total population of the places within ``radius_km`` of each point: shape ``(...)``
        for one radius, ``(..., R)`` for a sequence of radii (computed in one pass)."""
        return self._within(lat, lon, radius_km, self.population.astype(float))

    def count_within(self, lat: Any, lon: Any, radius_km: float | Sequence[float]) -> np.ndarray:
        """Number of places within ``radius_km`` of each point (shapes as population_within)."""
        return self._within(lat, lon, radius_km, None)


def _pick(table: np.ndarray, index: np.ndarray) -> Any:
    """``table[index]``; a plain ``str`` where ``index`` is a single (0-d) position."""
    return str(table[index]) if np.ndim(index) == 0 else table[index]


@functools.lru_cache(maxsize=8)
def _load(min_population: int) -> Gazetteer:
    return Gazetteer(_tables(), min_population)
