"""GeoRanker's distance-aware multi-order ranking loss, for ``best``'s linear scorer.

GeoRanker (Jia et al., 2025) trains a vision-language ranker so that a candidate nearer
the photo's position scores higher, with two Plackett–Luce likelihoods of the scores:

- **first order**: the candidates sorted by their distance ``d`` to the truth, closest
  first, should be the likeliest order of their scores ``s``:
  ``-log P = sum_k [logsumexp(s_{k..}) - s_k]`` over the positions ``k`` of that order;
- **second order**: every pair ``(i, j)`` with ``i`` closer than ``j``, sorted by the gap
  ``d_j - d_i`` (largest first), should be the likeliest order of the score gaps
  ``s_i - s_j`` (a far-off wrong candidate should trail by more than a near miss);

``loss = 0.7 * first + 0.3 * second``, each the mean over its positions, summed over
queries. ``top`` is the reference code's partial Plackett–Luce: only the first ``top``
positions of the first order, and in the second only the pairs whose closer member is
among the ``top`` closest (``None``: every position and pair). Ties in distance keep
retrieval order, as a stable sort leaves them.

Here only the loss is taken: the scores are ``best``'s linear model over neighbour
geometry, fitted by L-BFGS (:func:`geolocus.refine.learned.fit_weights`), so the
gradient with respect to the scores is computed in closed form alongside the loss.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from geolocus.errors import InputError

#: Weights of the first- and second-order terms (GeoRanker's lambda = 0.7).
ORDER_WEIGHTS: tuple[float, float] = (0.7, 0.3)

#: Stands for the score of a missing candidate in log space: finite, so no ``inf - inf``.
_ABSENT = -1e30
#: Tail sums below this are recomputed in log space (``a / tail`` must stay finite).
_TINY = 1e-250


def plackett_luce(
    z: np.ndarray, valid: np.ndarray, used: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Plackett–Luce negative log-likelihood of each row's order, and its gradient.

    ``z`` (n, m): scores, each row already in the target order (best first); ``valid``:
    which items exist (the missing ones last, they take no probability); ``used``: the
    weight ``a_k`` of each position's term ``-log p_k``, ``p_k = exp(z_k) / sum_{j>=k}
    exp(z_j)``. Returns ``sum_k a_k (-log p_k)`` per row and its derivative in ``z``,
    ``sum_{k<=j} a_k p(j | tail k) - a_j``.
    """
    full = bool(valid.all())
    zz = z if full else np.where(valid, z, -np.inf)
    m = zz.max(axis=1, keepdims=True)
    m[~np.isfinite(m)] = 0.0
    e = np.exp(zz - m)
    tail = np.cumsum(e[:, ::-1], axis=1)[:, ::-1]  # sum_{j>=k} exp(z_j - m)
    # rows whose last tail sum underflows (scores hundreds apart) are redone in log space
    last = np.maximum(valid.sum(axis=1) - 1, 0)
    bad = tail[np.arange(len(tail)), last] < _TINY
    tail = np.maximum(tail, _TINY)
    lse = np.log(tail) + m
    grad = e * np.cumsum(used / tail, axis=1) - used
    if bad.any():
        lse[bad], grad[bad] = _log_space(zz[bad], used[bad])
        grad[bad] = np.where(valid[bad], grad[bad], 0.0)
    zv = z if full else np.where(valid, z, 0.0)
    return (used * (lse - zv)).sum(axis=1), grad


