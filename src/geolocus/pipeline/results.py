"""Typed answers of the geolocator: :class:`Prediction` per photo, :class:`Guess` per place."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geolocus.data.neighbours import Neighbours
from geolocus.geo import haversine_km
from geolocus.places import Place

#: Beyond this distance from the nearest named place, a label says how far it is.
NEAR_PLACE_KM = 25.0


def place_label(place: Place | None) -> str:
    """ "City, Region, Country", or "40 km from City, ..." away from any named place."""
    if place is None:
        return ""
    if place.distance_km > NEAR_PLACE_KM:
        return f"{place.distance_km:.0f} km from {place.label}"
    return place.label


def _num(x: float | None, nd: int) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


@dataclass
class Guess:
    """One candidate location for a photo.

    ``confidence``: probability mass of the place when the method gives
    probabilities, else its share among the guesses shown (None for an answer
    a multimodal model proposed on its own). ``uncertainty_km``: spread of the
    evidence around the place (see :mod:`geolocus.pipeline.candidates`).
    ``source``: ``retrieval``, ``gallery`` (a location head) or ``lmm``.
    """

    lat: float
    lon: float
    confidence: float | None
    place: Place | None = None
    uncertainty_km: float | None = None
    source: str = "retrieval"

    @property
    def label(self) -> str:
        return place_label(self.place)

    def to_dict(self) -> dict[str, Any]:
        p = self.place
        return {
            "lat": round(self.lat, 6),
            "lon": round(self.lon, 6),
            "confidence": _num(self.confidence, 4),
            "uncertainty_km": _num(self.uncertainty_km, 1),
            "place": self.label,
            "city": p.name if p else None,
            "region": p.region if p else None,
            "country": p.country if p else None,
            "country_code": p.country_code if p else None,
            "place_distance_km": _num(p.distance_km, 1) if p else None,
            "source": self.source,
        }


@dataclass
class Heatmap:
    """A gallery model's probability of every location of its gallery for one photo:
    ``coords (N, 2)`` (shared between photos, not copied) and ``probs (N,)``."""

    coords: np.ndarray
    probs: np.ndarray

    def strongest(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most probable locations and their probabilities, most probable first."""
        n = min(n, len(self.probs))
        idx = np.argsort(-self.probs, kind="stable")[:n]
        return self.coords[idx], self.probs[idx]

    def to_dict(self) -> dict[str, Any]:
        """Columns ``lat``, ``lon``, ``probability`` (every gallery location, in its order)."""
        return {
            "lat": np.round(self.coords[:, 0], 5).tolist(),
            "lon": np.round(self.coords[:, 1], 5).tolist(),
            "probability": [float(f"{p:.6g}") for p in self.probs],
        }


@dataclass
class Prediction:
    """Where one photo was taken: ``guesses`` best first, or an ``error``.

    ``exif_gps`` is the photo's own EXIF position when it has one — never an
    input, only reported beside the answer (with :attr:`exif_error_km`).
    ``neighbours`` are the photo's retrieved database photos (near and far);
    ``heatmap`` a gallery model's probability of every gallery location, when asked for
    (:class:`~geolocus.pipeline.geolocator.GallerySettings`).
    """

    image: str
    guesses: list[Guess] = field(default_factory=list)
    exif_gps: tuple[float, float] | None = None
    neighbours: Neighbours | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    heatmap: Heatmap | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.guesses)

    @property
    def top(self) -> Guess | None:
        return self.guesses[0] if self.guesses else None

    @property
    def exif_error_km(self) -> float | None:
        """Distance from guess 1 to the photo's EXIF GPS position, where both exist."""
        if self.exif_gps is None or not self.guesses:
            return None
        g = self.guesses[0]
        return float(haversine_km(g.lat, g.lon, self.exif_gps[0], self.exif_gps[1]))

    def neighbour_records(self, far: bool = False) -> list[dict[str, Any]]:
        nb = self.neighbours
        if nb is None:
            return []
        pts = nb.far[0] if far else nb.near[0]
        ids = nb.far_ids if far else nb.near_ids
        sc = nb.far_scores if far else nb.near_scores
        return [
            {
                "id": None if ids is None else str(ids[0][i]),
                "lat": round(float(pts[i, 0]), 6),
                "lon": round(float(pts[i, 1]), 6),
                "score": None if sc is None else round(float(sc[0][i]), 5),
            }
            for i in range(len(pts))
        ]

    def to_dict(self, neighbours: bool = True, heatmap: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "image": self.image,
            "error": self.error,
            # rank 1 is the answer; the others in stage 2's order (see formats.ORDER_NOTE)
            "guesses": [{"rank": r, **g.to_dict()} for r, g in enumerate(self.guesses, 1)],
            "exif_gps": None if self.exif_gps is None else [*map(float, self.exif_gps)],
            "exif_error_km": _num(self.exif_error_km, 3),
        }
        if self.notes:
            d["notes"] = list(self.notes)
        if neighbours and self.neighbours is not None:
            d["neighbours"] = {
                "near": self.neighbour_records(),
                "far": self.neighbour_records(far=True),
            }
        if heatmap and self.heatmap is not None:
            d["heatmap"] = self.heatmap.to_dict()
        return d

    def to_json(self, neighbours: bool = True) -> str:
        """:meth:`to_dict` as a JSON string."""
        import json

        return json.dumps(self.to_dict(neighbours), ensure_ascii=False)

    def geojson_features(self) -> list[dict[str, Any]]:
        """GeoJSON Point features: one per guess, and the EXIF position if any."""
        feats = []
        for rank, g in enumerate(self.guesses, start=1):
            props = {"image": self.image, "rank": rank, "kind": "guess", **g.to_dict()}
            props.pop("lat")
            props.pop("lon")
            feats.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [g.lon, g.lat]},
                    "properties": props,
                }
            )
        if self.exif_gps is not None:
            la, lo = self.exif_gps
            feats.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [float(lo), float(la)]},
                    "properties": {
                        "image": self.image,
                        "kind": "exif",
                        "exif_error_km": _num(self.exif_error_km, 3),
                    },
                }
            )
        return feats

    def to_geojson(self) -> dict[str, Any]:
        return {"type": "FeatureCollection", "features": self.geojson_features()}


def top1(predictions: list[Prediction]) -> np.ndarray:
    """``(N, 2)`` guess 1 of each prediction (NaN where there is none)."""
    out = np.full((len(predictions), 2), np.nan)
    for i, p in enumerate(predictions):
        if p.top is not None:
            out[i] = (p.top.lat, p.top.lon)
    return out
