"""``best``: a learned re-ranker over candidate geometry (no multimodal model).

The five accuracy thresholds are scored together, so the model is fitted to
what is scored: with candidate scores ``s = X @ w`` (features from
:mod:`geolocus.refine.features`) and the soft choice ``p = softmax(beta * s)``
over each query's candidates, it maximises the expected number of thresholds
the chosen candidate meets,

    mean over queries of  sum_c p_c * #{t : d(c, truth) <= t},

minus ``l2 * |w - w0|^2``, where ``w0`` is the hand-set multi-scale vote
(:func:`~geolocus.refine.features.prior_weights`). This is a conditional-logit
(listwise) model: only the ordering of a query's own candidates matters, and
queries whose candidates are all equally good or bad carry no weight. L-BFGS
from ``w0`` makes the fit deterministic. ``beta`` and ``l2`` are chosen by
photographer-grouped cross-validation inside the fitted data unless given.

That is the ``softmax`` objective (the default). The ``georanker`` objective fits the
same model to GeoRanker's distance-aware multi-order ranking loss instead
(:mod:`geolocus.refine.georanker`: Plackett–Luce over the candidates sorted by their
distance to the truth, and over pairs sorted by their distance gaps), the same way.

The ranking's scores are ``softmax(s / temperature)``, the temperature fitted
by maximum likelihood of the candidate closest to the truth: read them as the
probability that a candidate is the one closest to the truth. Agreeing
candidates share that probability; :func:`mass_within` adds it back up into a
confidence that the answer is within a distance (see docs/refine.md).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from geolocus.data.im2gps3k import photographer
from geolocus.data.neighbours import Neighbours
from geolocus.errors import InputError
from geolocus.eval.folds import grouped_folds
from geolocus.geo import THRESHOLDS_KM, distance_km
from geolocus.refine.base import Ranking, Refiner, order_rows
from geolocus.refine.features import FeatureSpec, candidate_features, prior_weights
from geolocus.refine.georanker import ORDER_WEIGHTS, MultiOrderLoss
from geolocus.refine.text import text_features

#: Training objectives of ``best``: the expected number of thresholds met by a softmax
#: choice, or GeoRanker's distance-aware multi-order ranking loss.
OBJECTIVES: tuple[str, ...] = ("softmax", "georanker")
#: The objective used when none is named.
DEFAULT_OBJECTIVE = "softmax"

#: Candidate L2 weights of the text features (second stage) for the inner cross-validation.
TEXT_L2_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3)
#: Candidate values of ``(sharpness, l2)`` for the inner cross-validation.
DEFAULT_GRID: tuple[tuple[float, float], ...] = (
    (1.0, 1e-3),
    (2.0, 1e-3),
    (4.0, 1e-3),
    (1.0, 1e-2),
    (2.0, 1e-2),
    (4.0, 1e-2),
)


def threshold_gains(
    candidates: np.ndarray, truth: np.ndarray, thresholds_km: tuple[float, ...] = THRESHOLDS_KM
) -> np.ndarray:
    """``(N, C)``: how many thresholds each candidate meets (its share of the score)."""
    d = distance_km(candidates, np.asarray(truth, float)[:, None, :])
    return sum((d <= t).astype(float) for t in thresholds_km)


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fit_weights(
    x: np.ndarray,
    gains: np.ndarray,
    w0: np.ndarray,
    sharpness: float,
    l2: float,
    offset: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    loss: MultiOrderLoss | None = None,
) -> np.ndarray:
    """Weights maximising the expected gain of a softmax choice, L2-pulled towards ``w0``.

    ``mask`` (N, C): which candidates exist (queries with fewer candidates than others,
    padded); the others get no probability.
    ``offset`` (N, C): fixed scores that ``x @ w`` is added to (a second stage of
    features on top of a fitted model). Optimised over the features divided by
    their spread (same optimum, far fewer L-BFGS steps); queries whose candidates
    are all equally good, or whose features are all equal, are left out, since
    they contribute nothing.
    ``loss``: minimise GeoRanker's multi-order ranking loss of ``sharpness * scores``
    instead (per query, as the expected gain; its missing candidates are those at a
    non-finite distance); ``gains`` are then unused.
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    if loss is None:
        useful = gains.max(axis=1) > gains.min(axis=1)
    else:
        if mask is not None:  # padded candidates are missing ones to the loss too
            d = np.where(np.asarray(mask, bool), loss.distances, np.inf)
            loss = MultiOrderLoss(d, loss.weights, loss.top)
        useful = loss.useful()
    if offset is not None:
        useful &= (x.max(axis=1) > x.min(axis=1)).any(axis=1)
    x, gains = x[useful], gains[useful]
    ranking = None if loss is None else loss.subset(useful)
    off = None if offset is None else np.asarray(offset, float)[useful]
    if mask is not None:
        pad = np.where(np.asarray(mask, bool)[useful], 0.0, -1e9)
        off = pad if off is None else off + pad
    n, c, f = x.shape
    if n == 0:
        return w0.astype(float)
    scale = x.reshape(n * c, f).std(axis=0)
    scale[scale < 1e-9] = 1.0
    xf = (x.reshape(n * c, f) / scale).astype(np.float32)
    u0 = w0 * scale
    n_all = len(useful)

    def objective(u: np.ndarray) -> tuple[float, np.ndarray]:
        s = (xf @ u.astype(np.float32)).reshape(n, c).astype(float)
        z = sharpness * (s if off is None else s + off)
        if ranking is None:
            p = _softmax(z)
            reward = (p * gains).sum(axis=1, keepdims=True)
            # d reward / d s_c = beta * p_c * (gain_c - reward)
            value, dz = -float(reward.sum()), -p * (gains - reward)
        else:
            value, dz = ranking(z)
        ds = (sharpness * dz).reshape(n * c).astype(np.float32)
        diff = (u - u0) / scale
        total = value / n_all + l2 * float(diff @ diff)
        grad = (xf.T @ ds).astype(float) / n_all + 2.0 * l2 * diff / scale
        return total, grad

    # Many small matrix-vector products: BLAS threads only contend (tens of times slower
    # on a busy machine), so run them on one.
    with threadpool_limits(1, user_api="blas"):
        res = minimize(
            objective, u0.astype(float), jac=True, method="L-BFGS-B", options={"maxiter": 300}
        )
    return np.asarray(res.x, dtype=float) / scale


