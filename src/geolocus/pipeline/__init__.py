"""The end-to-end geolocator: a database of geotagged photos, a model, a refiner.

>>> from geolocus import Geolocator, PlaceSettings
>>> geo = Geolocator.from_database("my-db", refine="dualgeo", places=PlaceSettings(top_k=5))
>>> for pred in geo(["a.jpg", "b.jpg"]):
...     print(pred.image, pred.top.label, pred.top.confidence, pred.top.uncertainty_km)

``Prediction`` / ``Guess`` are the typed answers; :mod:`geolocus.pipeline.formats`
writes them as a table, JSON, CSV or GeoJSON, and an HTML map.
"""

from geolocus.pipeline.formats import FORMATS, render, to_csv, to_geojson, to_json, write_map
from geolocus.pipeline.geolocator import (
    DEFAULT_REFINER,
    GallerySettings,
    Geolocator,
    LMMSettings,
    PlaceSettings,
    RetrievalSettings,
    expand_inputs,
)
from geolocus.pipeline.results import Guess, Prediction

__all__ = [
    "DEFAULT_REFINER",
    "FORMATS",
    "GallerySettings",
    "Geolocator",
    "Guess",
    "LMMSettings",
    "PlaceSettings",
    "Prediction",
    "RetrievalSettings",
    "expand_inputs",
    "render",
    "to_csv",
    "to_geojson",
    "to_json",
    "write_map",
]
