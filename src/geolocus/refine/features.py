"""Per-candidate features for learned stage-2 refiners.

Without similarity scores or the photo itself, what a candidate has going for
it is geometry: how many of the other retrieved neighbours agree with it, at
which scale, and how highly they were ranked; and how many of the "dissimilar"
(far) neighbours lie around it, since the truth is rarely near them.

:func:`candidate_features` turns each near neighbour into one row of

- **votes**: for every scale ``s`` and rank bin ``[a, b)``, the number of near
  neighbours ranked in ``[a, b)`` that lie within ``s`` km of the candidate
  (the candidate counts itself). A weighted sum of these is the multi-scale
  kNN vote; a learned one says how much a vote from rank 0 is worth at 25 km
  against a vote from rank 12 at 2500 km;
- **far**: the number of far neighbours within each far scale;
- **rank**: the candidate's own retrieval rank;
- **text** (only with ``FeatureSpec(text=True)``): what the query photo's text
  says about the candidate (:mod:`geolocus.refine.text`), from the neighbours'
  ``evidence``; zeros where a query has none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from geolocus.data.neighbours import Neighbours
from geolocus.geo import distance_km
from geolocus.refine.base import state_type
from geolocus.refine.text import text_feature_names, text_features

#: Scales (km) at which agreeing neighbours are counted: street to continent.
VOTE_SCALES_KM: tuple[float, ...] = (1, 5, 25, 100, 200, 500, 750, 1500, 2500)
#: Retrieval-rank bins ``[a, b)`` of the voters (``b = None``: to the end).
RANK_BINS: tuple[tuple[int, int | None], ...] = ((0, 1), (1, 2), (2, 4), (4, 8), (8, None))
#: Scales (km) at which far ("dissimilar") neighbours are counted around a candidate.
FAR_SCALES_KM: tuple[float, ...] = (750, 1500, 2500, 5000)

_CHUNK = 2048  # queries per block, to bound the (chunk, K, K) distance arrays


@state_type
@dataclass(frozen=True)
class FeatureSpec:
    """Which features :func:`candidate_features` computes (saved with a fitted refiner)."""

    vote_scales_km: tuple[float, ...] = VOTE_SCALES_KM
    rank_bins: tuple[tuple[int, int | None], ...] = RANK_BINS
    far_scales_km: tuple[float, ...] = FAR_SCALES_KM
    rank: bool = True
    text: bool = False

    def names(self) -> list[str]:
        """One name per feature column, in order."""
        out = [
            f"vote_{_fmt(s)}km_r{a}-{'' if b is None else b - 1}"
            for s in self.vote_scales_km
            for a, b in self.rank_bins
        ]
        out += [f"far_{_fmt(s)}km" for s in self.far_scales_km]
        if self.rank:
            out.append("rank")
        if self.text:
            out += text_feature_names()
        return out


def _fmt(x: float) -> str:
    return f"{x:g}"


def candidate_features(neighbours: Neighbours, spec: FeatureSpec | None = None) -> np.ndarray:
    """Features of every near neighbour as a candidate: ``(N, K, F)``, in ``spec.names()`` order."""
    spec = spec or FeatureSpec()
    n, k = len(neighbours), neighbours.k
    out = np.empty((n, k, len(spec.names())))
    n_geo = len(replace(spec, text=False).names())
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        out[lo:hi, :, :n_geo] = _block(neighbours.near[lo:hi], neighbours.far[lo:hi], spec)
    if spec.text:
        out[:, :, n_geo:] = text_features(neighbours.near, neighbours.evidence)
    return out


def _block(near: np.ndarray, far: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    n, k = near.shape[:2]
    cols: list[np.ndarray] = []
    d_near = distance_km(near[:, :, None, :], near[:, None, :, :])  # (n, K cand, K voters)
    for s in spec.vote_scales_km:
        within = d_near <= s
        for a, b in spec.rank_bins:
            cols.append(within[:, :, a:b].sum(axis=-1))
    if spec.far_scales_km:
        if far.shape[1]:
            d_far = distance_km(near[:, :, None, :], far[:, None, :, :])
            cols += [(d_far <= s).sum(axis=-1) for s in spec.far_scales_km]
        else:
            cols += [np.zeros((n, k)) for _ in spec.far_scales_km]
    if spec.rank:
        cols.append(np.broadcast_to(np.arange(k, dtype=float), (n, k)))
    return np.stack(cols, axis=-1).astype(float)


def prior_weights(spec: FeatureSpec, thresholds_km: tuple[float, ...], k: int) -> np.ndarray:
    """Hand-set weights that make ``features @ w`` the multi-scale vote.

    Each voter of rank ``r`` (of ``k``) adds ``1 / sqrt(1 + r)`` at every scale
    that is a scoring threshold (a bin gets its voters' mean weight); ties go to
    the better rank. The learned model starts here and is pulled back towards
    it, so it needs little data to improve on it.
    """
    w = []
    for s in spec.vote_scales_km:
        for a, b in spec.rank_bins:
            ranks = np.arange(a, max(a + 1, k if b is None else b))
            w.append(float(np.mean(1.0 / np.sqrt(1.0 + ranks))) if s in thresholds_km else 0.0)
    w += [0.0] * len(spec.far_scales_km)
    if spec.rank:
        w.append(-1e-3)
    w += [0.0] * (len(spec.names()) - len(w))  # text features start at "no effect"
    return np.asarray(w)
