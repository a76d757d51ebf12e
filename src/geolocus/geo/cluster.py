"""Clustering on the sphere."""

from __future__ import annotations

import numpy as np

from geolocus.geo.sphere import EARTH_RADIUS_KM


def dbscan_sphere(
    lat: np.ndarray, lon: np.ndarray, eps_km: float, min_samples: int = 2
) -> np.ndarray:
    """DBSCAN with the haversine metric; ``eps_km`` is a great-circle radius in km.

    Returns one label per point; -1 marks noise, as in scikit-learn.
    """
    from sklearn.cluster import DBSCAN  # imported here: sklearn takes ~1.5 s to import

    pts = np.radians(np.column_stack((np.asarray(lat, float), np.asarray(lon, float))))
    if len(pts) == 0:
        return np.empty(0, dtype=int)
    model = DBSCAN(
        eps=eps_km / EARTH_RADIUS_KM,
        min_samples=min_samples,
        metric="haversine",
        algorithm="ball_tree",
    )
    return model.fit_predict(pts)


def largest_cluster(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the most populous cluster (ties: the lowest label, i.e. the
    cluster that reached its first member earliest in rank order); all points if none."""
    labels = np.asarray(labels)
    valid = labels[labels >= 0]
    if valid.size == 0:
        return np.ones(labels.shape, dtype=bool)
    counts = np.bincount(valid)
    return labels == int(np.argmax(counts))