def _log_space(zz: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`plackett_luce` needs, computed by log-sum-exp (slower, never overflows):
    the log tail sums and the gradient."""
    zf = np.maximum(zz, _ABSENT)
    lse = np.logaddexp.accumulate(zf[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(divide="ignore"):
        log_a = np.log(used)
    acc = np.logaddexp.accumulate(log_a - lse, axis=1)  # log sum_{k<=j} a_k exp(-lse_k)
    return lse, np.exp(zf + acc) - used


def _check(weights: tuple[float, float], top: int | None) -> tuple[float, float]:
    """The two order weights as floats; bad settings are one user error."""
    try:
        w = tuple(float(v) for v in weights)
    except (TypeError, ValueError):
        w = ()
    if len(w) != 2 or not all(math.isfinite(v) and v >= 0 for v in w) or sum(w) <= 0:
        raise InputError(
            f"GeoRanker order weights must be two non-negative numbers, not both 0: {weights}"
        )
    whole = isinstance(top, (int, np.integer)) and not isinstance(top, bool)
    if top is not None and not (whole and top >= 1):
        raise InputError(f"GeoRanker's top positions must be a whole number >= 1, not {top!r}")
    return w[0], w[1]


class MultiOrderLoss:
    """GeoRanker's loss for fixed true distances ``(N, C)`` (km; a non-finite distance marks
    a missing candidate); calling it on scores ``(N, C)`` gives the loss summed over queries
    and its gradient. The orders are sorted once here, so each call is a few vectorised
    passes (what L-BFGS needs, hundreds of times)."""

    def __init__(
        self,
        distances: np.ndarray,
        weights: tuple[float, float] = ORDER_WEIGHTS,
        top: int | None = None,
    ) -> None:
        self.weights = _check(weights, top)
        self.top = None if top is None else int(top)
        self.distances = d = np.asarray(distances, dtype=float)
        if d.ndim != 2:
            raise InputError(f"distances must be (queries, candidates), got shape {d.shape}")
        n, c = d.shape
        valid = np.isfinite(d)
        key = np.where(valid, d, np.inf)
        # first order: positions of the distance order, closest first
        order = np.argsort(key, axis=1, kind="stable")
        self._flat1 = (order + (np.arange(n) * c)[:, None]).ravel()
        self._valid1 = np.take_along_axis(valid, order, axis=1)
        count = self._valid1.sum(axis=1)
        k1 = count if self.top is None else np.minimum(self.top, count)
        pos = np.arange(c)[None, :]
        self._used1 = np.where(pos < k1[:, None], 1.0 / np.maximum(k1, 1)[:, None], 0.0)
        # second order: pairs (closer i, farther j) by distance gap, largest first
        ii, jj = np.triu_indices(c, 1)
        ds = np.take_along_axis(key, order, axis=1)
        pvalid = self._valid1[:, ii] & self._valid1[:, jj]
        if self.top is not None:
            pvalid &= (ii < self.top)[None, :]
        ds = np.where(self._valid1, ds, 0.0)
        gap = np.where(pvalid, ds[:, jj] - ds[:, ii], -np.inf)
        porder = np.argsort(-gap, axis=1, kind="stable")  # missing pairs last
        first = np.take_along_axis(order[:, ii], porder, axis=1)
        second = np.take_along_axis(order[:, jj], porder, axis=1)
        self._valid2 = np.take_along_axis(pvalid, porder, axis=1)
        count2 = self._valid2.sum(axis=1)
        self._used2 = self._valid2 / np.maximum(count2, 1)[:, None]
        self._pairs = self._pair_matrix(first, second, self._valid2, c)
        self._pairs_t = self._pairs.T.tocsr()
        self.shape = (n, c)

    @staticmethod
    def _pair_matrix(first: np.ndarray, second: np.ndarray, valid: np.ndarray, c: int) -> Any:
        """Sparse ``(N*P, N*C)``: row ``(q, p)`` gives ``s_first - s_second`` of pair ``p``."""
        from scipy.sparse import csr_matrix

        n, p = first.shape
        base = (np.arange(n) * c)[:, None]
        rows = np.repeat(np.arange(n * p), 2)
        cols = np.stack([first + base, second + base], axis=-1).ravel()
        sign = np.stack([valid, valid], axis=-1).astype(float) * np.array([1.0, -1.0])
        return csr_matrix((sign.ravel(), (rows, cols)), shape=(n * p, n * c))

    def useful(self) -> np.ndarray:
        """``(N,)``: queries whose candidates lie at two or more distances (the others carry
        no order to learn)."""
        d = np.where(np.isfinite(self.distances), self.distances, np.nan)
        with np.errstate(invalid="ignore"):
            spread = np.nanmax(d, axis=1, initial=-np.inf) - np.nanmin(d, axis=1, initial=np.inf)
        return np.nan_to_num(spread, nan=0.0, neginf=0.0) > 0

    def subset(self, rows: np.ndarray) -> MultiOrderLoss:
        """The same loss on some of the queries (a mask or indices)."""
        return MultiOrderLoss(self.distances[rows], self.weights, self.top)

    def __call__(self, scores: np.ndarray) -> tuple[float, np.ndarray]:
        """The loss summed over queries, and its gradient ``(N, C)`` in the scores."""
        s = np.asarray(scores, dtype=float)
        if s.shape != self.shape:
            raise ValueError(f"scores {s.shape} do not match distances {self.shape}")
        flat = s.ravel()
        w1, w2 = self.weights
        l1, g1 = plackett_luce(flat[self._flat1].reshape(self.shape), self._valid1, self._used1)
        z2 = (self._pairs @ flat).reshape(self._valid2.shape)
        l2, g2 = plackett_luce(z2, self._valid2, self._used2)
        grad = np.zeros(flat.size)
        grad[self._flat1] = w1 * g1.ravel()
        grad += w2 * (self._pairs_t @ g2.ravel())
        return float(w1 * l1.sum() + w2 * l2.sum()), grad.reshape(self.shape)


def multi_order_loss(
    scores: np.ndarray,
    distances: np.ndarray,
    weights: tuple[float, float] = ORDER_WEIGHTS,
    top: int | None = None,
) -> tuple[float, np.ndarray]:
    """GeoRanker's loss of ``scores`` given the true ``distances`` (both ``(N, C)``), mean
    over queries, and its gradient in the scores."""
    loss = MultiOrderLoss(np.atleast_2d(distances), weights, top)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    value, grad = loss(s)
    n = s.shape[0]
    return value / n, grad.reshape(np.shape(scores)) / n
