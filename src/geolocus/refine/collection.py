"""``collection``: place a photo from the other photos of its own collection.

Within one photographer's collection the retrieved photos come with cosine
similarities that mean something (the same camera, the same trips), and the
truth is very often one of them (docs/collections.md: the best other photo is
within 1 km for 62 % of the photos, the most similar one for 24 %). So each
candidate (a retrieved photo of the collection) is scored from

- **similarity**: its gap to the most similar photo, and whether it is that one;
- **similarity-weighted votes**: for each scale ``r`` and sharpness ``tau``,
  ``log sum_j exp((s_j - s_max) / tau)`` over the retrieved photos ``j`` within
  ``r`` km of it (itself included): a place backed by several look-alikes wins
  over one lucky match;
- **density**: the share of the retrieved photos within ``r`` km (where the
  photographer takes photos at all, the medoid's evidence);
- **capture order** (optional, ``use_time``): the photos taken just before and after
  the query vote for their places (:data:`ORDER_SCALE`, :data:`TIME_SCALE_S`);
- **verification** (optional, ``use_inliers``): local-feature inlier counts against
  the query (:mod:`geolocus.refine.verify`), from the callable set as
  ``CollectionRefiner.inliers``.

The weights are learned as ``best``'s are (:func:`~geolocus.refine.learned.fit_weights`,
the expected number of thresholds met, pulled towards a hand-set prior), so the
refiner also works unfitted: the prior is the multi-scale similarity-weighted
vote. Queries may have different numbers of candidates (collections differ in
size): candidates whose position is NaN are padding and never chosen.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from geolocus.data.im2gps3k import photographer
from geolocus.data.neighbours import Neighbours
from geolocus.errors import InputError
from geolocus.eval.folds import grouped_folds
from geolocus.geo import distance_km
from geolocus.refine.base import Ranking, Refiner, order_rows
from geolocus.refine.learned import DEFAULT_GRID, fit_temperature, fit_weights, threshold_gains

#: Scales (km) of the votes and densities: the scored thresholds.
SCALES_KM: tuple[float, ...] = (1, 25, 200, 750, 2500)
#: Sharpness of the similarity weights (cosine-similarity units).
TAUS: tuple[float, ...] = (0.02, 0.05)
_CHUNK = 64  # queries per block of features
#: The prior's vote sharpness (one of :data:`TAUS`).
PRIOR_TAU = 0.05
#: Capture order: a photo ``g`` places from the query in the order of capture (1: the one
#: just before or after) votes ``exp(-(g - 1) / ORDER_SCALE)``.
ORDER_SCALE = 1.0
#: ... times ``exp(-dt / TIME_SCALE_S)`` for ``dt`` seconds apart: the next photo in order
#: may have been taken days later, elsewhere.
TIME_SCALE_S = 6 * 3600.0
#: The prior's weight of a time vote at each scale (a photo taken minutes apart outweighs
#: a look-alike: the similarity votes differ by a few units of log-weight).
TIME_PRIOR = 2.0


def feature_names(with_time: bool = False, with_inliers: bool = False) -> list[str]:
    """Column names of :func:`collection_features`, in order."""
    names = ["gap", "top", "log_rank"]
    names += [f"vote_t{t:g}_{r:g}km" for t in TAUS for r in SCALES_KM]
    names += [f"density_{r:g}km" for r in SCALES_KM]
    if with_time:
        names += ["time_known", "log_order_gap", "log_hours_apart"]
        names += [f"order_vote_{r:g}km" for r in SCALES_KM]
        names += [f"time_vote_{r:g}km" for r in SCALES_KM]
    if with_inliers:
        names += ["log_inliers", "inliers_top"]
    return names


def collection_features(
    nb: Neighbours,
    order_gap: np.ndarray | None = None,
    seconds_apart: np.ndarray | None = None,
    inliers: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, K, F)`` features of every candidate and the ``(N, K)`` mask of real ones.

    ``order_gap`` (N, K): how many places apart each candidate and the query are in the
    order of capture (NaN: unknown), ``seconds_apart`` how far apart in time; ``inliers``
    (N, K): verified local-feature matches (NaN: not verified).
    """
    if len(nb) > _CHUNK:  # bound the (chunk, K, K) distance arrays
        parts = [
            collection_features(
                nb.subset(slice(a, a + _CHUNK)),
                None if order_gap is None else order_gap[a : a + _CHUNK],
                None if seconds_apart is None else seconds_apart[a : a + _CHUNK],
                None if inliers is None else inliers[a : a + _CHUNK],
            )
            for a in range(0, len(nb), _CHUNK)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    near = nb.near
    # without scores (e.g. published neighbour lists) every photo is equally similar: the
    # votes become plain counts
    scores = np.zeros(near.shape[:2]) if nb.near_scores is None else nb.near_scores
    mask = np.isfinite(near).all(axis=-1) & np.isfinite(scores)
    s = np.where(mask, scores, -np.inf)
    s_max = s.max(axis=1, keepdims=True)
    s_max = np.where(np.isfinite(s_max), s_max, 0.0)
    gap = np.where(mask, s - s_max, 0.0)
    cols: list[np.ndarray] = [gap, (gap >= 0) & mask]
    rank = np.argsort(np.argsort(-np.where(mask, s, -np.inf), axis=1, kind="stable"), axis=1)
    cols.append(np.log1p(rank))
    safe = np.where(mask[..., None], near, 0.0)
    d = distance_km(safe[:, :, None, :], safe[:, None, :, :])  # (N, K cand, K voters)
    d = np.where(mask[:, None, :] & mask[:, :, None], d, np.inf)
    within = [d <= r for r in SCALES_KM]
    for tau in TAUS:
        w = np.where(mask, np.exp(gap / tau), 0.0)
        for wr in within:
            cols.append(np.log(np.maximum(np.einsum("nck,nk->nc", wr, w), 1e-12)))
    count = np.maximum(mask.sum(axis=1, keepdims=True), 1)
    cols += [wr.sum(axis=-1) / count for wr in within]
    if order_gap is not None:
        known = np.isfinite(order_gap) & mask
        g = np.where(known, np.abs(order_gap), 1.0)
        sec = np.zeros_like(g) if seconds_apart is None else np.abs(seconds_apart)
        sec = np.where(known, sec, 0.0)
        cols += [known, np.where(known, np.log(g), 0.0), np.log1p(sec / 3600.0)]
        ow = np.where(known, np.exp(-(g - 1.0) / ORDER_SCALE), 0.0)
        cols += [np.einsum("nck,nk->nc", wr, ow) for wr in within]
        tw = ow * np.exp(-sec / TIME_SCALE_S)
        cols += [np.einsum("nck,nk->nc", wr, tw) for wr in within]
    if inliers is not None:
        li = np.where(np.isfinite(inliers) & mask, inliers, 0.0)
        cols.append(np.log1p(li))
        cols.append((li >= li.max(axis=1, keepdims=True)) & (li > 0))
    x = np.stack([np.asarray(c, dtype=float) for c in cols], axis=-1)
    x[~mask] = 0.0
    return x, mask


def prior_weights(names: list[str]) -> np.ndarray:
    """Hand-set weights: the multi-scale similarity-weighted vote at :data:`PRIOR_TAU`
    (one unit per scored threshold) plus the time votes (:data:`TIME_PRIOR` each), ties
    to the most similar photo."""
    w = np.zeros(len(names))
    for i, nm in enumerate(names):
        if nm.startswith(f"vote_t{PRIOR_TAU:g}_"):
            w[i] = 1.0
        elif nm == "top":
            w[i] = 1e-3
        elif nm.startswith("time_vote_"):
            w[i] = TIME_PRIOR
    return w


class CollectionRefiner(Refiner):
    """Ranks the photos of a collection as candidates for a photo of the same collection
    (see the module docstring). Works unfitted (the prior vote); ``fit`` learns the
    weights, ``sharpness``/``l2`` chosen by photographer-grouped inner cross-validation
    when not given.

    Per use (not learned, not saved): ``times`` maps photo ids to capture times (seconds,
    e.g. EXIF DateTimeOriginal), used with ``use_time``: the photos taken just before
    and after the query vote for where they were, the more the closer in time
    (interpolation in time, as photo managers place photos along a GPS track), weighed
    against the pixels; ``inliers`` is a callable giving verified matches ``(N, K)`` per
    neighbours (:mod:`geolocus.refine.verify`).
    """

    name = "collection"
    requires_fit = False
    learns = True

    def __init__(
        self,
        sharpness: float | None = None,
        l2: float | None = None,
        grid: tuple[tuple[float, float], ...] = DEFAULT_GRID,
        inner_folds: int = 3,
        use_time: bool = False,
        use_inliers: bool = False,
    ) -> None:
        self.sharpness = sharpness
        self.l2 = l2
        self.grid = grid
        self.inner_folds = inner_folds
        self.use_time = use_time
        self.use_inliers = use_inliers
        self.times: dict[str, float] | None = None
        self.inliers: Callable[[Neighbours], np.ndarray] | None = None

    def names(self) -> list[str]:
        return feature_names(self.use_time, self.use_inliers)

    def _order_gaps(self, nb: Neighbours) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Places apart in the order of capture, among the query and its candidates whose
        times are known (ties share a place), and seconds apart."""
        if not self.use_time:
            return None, None
        gap = np.full(nb.near.shape[:2], np.nan)
        sec = np.full(nb.near.shape[:2], np.nan)
        if not self.times or nb.near_ids is None:
            return gap, sec
        for i, q in enumerate(nb.ids):
            tq = self.times.get(str(q))
            if tq is None:
                continue
            tc = np.array([self.times.get(str(c), np.nan) for c in nb.near_ids[i]], float)
            known = np.isfinite(tc)
            if not known.any():
                continue
            order = np.unique(np.append(tc[known], tq))
            pos = np.searchsorted(order, tc[known])
            gap[i, known] = np.maximum(np.abs(pos - np.searchsorted(order, tq)), 1)
            sec[i] = tc - tq
        return gap, sec

    def features(self, nb: Neighbours) -> tuple[np.ndarray, np.ndarray]:
        """Candidate features and mask as this refiner uses them."""
        inl = None
        if self.use_inliers:
            inl = np.full(nb.near.shape[:2], np.nan) if self.inliers is None else self.inliers(nb)
        return collection_features(nb, *self._order_gaps(nb), inliers=inl)

    def fit(self, neighbours: Neighbours, truth: np.ndarray) -> CollectionRefiner:
        truth = np.asarray(truth, dtype=float).reshape(-1, 2)
        if len(truth) != len(neighbours):
            raise InputError(f"{len(neighbours)} queries but {len(truth)} true positions")
        x, mask = self.features(neighbours)
        gains = np.where(mask, threshold_gains(neighbours.near, truth), 0.0)
        w0 = prior_weights(self.names())
        if self.sharpness is None or self.l2 is None:
            self.sharpness_, self.l2_ = self._select(neighbours.ids, x, gains, mask, w0)
        else:
            self.sharpness_, self.l2_ = float(self.sharpness), float(self.l2)
        self.coef_ = fit_weights(x, gains, w0, self.sharpness_, self.l2_, mask=mask)
        self.temperature_ = self._temperature(x @ self.coef_, mask, neighbours.near, truth)
        return self

    @staticmethod
    def _temperature(s: np.ndarray, mask: np.ndarray, near: np.ndarray, truth: np.ndarray) -> float:
        d = np.where(mask, distance_km(near, truth[:, None, :]), np.inf)
        closest = mask & (d <= d.min(axis=1, keepdims=True) + 0.5)
        return fit_temperature(np.where(mask, s, -1e9), closest)

    def _select(
        self, ids: np.ndarray, x: np.ndarray, gains: np.ndarray, mask: np.ndarray, w0: np.ndarray
    ) -> tuple[float, float]:
        """The grid point with the best inner cross-validated mean gain (first on ties)."""
        folds = grouped_folds(ids, self.inner_folds, group=photographer, salt="collection-inner")
        if len(np.unique(folds)) < 2:
            return self.grid[0]
        rows = np.arange(len(ids))
        best, best_gain = self.grid[0], -np.inf
        for beta, l2 in self.grid:
            pick = np.empty(len(ids), dtype=int)
            for f in np.unique(folds):
                te = folds == f
                w = fit_weights(x[~te], gains[~te], w0, beta, l2, mask=mask[~te])
                pick[te] = np.argmax(np.where(mask[te], x[te] @ w, -np.inf), axis=1)
            g = float(gains[rows, pick].mean())
            if g > best_gain + 1e-12:
                best, best_gain = (beta, l2), g
        return best

    def decision_function(self, neighbours: Neighbours) -> np.ndarray:
        """Raw candidate scores ``(N, K)`` (higher is better; padding: -inf)."""
        x, mask = self.features(neighbours)
        coef = self.coef_ if self.is_fitted() else prior_weights(self.names())
        return np.where(mask, x @ coef, -np.inf)

    def rank(self, neighbours: Neighbours) -> Ranking:
        s = self.decision_function(neighbours)
        t = self.temperature_ if self.is_fitted() else 1.0
        z = s / t
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return order_rows(neighbours.near, p)

    def _check_state(self) -> None:
        if self.coef_.shape != (len(self.names()),) or not np.all(np.isfinite(self.coef_)):
            raise ValueError("coefficients do not match the feature list")


__all__ = ["CollectionRefiner", "collection_features", "feature_names", "prior_weights"]