def _closest_sets(candidates: np.ndarray, truth: np.ndarray, tol_km: float = 0.5) -> np.ndarray:
    d = distance_km(candidates, np.asarray(truth, float)[:, None, :])
    return d <= d.min(axis=1, keepdims=True) + tol_km


def fit_temperature(scores: np.ndarray, closest: np.ndarray) -> float:
    """Temperature that makes ``softmax(scores / T)`` the likeliest guess of the closest set."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        s = scores / np.exp(log_t)
        s = s - s.max(axis=1, keepdims=True)
        lse = np.log(np.exp(s).sum(axis=1))
        hit = np.log((np.exp(s) * closest).sum(axis=1))
        return float(np.mean(lse - hit))

    res = minimize_scalar(nll, bounds=(-6.0, 6.0), method="bounded")
    return float(np.exp(res.x))


def mass_within(ranking: Ranking, km: float) -> np.ndarray:
    """``(N, C)``: for each ranked candidate, the total score of the candidates within
    ``km`` of it (itself included).

    With :class:`BestRefiner`'s scores (the probability that a candidate is the one
    closest to the truth) this reads as the confidence that the truth's closest
    candidate lies within ``km`` of this one: a cluster of agreeing candidates
    shares one probability among its members, and this adds it back up.
    """
    d = distance_km(ranking.candidates[:, :, None, :], ranking.candidates[:, None, :, :])
    return np.einsum("ncd,nd->nc", (d <= km).astype(float), ranking.scores)


class BestRefiner(Refiner):
    """The strongest stage-2 choice without a multimodal model: a listwise linear
    re-ranker over multi-scale, rank-binned neighbour votes and far-neighbour counts.

    ``sharpness`` / ``l2`` fix the softmax sharpness of the training objective
    and the pull towards the hand-set vote; left ``None``, ``fit`` chooses them
    from ``grid`` by ``inner_folds``-fold photographer-grouped cross-validation
    on the data it is given.

    ``text``: also score what the query photos' text says about each candidate
    (:mod:`geolocus.refine.text`; the neighbours' ``evidence``, see
    :class:`~geolocus.data.Neighbours`). ``None`` (default): exactly when the
    neighbours given to ``fit`` carry evidence. The text weights are fitted in a
    second stage on top of the neighbour model, L2-pulled towards zero by
    ``text_l2`` (chosen from ``text_l2_grid`` by the same inner CV when ``None``),
    so a query without text is ranked exactly as by ``best`` without text; a model
    fitted with text ranks queries without evidence as photos without text.

    ``objective``: what the weights are fitted to, ``"softmax"`` (the expected number of
    thresholds met) or ``"georanker"`` (GeoRanker's multi-order ranking loss, its two
    orders weighted by ``order_weights``, over the first ``top`` positions or all when
    ``None``; :mod:`geolocus.refine.georanker`). Either way ``sharpness`` and ``l2``
    are chosen by the inner CV's accuracy, and the scores' temperature as above.
    """

    name = "best"
    requires_fit = True
    learns = True
    can_read_text = True
    objectives = OBJECTIVES

    def __init__(
        self,
        sharpness: float | None = None,
        l2: float | None = None,
        spec: FeatureSpec | None = None,
        grid: tuple[tuple[float, float], ...] = DEFAULT_GRID,
        inner_folds: int = 3,
        thresholds_km: tuple[float, ...] = THRESHOLDS_KM,
        text: bool | None = None,
        text_l2: float | None = None,
        text_l2_grid: tuple[float, ...] = TEXT_L2_GRID,
        objective: str = DEFAULT_OBJECTIVE,
        order_weights: tuple[float, float] = ORDER_WEIGHTS,
        top: int | None = None,
    ) -> None:
        self.objective = objective
        self.order_weights = order_weights
        self.top = top
        self.text = text
        self.text_l2 = text_l2
        self.text_l2_grid = tuple(text_l2_grid)
        self.sharpness = sharpness
        self.l2 = l2
        self.spec = spec
        self.grid = grid
        self.inner_folds = inner_folds
        self.thresholds_km = tuple(thresholds_km)

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, neighbours: Neighbours, truth: np.ndarray) -> BestRefiner:
        truth = np.asarray(truth, dtype=float).reshape(-1, 2)
        if len(truth) != len(neighbours):
            raise InputError(f"{len(neighbours)} queries but {len(truth)} true positions")
        if len(neighbours) < 2:
            raise InputError("refiner 'best' needs at least 2 labelled queries to fit")
        use_text = neighbours.evidence is not None if self.text is None else bool(self.text)
        if use_text and neighbours.evidence is None:
            raise InputError(
                "refiner 'best' with text needs the query photos' evidence (give the images)"
            )
        loss = self._loss(neighbours.near, truth)
        spec = replace(self.spec or FeatureSpec(), text=False)
        x = candidate_features(neighbours, spec)
        gains = threshold_gains(neighbours.near, truth, self.thresholds_km)
        w0 = prior_weights(spec, self.thresholds_km, neighbours.k)
        if self.sharpness is None or self.l2 is None:
            self.sharpness_, self.l2_ = self._select(neighbours.ids, x, gains, w0, loss)
        else:
            self.sharpness_, self.l2_ = float(self.sharpness), float(self.l2)
        self.coef_ = fit_weights(x, gains, w0, self.sharpness_, self.l2_, loss=loss)
        scores = x @ self.coef_
        if use_text:
            # Second stage: the text weights on top of the fixed neighbour model, so that
            # queries without text keep exactly the ranking of 'best' without text.

            xt = text_features(neighbours.near, neighbours.evidence)
            if self.text_l2 is None:
                self.text_l2_ = self._select_text(neighbours.ids, xt, gains, scores, loss)
            else:
                self.text_l2_ = float(self.text_l2)
            zero = np.zeros(xt.shape[-1])
            wt = fit_weights(
                xt, gains, zero, self.sharpness_, self.text_l2_, offset=scores, loss=loss
            )
            spec = replace(spec, text=True)
            self.coef_ = np.concatenate([self.coef_, wt])
            scores = scores + xt @ wt
        self.spec_ = spec
        self.temperature_ = fit_temperature(scores, _closest_sets(neighbours.near, truth))
        self.k_near_, self.k_far_ = neighbours.k, neighbours.far.shape[1]
        return self

    def _loss(self, near: np.ndarray, truth: np.ndarray) -> MultiOrderLoss | None:
        """GeoRanker's loss on these candidates (``None`` for the softmax objective); an
        unknown objective is a user error."""
        if self.objective not in OBJECTIVES:
            raise InputError(
                f"unknown objective {self.objective!r} for refiner 'best'; choose one of: "
                + ", ".join(OBJECTIVES)
            )
        if self.objective == DEFAULT_OBJECTIVE:
            return None
        d = distance_km(near, np.asarray(truth, float)[:, None, :])
        return MultiOrderLoss(d, self.order_weights, self.top)

    def _select_text(
        self,
        ids: np.ndarray,
        xt: np.ndarray,
        gains: np.ndarray,
        offset: np.ndarray,
        loss: MultiOrderLoss | None = None,
    ) -> float:
        """The text L2 weight with the best inner cross-validated mean accuracy."""
        grid = self.text_l2_grid
        folds = grouped_folds(ids, self.inner_folds, group=photographer, salt="best-inner")
        if len(np.unique(folds)) < 2:
            return grid[0]
        best, best_gain = grid[0], -np.inf
        rows = np.arange(len(ids))
        zero = np.zeros(xt.shape[-1])
        for l2 in grid:
            pick = np.empty(len(ids), dtype=int)
            for f in np.unique(folds):
                te = folds == f
                sub = None if loss is None else loss.subset(~te)
                w = fit_weights(
                    xt[~te], gains[~te], zero, self.sharpness_, l2, offset[~te], loss=sub
                )
                pick[te] = np.argmax(offset[te] + xt[te] @ w, axis=1)
            g = float(gains[rows, pick].mean())
            if g > best_gain + 1e-12:
                best, best_gain = l2, g
        return best

    def _select(
        self,
        ids: np.ndarray,
        x: np.ndarray,
        gains: np.ndarray,
        w0: np.ndarray,
        loss: MultiOrderLoss | None = None,
    ) -> tuple[float, float]:
        """The grid point with the best inner cross-validated mean accuracy (first on ties)."""
        folds = grouped_folds(ids, self.inner_folds, group=photographer, salt="best-inner")
        if len(np.unique(folds)) < 2:  # too few photographers to split: keep the first setting
            return self.grid[0]
        best, best_gain = self.grid[0], -np.inf
        rows = np.arange(len(ids))
        subsets = {f: None if loss is None else loss.subset(folds != f) for f in np.unique(folds)}
        for beta, l2 in self.grid:
            pick = np.empty(len(ids), dtype=int)
            for f in np.unique(folds):
                te = folds == f
                w = fit_weights(x[~te], gains[~te], w0, beta, l2, loss=subsets[f])
                pick[te] = np.argmax(x[te] @ w, axis=1)
            g = float(gains[rows, pick].mean())
            if g > best_gain + 1e-12:
                best, best_gain = (beta, l2), g
        return best

    # -- predicting ------------------------------------------------------------------------

    def _check_input(self, neighbours: Neighbours) -> None:
        self.check_fitted()
        if neighbours.k != self.k_near_ or neighbours.far.shape[1] != self.k_far_:
            raise InputError(
                f"refiner 'best' was fitted on {self.k_near_} near and {self.k_far_} far "
                f"neighbours per query, got {neighbours.k} and {neighbours.far.shape[1]}"
            )

    def decision_function(self, neighbours: Neighbours) -> np.ndarray:
        """Raw candidate scores ``(N, K)`` in retrieval order (higher is better)."""
        self._check_input(neighbours)
        return candidate_features(neighbours, self.spec_) @ self.coef_

    def rank(self, neighbours: Neighbours) -> Ranking:
        p = _softmax(self.decision_function(neighbours) / self.temperature_)
        return order_rows(neighbours.near, p)

    @property
    def reads_text(self) -> bool:
        return self.is_fitted() and self.spec_.text

    def _check_state(self) -> None:
        if self.coef_.shape != (len(self.spec_.names()),) or not np.all(np.isfinite(self.coef_)):
            raise ValueError("coefficients do not match the feature list")
