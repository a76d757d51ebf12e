"""What a map shows, in one normal form: guesses, neighbours and the true location.

:func:`as_guesses` accepts what callers have at hand: a ``(k, 2)`` array of (lat,
lon) with a separate ``confidence`` array, a list of mappings
(``{"lat", "lon", "confidence" | "score" | "prob", "radius_km", "label"}``) or of
objects with those attributes (a :class:`geolocus.places.Place`, a prediction
record), or one ``(lat, lon)`` pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from geolocus.errors import InputError
from geolocus.geo import validate_latlon

_CONF_KEYS = ("confidence", "score", "prob", "probability")
_RADIUS_KEYS = ("radius_km", "uncertainty_km")
_LABEL_KEYS = ("label", "name", "place")


@dataclass(frozen=True)
class Guess:
    """One candidate location: ``confidence`` in [0, 1] (or any score), optional radius."""

    lat: float
    lon: float
    confidence: float | None = None
    radius_km: float | None = None
    label: str | None = None


def _field(item: Any, keys: Sequence[str]) -> Any:
    for k in keys:
        v = item.get(k) if isinstance(item, Mapping) else getattr(item, k, None)
        if v is not None:
            return v
    return None


def _opt_float(v: Any, what: str) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {v!r}") from None
    if not np.isfinite(f):
        raise InputError(f"{what} must be finite, got {v!r}")
    return f


def _numeric(guesses: Any) -> np.ndarray | None:
    """``guesses`` as a float array of (lat, lon) pairs, or None if they are records."""
    if isinstance(guesses, Mapping):
        return None
    try:
        arr = np.asarray(guesses, dtype=float)
    except (TypeError, ValueError):
        return None
    if arr.size == 0 or arr.shape[-1] != 2:
        raise InputError(f"guesses must be (k, 2) pairs of (lat, lon), got shape {arr.shape}")
    return arr


def as_guesses(guesses: Any, confidence: Any = None) -> list[Guess]:
    """Normalise ``guesses`` (see the module docstring) into a list of :class:`Guess`."""
    if guesses is None:
        return []
    if isinstance(guesses, Guess):
        guesses = [guesses]
    items: list[Any]
    arr = _numeric(guesses)
    if arr is not None:
        items = [{"lat": a, "lon": b} for a, b in arr.reshape(-1, 2)]
    else:
        items = list(guesses)
    conf = None if confidence is None else np.asarray(confidence, dtype=float).ravel()
    if conf is not None and len(conf) != len(items):
        raise InputError(f"{len(conf)} confidences for {len(items)} guesses")
    out = []
    for i, it in enumerate(items):
        lat, lon = _field(it, ("lat", "latitude")), _field(it, ("lon", "lng", "longitude"))
        if lat is None or lon is None:
            raise InputError(f"guess {i + 1} has no lat/lon: {it!r}"[:200])
        lat_f, lon_f = _opt_float(lat, "lat"), _opt_float(lon, "lon")
        validate_latlon(lat_f, lon_f, what=f"guess {i + 1}")
        c = conf[i] if conf is not None else _field(it, _CONF_KEYS)
        r = _opt_float(_field(it, _RADIUS_KEYS), "radius_km")
        if r is not None and r < 0:
            raise InputError(f"radius_km must be >= 0, got {r}")
        label = _field(it, _LABEL_KEYS)
        out.append(
            Guess(
                lat=float(lat_f),  # type: ignore[arg-type]
                lon=float(lon_f),  # type: ignore[arg-type]
                confidence=_opt_float(c, "confidence"),
                radius_km=r,
                label=None if label is None else str(label),
            )
        )
    return out


def as_points(points: Any, what: str) -> np.ndarray:
    """A ``(n, 2)`` float array of (lat, lon), validated; empty for None."""
    if points is None:
        return np.zeros((0, 2))
    arr = np.asarray(points, dtype=float)
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.shape[-1] != 2:
        raise InputError(f"{what} must be (n, 2) pairs of (lat, lon), got shape {arr.shape}")
    arr = arr.reshape(-1, 2)
    validate_latlon(arr[:, 0], arr[:, 1], what=what)
    return arr
