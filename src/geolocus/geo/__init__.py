"""Spherical geometry: distances, means, clustering, density and projections.

Every distance in geolocus is measured here (:func:`haversine_km`), on a sphere
of the mean Earth radius, 6371.0088 km.
"""

from geolocus.geo.cluster import dbscan_sphere, largest_cluster
from geolocus.geo.density import SphericalKDE, vmf_kappa
from geolocus.geo.projection import (
    equal_earth,
    equal_earth_inverse,
    web_mercator,
    web_mercator_inverse,
)
from geolocus.geo.sphere import (
    EARTH_RADIUS_KM,
    MAX_DISTANCE_KM,
    THRESHOLD_NAMES,
    THRESHOLDS_KM,
    distance_km,
    fibonacci_sphere,
    from_unit,
    haversine_km,
    pairwise_km,
    spherical_mean,
    to_unit,
    validate_latlon,
)

__all__ = [
    "EARTH_RADIUS_KM",
    "MAX_DISTANCE_KM",
    "THRESHOLDS_KM",
    "THRESHOLD_NAMES",
    "SphericalKDE",
    "dbscan_sphere",
    "distance_km",
    "equal_earth",
    "equal_earth_inverse",
    "fibonacci_sphere",
    "from_unit",
    "haversine_km",
    "largest_cluster",
    "pairwise_km",
    "spherical_mean",
    "to_unit",
    "validate_latlon",
    "vmf_kappa",
    "web_mercator",
    "web_mercator_inverse",
]
