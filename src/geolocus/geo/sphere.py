"""Great-circle distance, unit vectors and means on the sphere.

The one place where geolocus measures distance. Functions take latitude and
longitude in degrees and accept numpy arrays (or scalars) and torch tensors
alike, broadcasting as numpy does; the result has the type of the input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geolocus.errors import InvalidCoordinatesError

#: Mean Earth radius (IUGG), the value the literature's metrics use.
EARTH_RADIUS_KM = 6371.0088
#: Half the circumference: the largest possible great-circle distance.
MAX_DISTANCE_KM = float(np.pi * EARTH_RADIUS_KM)
#: The literature's accuracy thresholds (street, city, region, country, continent): what
#: evaluation scores and what the refiners that learn are fitted to.
THRESHOLDS_KM: tuple[int, ...] = (1, 25, 200, 750, 2500)
THRESHOLD_NAMES = {1: "street", 25: "city", 200: "region", 750: "country", 2500: "continent"}


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def validate_latlon(lat: Any, lon: Any, what: str = "coordinates") -> None:
    """Raise :class:`InvalidCoordinatesError` unless every point is finite and in range."""
    lat_a = np.asarray(lat.detach().cpu() if _is_torch(lat) else lat, dtype=float)
    lon_a = np.asarray(lon.detach().cpu() if _is_torch(lon) else lon, dtype=float)
    bad = ~np.isfinite(lat_a) | ~np.isfinite(lon_a)
    bad |= (np.abs(lat_a) > 90.0) | (np.abs(lon_a) > 180.0)
    if np.any(bad):
        idx = np.flatnonzero(np.broadcast_to(bad, np.broadcast_shapes(lat_a.shape, lon_a.shape)))
        i = int(idx[0])
        la = np.broadcast_to(lat_a, bad.shape).flat[i]
        lo = np.broadcast_to(lon_a, bad.shape).flat[i]
        raise InvalidCoordinatesError(
            f"invalid {what}: {len(idx)} point(s) outside lat [-90, 90] / lon [-180, 180] "
            f"or not finite, first at position {i}: ({la}, {lo})"
        )


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """Great-circle distance in km between points given in degrees (broadcasting).

    Uses the haversine formula in its atan2 form, which stays accurate for
    nearly antipodal points where the arcsine form loses digits.
    """
    if any(_is_torch(v) for v in (lat1, lon1, lat2, lon2)):
        import torch

        lat1, lon1, lat2, lon2 = (torch.as_tensor(v) for v in (lat1, lon1, lat2, lon2))
        p1, p2 = torch.deg2rad(lat1), torch.deg2rad(lat2)
        dp, dl = p2 - p1, torch.deg2rad(lon2 - lon1)
        a = torch.sin(dp / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin(dl / 2) ** 2
        a = a.clamp(0.0, 1.0)
        return 2 * EARTH_RADIUS_KM * torch.atan2(torch.sqrt(a), torch.sqrt(1.0 - a))
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.subtract(lon2, lon1))
    a = np.clip(np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2, 0.0, 1.0)
    return 2 * EARTH_RADIUS_KM * np.arctan2(np.sqrt(a), np.sqrt(1.0 - a))


def distance_km(a: Any, b: Any) -> Any:
    """Distance between points stored as ``(..., 2)`` arrays of (lat, lon), broadcasting."""
    return haversine_km(a[..., 0], a[..., 1], b[..., 0], b[..., 1])


def pairwise_km(a: Any, b: Any | None = None) -> Any:
    """``(N, M)`` matrix of distances between the rows of ``a`` (N, 2) and ``b`` (M, 2)."""
    b = a if b is None else b
    return distance_km(a[:, None, :], b[None, :, :])


def to_unit(lat: Any, lon: Any) -> Any:
    """Unit vectors ``(..., 3)`` on the sphere for points in degrees."""
    if _is_torch(lat) or _is_torch(lon):
        import torch

        p, lam = torch.deg2rad(torch.as_tensor(lat)), torch.deg2rad(torch.as_tensor(lon))
        return torch.stack(
            (torch.cos(p) * torch.cos(lam), torch.cos(p) * torch.sin(lam), torch.sin(p)), dim=-1
        )
    p, lam = np.radians(lat), np.radians(lon)
    return np.stack((np.cos(p) * np.cos(lam), np.cos(p) * np.sin(lam), np.sin(p)), axis=-1)


def from_unit(xyz: Any) -> tuple[Any, Any]:
    """Latitude and longitude in degrees of (not necessarily unit) vectors ``(..., 3)``."""
    if _is_torch(xyz):
        import torch

        x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
        lat = torch.rad2deg(torch.atan2(z, torch.sqrt(x * x + y * y)))
        return lat, torch.rad2deg(torch.atan2(y, x))
    xyz = np.asarray(xyz, dtype=float)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.degrees(np.arctan2(z, np.hypot(x, y))), np.degrees(np.arctan2(y, x))


def spherical_mean(
    lat: Any, lon: Any, weights: Any | None = None, axis: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Mean position of points on the sphere (the normalised mean of their unit vectors).

    Correct across the antimeridian and near the poles, where averaging
    latitudes and longitudes is wrong: the mean of (0, 179) and (0, -179) is
    (0, 180), not (0, 0). Points whose vectors cancel exactly (antipodes) have
    no defined mean; the result is then NaN.
    """
    v = to_unit(np.asarray(lat, dtype=float), np.asarray(lon, dtype=float))
    ax = axis - 1 if axis < 0 else axis  # to_unit appended the coordinate axis last
    if weights is None:
        m = v.sum(axis=ax)
    else:
        w = np.asarray(weights, dtype=float)
        m = (v * np.expand_dims(w, -1)).sum(axis=ax)
    norm = np.linalg.norm(m, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(norm > 1e-12, m / norm, np.nan)
    return from_unit(m)


def fibonacci_sphere(n: int) -> np.ndarray:
    """``(n, 2)`` (lat, lon) of a Fibonacci lattice: quasi-uniform points on the sphere,
    each covering an equal area (useful as anchors or a uniform grid of candidates)."""
    i = np.arange(n, dtype=float) + 0.5
    lat = np.degrees(np.arcsin(1.0 - 2.0 * i / n))
    golden = np.pi * (3.0 - np.sqrt(5.0))  # the golden angle, radians
    lon = np.remainder(np.degrees(i * golden) + 180.0, 360.0) - 180.0
    return np.column_stack((lat, lon))


def local_offset_km(lat0: Any, lon0: Any, lat: Any, lon: Any) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) offset in km of a point from an origin, in the origin's tangent plane.

    The azimuthal equidistant projection centred on the origin: the offset's length is the
    great-circle distance and its direction the initial bearing, so it is exact in distance
    at any range and :func:`offset_position` inverts it.
    """
    p0, p = np.radians(lat0), np.radians(lat)
    dl = np.radians(np.subtract(lon, lon0))
    y = np.sin(dl) * np.cos(p)
    x = np.cos(p0) * np.sin(p) - np.sin(p0) * np.cos(p) * np.cos(dl)
    bearing = np.arctan2(y, x)
    d = haversine_km(lat0, lon0, lat, lon)
    return d * np.sin(bearing), d * np.cos(bearing)


def offset_position(lat0: Any, lon0: Any, east_km: Any, north_km: Any) -> tuple[Any, Any]:
    """The point at tangent-plane offset (east, north) km from an origin: the inverse of
    :func:`local_offset_km` (the destination along the great circle of that bearing)."""
    p0, l0 = np.radians(lat0), np.radians(lon0)
    delta = np.hypot(east_km, north_km) / EARTH_RADIUS_KM
    theta = np.arctan2(east_km, north_km)
    sin_p = np.sin(p0) * np.cos(delta) + np.cos(p0) * np.sin(delta) * np.cos(theta)
    p = np.arcsin(np.clip(sin_p, -1.0, 1.0))
    lam = l0 + np.arctan2(
        np.sin(theta) * np.sin(delta) * np.cos(p0), np.cos(delta) - np.sin(p0) * sin_p
    )
    lon = np.remainder(np.degrees(lam) + 180.0, 360.0) - 180.0
    return np.degrees(p), lon
