"""From ranked candidates to a few distinct answers, each with a confidence and a radius.

A refiner returns, for one photo, a ranked list of candidate positions with
scores; a model with a location head may add GPS-gallery candidates with
probabilities. What a user wants is the top-k *distinct* places:

1. **weights** (summing to 1 over a photo's candidates): a refiner whose
   scores are a distribution (``kde``, ``best``) gives its probabilities; for
   the others (``nearest``: cosine similarities, ``dualgeo``: cluster order,
   neither a probability) every retrieved neighbour is one vote, ``1/K``.
   Gallery candidates enter with their probabilities renormalised over the
   ones returned, mixed in with weight ``gps_weight``.
2. **merging**: candidates closer than ``merge_km`` to an earlier one join
   it; a place's weight is the sum of its members', its position that of its
   first member. Places keep the refiner's order, so guess 1 is always the
   refiner's choice (ordering by merged weight instead lost accuracy at
   750-2500 km with the learned refiner, docs/benchmark.md). With gallery
   candidates, which have no place in the refiner's order, both sources are
   ordered by weight.
3. **confidence**: the place's weight — the refiner's probability mass on it,
   or the share of the retrieved neighbours taken there ("3 of the 20 most
   similar photos": 15 %). Not renormalised over the places shown.
4. **uncertainty**: the weighted root-mean-square distance to the place of
   the candidates that support it — within ``support_km`` and closer to it
   than to any other shown place, its own merged members included — at least
   ``merge_km / 2``. A single candidate that nothing else supports gets
   ``support_km``: all that is known is that it is not backed up at that scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geolocus.geo import pairwise_km

#: Candidates closer than this are one place.
MERGE_KM = 5.0
#: Candidates farther than this from a place do not support it.
SUPPORT_KM = 750.0


@dataclass
class Place:
    """One distinct answer (before place names are attached)."""

    lat: float
    lon: float
    confidence: float
    uncertainty_km: float
    source: str
    members: int


def is_distribution(scores: np.ndarray, tol: float = 1e-4) -> bool:
    """Whether every row is non-negative and sums to 1 (a refiner's probabilities)."""
    s = np.asarray(scores, dtype=float)
    return bool(s.size) and bool((s >= -tol).all()) and bool(np.allclose(s.sum(-1), 1.0, atol=tol))


def score_weights(scores: np.ndarray) -> np.ndarray:
    """Rows of refiner scores as weights summing to 1: the refiner's probabilities where
    its scores are a distribution, else one equal vote per candidate."""
    s = np.asarray(scores, dtype=float)
    if is_distribution(s):
        p = np.clip(s, 0.0, None)
        return p / p.sum(-1, keepdims=True)
    return np.full(s.shape, 1.0 / s.shape[-1])


def distinct_places(
    coords: np.ndarray,
    weights: np.ndarray,
    sources: list[str] | None = None,
    *,
    top_k: int = 5,
    merge_km: float = MERGE_KM,
    support_km: float = SUPPORT_KM,
    by_weight: bool = False,
) -> list[Place]:
    """The first ``top_k`` distinct places among one photo's candidates (see above).

    Candidates come in the refiner's order, best first, and places keep it
    (guess 1 is the refiner's choice); ``by_weight`` orders candidates and
    places by weight instead (to combine candidates of several sources).
    """
    c = np.asarray(coords, dtype=float).reshape(-1, 2)
    w = np.asarray(weights, dtype=float).reshape(-1)
    if len(c) == 0:
        return []
    src = list(sources) if sources is not None else ["retrieval"] * len(c)
    if by_weight:
        order = np.argsort(-w, kind="stable")
        c, w = c[order], w[order]
        src = [src[i] for i in order]
    d = pairwise_km(c)
    head = np.full(len(c), -1)
    for i in range(len(c)):
        if head[i] >= 0:
            continue
        head[i] = i
        head[(d[i] < merge_km) & (head < 0)] = i
    heads = np.unique(head)  # ascending: the order of their first member
    total = np.array([w[head == h].sum() for h in heads])
    rank = np.argsort(-total, kind="stable") if by_weight else np.arange(len(heads))
    shown = heads[rank[:top_k]]
    mass = total[rank[:top_k]]
    # supporters: every candidate within support_km, assigned to the closest shown place
    dd = d[:, shown]
    owner = np.argmin(dd, axis=1)
    places = []
    for j, h in enumerate(shown):
        sup = (owner == j) & (dd[:, j] <= support_km)
        if sup.sum() <= 1 or w[sup].sum() <= 0:
            unc = float(support_km)
        else:
            unc = float(np.sqrt(np.sum(w[sup] * dd[sup, j] ** 2) / w[sup].sum()))
            unc = max(unc, 0.5 * merge_km)
        srcs = {src[i] for i in np.flatnonzero(head == h)}
        places.append(
            Place(
                lat=float(c[h, 0]),
                lon=float(c[h, 1]),
                confidence=float(mass[j]),
                uncertainty_km=unc,
                source=src[h] if len(srcs) == 1 else "+".join(sorted(srcs)),
                members=int((head == h).sum()),
            )
        )
    return places


def pool_candidates(
    ranked: np.ndarray,
    scores: np.ndarray,
    gps: tuple[np.ndarray, np.ndarray] | None = None,
    gps_weight: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One photo's candidates and their weights (summing to 1, but see below): the refiner's,
    mixed with gallery candidates. Returns ``(coords (C, 2), weights (C,), sources)``.

    With no refiner candidates (no database) the gallery's probabilities are kept as they
    are — the model's softmax over its whole gallery — so an answer's confidence is the
    model's own probability."""
    ranked = np.asarray(ranked, dtype=float).reshape(-1, 2)
    w = np.zeros(0)
    if len(ranked):
        w = score_weights(np.asarray(scores, dtype=float).reshape(1, -1))[0]
    sources = ["retrieval"] * len(ranked)
    if gps is None or len(gps[0]) == 0:
        return ranked, w, sources
    gc = np.asarray(gps[0], dtype=float).reshape(-1, 2)
    gp = np.clip(np.asarray(gps[1], dtype=float).reshape(-1), 0.0, None)
    if len(ranked) == 0:  # a worldwide model alone: its probabilities are the answer
        return gc, gp, ["gallery"] * len(gc)
    gp = gp / gp.sum() if gp.sum() > 0 else np.full(len(gp), 1.0 / len(gp))
    a = float(np.clip(gps_weight, 0.0, 1.0))
    coords = np.concatenate([ranked, gc])
    weights = np.concatenate([(1.0 - a) * w, a * gp])
    return coords, weights, sources + ["gallery"] * len(gc)
