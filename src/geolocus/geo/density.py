"""Kernel density on the sphere with the von Mises–Fisher kernel."""

from __future__ import annotations

import numpy as np

from geolocus.geo.sphere import EARTH_RADIUS_KM, to_unit


def vmf_kappa(bandwidth_km: float) -> float:
    """Concentration of a vMF kernel whose angular standard deviation is ``bandwidth_km``.

    For large kappa the vMF is a 2-D Gaussian with variance 1/kappa per axis (radians²).
    """
    sigma = bandwidth_km / EARTH_RADIUS_KM
    return 1.0 / (sigma * sigma)


def _log_vmf_norm(kappa: float) -> float:
    """log of the vMF normaliser on S², kappa / (4π sinh kappa), computed stably."""
    # log sinh k = k + log1p(-exp(-2k)) - log 2
    log_sinh = kappa + np.log1p(-np.exp(-2.0 * kappa)) - np.log(2.0)
    return float(np.log(kappa) - np.log(4.0 * np.pi) - log_sinh)


class SphericalKDE:
    """Weighted vMF kernel density estimate: ``fit(lat, lon)`` then ``score(lat, lon)``.

    ``score`` returns the log-density per steradian at each query point.
    """

    def __init__(self, bandwidth_km: float = 25.0) -> None:
        if bandwidth_km <= 0:
            raise ValueError("bandwidth_km must be positive")
        self.bandwidth_km = float(bandwidth_km)
        self.kappa = vmf_kappa(self.bandwidth_km)

    def fit(self, lat: np.ndarray, lon: np.ndarray, weights: np.ndarray | None = None):
        self.centres_ = to_unit(np.asarray(lat, float), np.asarray(lon, float)).reshape(-1, 3)
        n = len(self.centres_)
        w = np.ones(n) if weights is None else np.asarray(weights, float).reshape(-1)
        if n == 0 or w.sum() <= 0:
            raise ValueError("SphericalKDE needs at least one point with positive weight")
        self.log_weights_ = np.log(np.clip(w / w.sum(), 1e-300, None))
        return self

    def score(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        q = to_unit(np.asarray(lat, float), np.asarray(lon, float))
        shape = q.shape[:-1]
        # kappa * (cos(angle) - 1) keeps the exponent <= 0, then add kappa back in log space.
        dots = q.reshape(-1, 3) @ self.centres_.T
        logk = self.kappa * (np.clip(dots, -1.0, 1.0) - 1.0) + self.log_weights_
        m = logk.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logk - m).sum(axis=1))
        return (lse + self.kappa + _log_vmf_norm(self.kappa)).reshape(shape)
