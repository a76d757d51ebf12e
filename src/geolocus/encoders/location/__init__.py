"""Location encoders: GPS coordinates -> embeddings in the space images are aligned to.

- :class:`GeoCLIPLocationEncoder`: GeoCLIP's (Equal Earth, random Fourier
  features at three scales, one MLP each, summed), with its pretrained weights
  from the ``geoclip`` wheel;
- :class:`TransGeoLocationEncoder`: TransGeoCLIP's (scale tokens through a
  Transformer, then location attention over great-circle distances).

``create_location_encoder(name)`` builds one by name. Importing this package
does not import torch; the classes load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

import geolocus.encoders.location.pretrained  # noqa: F401  (registers GeoCLIP's weights)
from geolocus.errors import InputError
from geolocus.registry import Registry

_LAZY = {
    "GeoCLIPLocationEncoder": "geolocus.encoders.location.geoclip",
    "geoclip_key_map": "geolocus.encoders.location.geoclip",
    "TransGeoLocationEncoder": "geolocus.encoders.location.transgeo",
    "LocationAttention": "geolocus.encoders.location.transgeo",
    "GaussianFourierFeatures": "geolocus.encoders.location.rff",
    "project_geoclip": "geolocus.encoders.location.rff",
}


def _geoclip(pretrained: bool = True, **kwargs: Any) -> Any:
    from geolocus.encoders.location.geoclip import GeoCLIPLocationEncoder

    if pretrained:
        if kwargs:
            raise InputError(f"pretrained geoclip takes no options, got {sorted(kwargs)}")
        return GeoCLIPLocationEncoder.from_pretrained()
    return GeoCLIPLocationEncoder(**kwargs)


def _transgeo(pretrained: bool = True, **kwargs: Any) -> Any:
    from geolocus.encoders.location.transgeo import TransGeoLocationEncoder

    return TransGeoLocationEncoder(**kwargs)  # no published weights: always random


#: Location encoders by name.
ENCODERS: Registry[Any] = Registry("location encoder")
ENCODERS.register("geoclip", _geoclip)
ENCODERS.register("transgeo", _transgeo)

__all__ = [*_LAZY, "ENCODERS", "create_location_encoder", "list_location_encoders"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_location_encoders() -> list[str]:
    return ENCODERS.names()


def create_location_encoder(name: str = "geoclip", pretrained: bool = True, **kwargs: Any):
    """A location encoder by name.

    ``geoclip`` with ``pretrained=True`` loads GeoCLIP's weights (a one-line
    error if the ``geoclip`` wheel is missing); ``transgeo`` has no published
    weights and is always randomly initialised (``pretrained`` is ignored).
    Keyword arguments go to the class.
    """
    return ENCODERS.create(name, pretrained=pretrained, **kwargs)
