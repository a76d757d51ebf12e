"""Map projections used by location encoders and maps.

- Equal Earth (Šavrič, Patterson & Jenny 2018), which GeoCLIP applies before
  its random Fourier features; ``geoclip_scale=True`` reproduces GeoCLIP's
  scaling (x and y multiplied by 66.50336 / 180, so that the map spans about ±1).
- Web Mercator (EPSG:3857), which G3 uses and web maps draw in.

Each function works on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from geolocus.geo.sphere import _is_torch

# Equal Earth polynomial coefficients.
A1, A2, A3, A4 = 1.340264, -0.081106, 0.000893, 0.003796
#: GeoCLIP's scale factor (its code divides the projected map by 180 after multiplying by this).
GEOCLIP_SF = 66.50336
#: Radius of the spherical Web Mercator (WGS84 semi-major axis), metres.
WEB_MERCATOR_R = 6378137.0
#: Web Mercator's latitude limit, where the map becomes square.
WEB_MERCATOR_MAX_LAT = 85.05112877980659


class _Ops:
    """The handful of elementwise functions the projections need, for numpy or torch."""

    # numpy's ufuncs or torch's functions: one name, two libraries
    xp: Any
    asin: Any
    atan: Any
    stack: Any
    clip: Any
    log: Any
    exp: Any
    deg2rad: Any
    rad2deg: Any

    def __init__(self, x: Any) -> None:
        if _is_torch(x):
            import torch

            self.xp, self.asin, self.atan, self.stack = torch, torch.asin, torch.atan, torch.stack
            self.clip, self.log, self.exp = torch.clamp, torch.log, torch.exp
            self.deg2rad, self.rad2deg = torch.deg2rad, torch.rad2deg
        else:
            self.xp, self.asin, self.atan, self.stack = np, np.arcsin, np.arctan, np.stack
            self.clip, self.log, self.exp = np.clip, np.log, np.exp
            self.deg2rad, self.rad2deg = np.radians, np.degrees
        self.sin, self.cos, self.tan = self.xp.sin, self.xp.cos, self.xp.tan


def equal_earth(lat: Any, lon: Any, geoclip_scale: bool = False) -> tuple[Any, Any]:
    """Forward Equal Earth on the unit sphere: returns (x, y)."""
    o = _Ops(lat)
    lam, phi = o.deg2rad(lon), o.deg2rad(lat)
    theta = o.asin(math.sqrt(3.0) / 2.0 * o.sin(phi))
    t2 = theta * theta
    t6 = t2 * t2 * t2
    denom = 3.0 * (9.0 * A4 * t6 * t2 + 7.0 * A3 * t6 + 3.0 * A2 * t2 + A1)
    x = 2.0 * math.sqrt(3.0) * lam * o.cos(theta) / denom
    y = theta * (A1 + A2 * t2 + t6 * (A3 + A4 * t2))
    if geoclip_scale:
        x, y = x * (GEOCLIP_SF / 180.0), y * (GEOCLIP_SF / 180.0)
    return x, y


def equal_earth_inverse(
    x: Any, y: Any, geoclip_scale: bool = False, iterations: int = 12
) -> tuple[Any, Any]:
    """Inverse Equal Earth (Newton's method on the parametric latitude): returns (lat, lon)."""
    o = _Ops(x)
    if geoclip_scale:
        x, y = x * (180.0 / GEOCLIP_SF), y * (180.0 / GEOCLIP_SF)
    theta = y / A1
    for _ in range(iterations):
        t2 = theta * theta
        t6 = t2 * t2 * t2
        f = theta * (A1 + A2 * t2 + t6 * (A3 + A4 * t2)) - y
        df = A1 + 3.0 * A2 * t2 + t6 * (7.0 * A3 + 9.0 * A4 * t2)
        theta = theta - f / df
    t2 = theta * theta
    t6 = t2 * t2 * t2
    denom = 3.0 * (9.0 * A4 * t6 * t2 + 7.0 * A3 * t6 + 3.0 * A2 * t2 + A1)
    lam = x * denom / (2.0 * math.sqrt(3.0) * o.cos(theta))
    phi = o.asin(o.clip(2.0 * o.sin(theta) / math.sqrt(3.0), -1.0, 1.0))
    return o.rad2deg(phi), o.rad2deg(lam)


def web_mercator(lat: Any, lon: Any, normalize: bool = False) -> tuple[Any, Any]:
    """Forward Web Mercator in metres (latitudes clipped to ±85.0511°).

    ``normalize=True`` divides by πR so that the square map spans [-1, 1]².
    """
    o = _Ops(lat)
    phi = o.deg2rad(o.clip(lat, -WEB_MERCATOR_MAX_LAT, WEB_MERCATOR_MAX_LAT))
    x = WEB_MERCATOR_R * o.deg2rad(lon)
    y = WEB_MERCATOR_R * o.log(o.tan(math.pi / 4.0 + phi / 2.0))
    if normalize:
        x, y = x / (math.pi * WEB_MERCATOR_R), y / (math.pi * WEB_MERCATOR_R)
    return x, y


def web_mercator_inverse(x: Any, y: Any, normalize: bool = False) -> tuple[Any, Any]:
    """Inverse Web Mercator: returns (lat, lon) in degrees."""
    o = _Ops(x)
    if normalize:
        x, y = x * (math.pi * WEB_MERCATOR_R), y * (math.pi * WEB_MERCATOR_R)
    lon = o.rad2deg(x / WEB_MERCATOR_R)
    lat = o.rad2deg(2.0 * o.atan(o.exp(y / WEB_MERCATOR_R)) - math.pi / 2.0)
    return lat, lon
