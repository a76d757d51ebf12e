"""Placing a photographer's photos from their own geotagged ones: the collection benchmark.

``geolocus geotag`` places the photos of a collection that lack GPS from those that
have it. This module measures how well on IM2GPS3k, whose photos come from ~200
Flickr photographers: every photographer with 2 or more photos is a collection,
and each of its photos is placed from the others (leave-one-out) by the same code
as ``geotag``: a :class:`~geolocus.index.Database` of the collection,
:func:`~geolocus.pipeline.fitting.loo_neighbours` (the search ``geotag``'s own
check runs) and :meth:`Geolocator.place` (what ``geotag`` runs after its search).

Whatever is learned is fitted on other photographers' collections only: the
collections are split into photographer-grouped folds, and each fold is placed by
a refiner fitted on the leave-one-out neighbours of the other folds' collections.

Reference rows: the collection's medoid (the other photo with the least total
distance to the rest: no pixels used), and the oracle (the other photo nearest
the truth, chosen knowing it: the most any choice among them can reach).
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geolocus.data.im2gps3k import flickr_id, photographer
from geolocus.data.neighbours import Neighbours
from geolocus.errors import InputError
from geolocus.eval import results_table, score_errors
from geolocus.eval.folds import grouped_folds
from geolocus.files import atomic_write
from geolocus.geo import THRESHOLDS_KM, haversine_km, pairwise_km
from geolocus.index import Database
from geolocus.models.embedder import create_embedder
from geolocus.pipeline.fitting import loo_neighbours
from geolocus.pipeline.geolocator import Geolocator, PlaceSettings, RetrievalSettings
from geolocus.refine import Refiner, create_refiner

if TYPE_CHECKING:
    from geolocus.models.embedder import Embedder

#: Photos of the collection retrieved per photo: all of them in all but the largest
#: collections, so that the photos taken just before and after are among them.
COLLECTION_K = 250
#: Minimum confidences shown by :func:`confidence_table`.
CONFIDENCE_LEVELS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
THRESHOLD_NAMES = [f"{t:g} km" for t in THRESHOLDS_KM]
#: ``geotag``'s default stage 2 for a collection.
DEFAULT_METHOD = "collection"


@dataclass(frozen=True)
class Method:
    """A way of placing a photo: a refiner by name, ``fitted`` on other photographers'
    collections (cross-validated) or used as made (rules, or a learner's prior)."""

    refiner: str
    fitted: bool
    options: tuple[tuple[str, Any], ...] = ()

    def make(self) -> Refiner:
        return create_refiner(self.refiner, **dict(self.options))


#: The methods the benchmark knows, by the name in its table.
METHODS: dict[str, Method] = {
    "nearest": Method("nearest", fitted=False),
    "kde": Method("kde", fitted=False),
    "collection-prior": Method("collection", fitted=False),
    "collection": Method("collection", fitted=True),
    "collection-prior+flickr-order": Method(
        "collection", fitted=False, options=(("use_time", True),)
    ),
    "collection+flickr-order": Method("collection", fitted=True, options=(("use_time", True),)),
    "collection+verify": Method("collection", fitted=True, options=(("use_inliers", True),)),
    "collection+verify-prior": Method("collection", fitted=False, options=(("use_inliers", True),)),
}


def geotag_geolocator(db: Database, refiner: Refiner, embedder: Embedder) -> Geolocator:
    """The geolocator ``geotag`` places a collection's photos with (``refiner`` as given:
    fitted already, or used unfitted)."""
    return Geolocator.from_database(
        db,
        refiner,
        embedder=embedder,
        retrieval=RetrievalSettings(k=COLLECTION_K, k_far=0),
        places=PlaceSettings(top_k=1, names=False),
        cache_refiner=False,
        warmup=False,
    )


def stack_neighbours(parts: list[Neighbours]) -> Neighbours:
    """Neighbours of several collections as one set, padded to the largest ``K`` with NaN
    positions and scores (padding a refiner that learns across collections ignores)."""
    k = max(p.k for p in parts)

    def pad(a: np.ndarray, fill: Any, dtype: Any) -> np.ndarray:
        shape = (a.shape[0], k - a.shape[1], *a.shape[2:])
        return np.concatenate([np.asarray(a, dtype=dtype), np.full(shape, fill, dtype=dtype)], 1)

    near = np.concatenate([pad(p.near, np.nan, float) for p in parts])
    scores = ids = None
    if all(p.near_scores is not None for p in parts):
        scores = np.concatenate([pad(p.near_scores, np.nan, float) for p in parts])  # type: ignore[arg-type]
    if all(p.near_ids is not None for p in parts):
        ids = np.concatenate([pad(p.near_ids, "", object) for p in parts])  # type: ignore[arg-type]
    return Neighbours(
        ids=np.concatenate([p.ids for p in parts]),
        near=near,
        far=np.zeros((len(near), 0, 2)),
        near_scores=scores,
        near_ids=ids,
    )


@dataclass
class Collection:
    """One photographer's photos: rows into the benchmark's arrays, and the leave-one-out
    neighbours of each (in the same order) from a database of the collection."""

    name: str
    rows: np.ndarray
    database: Database
    neighbours: Neighbours


def flickr_order(ids: list[str]) -> dict[str, float]:
    """The order of upload of IM2GPS3k photos (their Flickr ids), the stand-in for capture
    time of the ``+flickr-order`` methods: the benchmark's EXIF was stripped."""
    out = {}
    for i in ids:
        f = flickr_id(i)
        if f is not None:
            out[i] = float(f)
    return out


def reference_points(
    coords: np.ndarray, order: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each photo of one collection: the medoid of the others, the other photo nearest
    it (the oracle) and the other photo nearest in ``order`` (e.g. of upload; NaN: none
    known), all ``(n, 2)``."""
    d = pairwise_km(np.asarray(coords, float))
    n = len(d)
    total = d.sum(axis=1)
    medoid = np.empty(n, dtype=int)
    oracle = np.empty(n, dtype=int)
    for i in range(n):
        cost = total - d[:, i]  # each other photo's total distance to the others
        cost[i] = np.inf
        medoid[i] = int(np.argmin(cost))
        di = d[i].copy()
        di[i] = np.inf
        oracle[i] = int(np.argmin(di))
    seq = np.full((n, 2), np.nan)
    if order is not None and np.isfinite(order).sum() >= 2:
        for i in map(int, np.flatnonzero(np.isfinite(order))):
            gap = np.abs(order - order[i])
            gap[i] = np.nan
            if np.isfinite(gap).any():
                seq[i] = coords[int(np.nanargmin(gap))]
    return coords[medoid], coords[oracle], seq


@dataclass
class CollectionResult:
    """Scores per method and the predictions behind them."""

    scores: dict[str, Any]
    predictions: dict[str, np.ndarray]  # method -> (N, 2), NaN where not placed
    confidence: dict[str, np.ndarray]  # method -> (N,)
    ids: list[str]
    truth: np.ndarray
    placed: np.ndarray  # bool (N,): photos in a collection of 2 or more
    n_collections: int
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def table(self, markdown: bool = False) -> str:
        return results_table(list(self.scores.items()), markdown=markdown)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": "collections",
            "n_photos": int(self.placed.sum()),
            "n_collections": self.n_collections,
            "seconds": self.seconds,
            "scores": {m: s.to_json() for m, s in self.scores.items()},
            **self.extra,
        }

    def write_predictions(self, method: str, path: str | os.PathLike[str]) -> int:
        """``IMG_ID,LAT,LON,CONFIDENCE`` of every photo ``method`` placed; returns the count."""
        pred, conf = self.predictions[method], self.confidence[method]
        n = 0
        with atomic_write(path, newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["IMG_ID", "LAT", "LON", "CONFIDENCE"])
            for i, rid in enumerate(self.ids):
                if np.isfinite(pred[i]).all():
                    w.writerow([rid, f"{pred[i, 0]:.6f}", f"{pred[i, 1]:.6f}", f"{conf[i]:.4f}"])
                    n += 1
        return n


def build_collections(
    ids: list[str],
    vectors: np.ndarray,
    truth: np.ndarray,
    embedder: Embedder,
    folder: str | os.PathLike[str],
    group: Callable[[str], str] = photographer,
    k: int = COLLECTION_K,
    progress: bool = True,
) -> list[Collection]:
    """A database per collection of 2 or more photos (under ``folder``), with each photo's
    leave-one-out neighbours in it."""
    owners = np.array([group(i) for i in ids], dtype=object)
    out = []
    names, counts = np.unique(owners, return_counts=True)
    for j, name in enumerate(names[counts >= 2]):
        rows = np.flatnonzero(owners == name)
        db = Database.create(
            Path(folder) / f"c{j}",
            dim=embedder.dim,
            model=embedder.name,
            model_version=embedder.version,
        )
        db.add(vectors[rows], [ids[i] for i in rows], truth[rows])
        # every other photo at most: the search pads a short list with repeats
        nb, _ = loo_neighbours(
            db, min(k, len(rows) - 1), 0, max_queries=len(rows) + 1, min_photos=2
        )
        order = {str(x): r for x, r in zip(db.ids, range(len(rows)), strict=True)}
        pos = np.array([order[str(x)] for x in nb.ids])
        out.append(Collection(str(name), rows[pos], db, nb))
        if progress and (j + 1) % 50 == 0:
            print(f"collections: {j + 1} databases built", file=sys.stderr)
    return out


def run_methods(
    collections: list[Collection],
    n: int,
    truth: np.ndarray,
    methods: list[str],
    embedder: Embedder,
    folds: int = 5,
    progress: bool = True,
    verifier: Callable[[Neighbours], np.ndarray] | None = None,
    times: dict[str, float] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Predictions ``(n, 2)`` and confidences ``(n,)`` of each method (NaN: not placed);
    ``verifier`` gives the inlier counts of the methods that verify, ``times`` the capture
    times (or order) of the methods that use them."""
    fold = grouped_folds([c.name for c in collections], folds, group=str, salt="collections")
    preds = {m: np.full((n, 2), np.nan) for m in methods}
    conf = {m: np.full(n, np.nan) for m in methods}
    for m in methods:
        spec = METHODS[m]
        t0 = time.perf_counter()
        for f in range(folds) if spec.fitted else [None]:
            refiner = spec.make()
            if getattr(refiner, "use_inliers", False):
                refiner.inliers = verifier  # type: ignore[attr-defined]
            if getattr(refiner, "use_time", False):
                refiner.times = times  # type: ignore[attr-defined]
            if f is not None:
                train = [c for c, g in zip(collections, fold, strict=True) if g != f]
                nb = stack_neighbours([c.neighbours for c in train])
                refiner.fit(nb, truth[np.concatenate([c.rows for c in train])])
            test = [c for c, g in zip(collections, fold, strict=True) if f is None or g == f]
            for c in test:
                geo = geotag_geolocator(c.database, refiner, embedder)
                out = geo.place(c.neighbours, list(c.neighbours.ids))
                for r, p in zip(c.rows, out, strict=True):
                    if p.top is not None:
                        preds[m][r] = (p.top.lat, p.top.lon)
                        conf[m][r] = np.nan if p.top.confidence is None else p.top.confidence
        if progress:
            print(f"{m}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return preds, conf


def confidence_table(
    result: CollectionResult, method: str, levels: tuple[float, ...] = CONFIDENCE_LEVELS
) -> str:
    """For each minimum confidence: the share of photos placed (the others left untagged,
    as ``geotag --min-confidence`` leaves them) and the accuracy of those placed."""
    pred, conf = result.predictions[method], result.confidence[method]
    ok = result.placed & np.isfinite(pred).all(axis=1)
    d = np.full(len(pred), np.inf)
    d[ok] = haversine_km(pred[ok, 0], pred[ok, 1], result.truth[ok, 0], result.truth[ok, 1])
    c = np.where(np.isfinite(conf), conf, 0.0)
    lines = [f"{method}: placed only from a minimum confidence on", ""]
    head = "min confidence  placed %  " + "  ".join(f"{t:>7}" for t in THRESHOLD_NAMES)
    lines += [head, "-" * len(head)]
    for lv in levels:
        keep = ok & (c >= lv)
        share = 100.0 * keep.sum() / max(1, result.placed.sum())
        acc = [100.0 * float(np.mean(d[keep] <= t)) if keep.any() else 0.0 for t in THRESHOLDS_KM]
        lines.append(f"{lv:>14.2f}  {share:>8.1f}  " + "  ".join(f"{a:>7.1f}" for a in acc))
    return "\n".join(lines)


def _scores(pred: np.ndarray, truth: np.ndarray, placed: np.ndarray) -> Any:
    ok = placed & np.isfinite(pred).all(axis=1)
    d = haversine_km(pred[ok, 0], pred[ok, 1], truth[ok, 0], truth[ok, 1])
    return score_errors(d, n_missing=int((placed & ~ok).sum()))


def benchmark_collections(
    ids: list[str],
    paths: list[str],
    truth: np.ndarray,
    methods: list[str] | None = None,
    *,
    model: str | None = None,
    embedder: Embedder | None = None,
    cache: str | os.PathLike[str] = "cache/features",
    tag: str = "im2gps3k",
    folds: int = 5,
    k: int = COLLECTION_K,
    verify: dict[str, Any] | None = None,
    progress: bool = True,
) -> CollectionResult:
    """The benchmark over photos ``paths`` (ids ``ids``, positions ``truth``): see the
    module docstring. Backbone features are cached under ``cache``; ``verify``: settings
    of the :class:`~geolocus.refine.verify.Verifier` of the methods that verify."""
    from geolocus.pipeline.benchmark import cached_features, embed_store

    methods = list(methods or [DEFAULT_METHOD])
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
    t0 = time.perf_counter()
    embedder = embedder if embedder is not None else create_embedder(model)
    store = cached_features(embedder, paths, ids, cache, tag=tag, progress=progress)
    have = set(store.ids)
    keep = [i for i, x in enumerate(ids) if x in have]
    kids = [ids[i] for i in keep]
    vectors = np.zeros((len(ids), embedder.dim), np.float32)
    vectors[keep] = embed_store(embedder, store)[store.rows(kids)]
    t_feat = time.perf_counter() - t0
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geolocus-collections-") as tmp:
        sub = build_collections(
            kids, vectors[keep], truth[keep], embedder, tmp, k=k, progress=progress
        )
        for c in sub:
            c.rows = np.asarray(keep)[c.rows]
        if len(sub) < (folds if any(METHODS[m].fitted for m in methods) else 1):
            raise InputError(
                f"{len(sub)} collections of 2 or more photos: the benchmark needs at least "
                f"{folds} (one per fold)"
            )
        placed = np.zeros(len(ids), dtype=bool)
        ref_m = np.full((len(ids), 2), np.nan)
        ref_o = np.full((len(ids), 2), np.nan)
        ref_s = np.full((len(ids), 2), np.nan)
        times = flickr_order(ids)
        for c in sub:
            placed[c.rows] = True
            order = np.array([times.get(ids[r], np.nan) for r in c.rows])
            ref_m[c.rows], ref_o[c.rows], ref_s[c.rows] = reference_points(truth[c.rows], order)
        t_db = time.perf_counter() - t1
        t2 = time.perf_counter()
        from geolocus.refine.verify import Verifier

        where = dict(zip(ids, paths, strict=True))
        verifier = Verifier(where.get, **(verify or {}))
        try:
            preds, conf = run_methods(
                sub,
                len(ids),
                truth,
                methods,
                embedder,
                folds,
                progress,
                verifier=verifier,
                times=times,
            )
        finally:
            verifier.save_pairs()  # an interrupted run keeps the matches it computed
    scores = {"the collection's medoid (no pixels)": _scores(ref_m, truth, placed)}
    if any("flickr-order" in m for m in methods):
        scores["nearest in upload order (no pixels)"] = _scores(ref_s, truth, placed)
    scores |= {m: _scores(preds[m], truth, placed) for m in methods}
    scores["best other photo (oracle)"] = _scores(ref_o, truth, placed)
    return CollectionResult(
        scores=scores,
        predictions=preds,
        confidence=conf,
        ids=list(ids),
        truth=truth,
        placed=placed,
        n_collections=len(sub),
        seconds={"features": t_feat, "databases": t_db, "methods": time.perf_counter() - t2},
        extra={"model": embedder.name, "k": k, "folds": folds, "methods": methods},
    )


__all__ = [
    "COLLECTION_K",
    "DEFAULT_METHOD",
    "METHODS",
    "CollectionResult",
    "benchmark_collections",
    "confidence_table",
    "geotag_geolocator",
    "reference_points",
    "stack_neighbours",
]
