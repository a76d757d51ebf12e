"""Refiners that learn nothing (or one bandwidth): nearest neighbour, DualGeo's
cluster re-ranking and the kernel-density mode of Revisiting IM2GPS."""

from __future__ import annotations

import numpy as np

from geolocus.data.neighbours import Neighbours
from geolocus.geo import THRESHOLDS_KM, SphericalKDE, dbscan_sphere, largest_cluster, spherical_mean
from geolocus.geo.sphere import haversine_km
from geolocus.refine.base import Ranking, Refiner, order_rows


def _rank_prior(k: int) -> np.ndarray:
    """Scores that keep retrieval order when no similarity was published."""
    return 1.0 / (1.0 + np.arange(k, dtype=float))


class NearestRefiner(Refiner):
    """The first retrieved neighbour: stage 1 alone."""

    name = "nearest"

    def rank(self, neighbours: Neighbours) -> Ranking:
        scores = neighbours.near_scores
        if scores is None:
            scores = np.broadcast_to(_rank_prior(neighbours.k), neighbours.near.shape[:2])
        return Ranking(candidates=neighbours.near.copy(), scores=np.array(scores, dtype=float))


class DualGeoRefiner(Refiner):
    """DualGeo's geo-cognitive re-ranking without the multimodal model.

    DBSCAN on the sphere over the near neighbours (``eps_km``, ``min_samples``),
    keep the most populous cluster, order its members by distance to the
    cluster's spherical centre; the others follow in retrieval order.
    """

    name = "dualgeo"

    def __init__(self, eps_km: float = 50.0, min_samples: int = 2) -> None:
        self.eps_km = eps_km
        self.min_samples = min_samples

    def scores(self, neighbours: Neighbours) -> np.ndarray:
        """``(N, K)`` scores in retrieval order; sorting by them (stable) is the ranking."""
        n, k = neighbours.near.shape[:2]
        scores = np.empty((n, k))
        for i in range(n):
            pts = neighbours.near[i]
            labels = dbscan_sphere(pts[:, 0], pts[:, 1], self.eps_km, self.min_samples)
            members = largest_cluster(labels) & (labels >= 0)
            # score: cluster members first (closest to the centre first), then retrieval order
            s = -np.arange(k, dtype=float) - 2.0 * k
            if members.any():
                clat, clon = spherical_mean(pts[members, 0], pts[members, 1])
                d = haversine_km(pts[:, 0], pts[:, 1], clat, clon)
                s[members] = -d[members] / (d[members].max() + 1.0)
            scores[i] = s
        return scores

    def rank(self, neighbours: Neighbours) -> Ranking:
        return order_rows(neighbours.near, self.scores(neighbours))


class KDERefiner(Refiner):
    """Revisiting IM2GPS: the mode of a kernel density over the neighbours,
    snapped to the nearest neighbour (the density is evaluated at each neighbour).

    ``fit`` chooses the bandwidth from ``bandwidths_km`` that maximises the mean
    accuracy over the standard thresholds on the given queries (``bandwidth_km_``);
    unfitted, it ranks with ``bandwidth_km``.
    """

    name = "kde"
    learns = True

    def __init__(
        self,
        bandwidth_km: float = 25.0,
        bandwidths_km: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 200, 400, 800),
    ) -> None:
        self.bandwidth_km = bandwidth_km
        self.bandwidths_km = bandwidths_km

    def _scores(self, neighbours: Neighbours, bandwidth_km: float) -> np.ndarray:
        near = neighbours.near
        out = np.empty(near.shape[:2])
        for i in range(len(near)):
            kde = SphericalKDE(bandwidth_km).fit(near[i, :, 0], near[i, :, 1])
            out[i] = kde.score(near[i, :, 0], near[i, :, 1])
        return out

    def fit(self, neighbours: Neighbours, truth: np.ndarray) -> KDERefiner:
        best, best_acc = self.bandwidth_km, -1.0
        for bw in self.bandwidths_km:
            top = order_rows(neighbours.near, self._scores(neighbours, bw)).top1()
            d = haversine_km(top[:, 0], top[:, 1], truth[:, 0], truth[:, 1])
            acc = float(np.mean([np.mean(d <= t) for t in THRESHOLDS_KM]))
            if acc > best_acc:
                best, best_acc = bw, acc
        self.bandwidth_km_ = float(best)
        return self

    def rank(self, neighbours: Neighbours) -> Ranking:
        bandwidth = getattr(self, "bandwidth_km_", self.bandwidth_km)
        s = self._scores(neighbours, bandwidth)
        # turn log-densities into a distribution over candidates
        p = np.exp(s - s.max(axis=1, keepdims=True))
        return order_rows(neighbours.near, p / p.sum(axis=1, keepdims=True))
