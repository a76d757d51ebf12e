"""End-to-end evaluation on IM2GPS3k photos: the geolocator as a user runs it.

Two protocols, both photographer-grouped (:func:`geolocus.eval.folds.grouped_folds`),
so no photographer is ever in the database and among the queries at once:

- ``cv3``: 3-fold cross-validation over all 2997 photos. For each fold, a
  database is made from the other two folds and the fold's photos are
  geolocated from their pixels (backbone features, computed once and cached);
  every photo is predicted exactly once. Refiners that learn are fitted on the
  database alone, by leave-one-out with the query's own photographer left out.
- ``holdout`` (the demo): the database is built on disk from two folds with
  :func:`geolocus.index.build.build_database` (what ``geolocus index build``
  does) and a sample of the third fold goes through
  :meth:`Geolocator.predict` from the photo files (what ``geolocus predict``
  does).

Scores come from :func:`geolocus.eval.score_errors`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geolocus.data.im2gps3k import im2gps3k_dir, photographer
from geolocus.data.tables import read_coords
from geolocus.encoders.features import FeatureStore, cache_dir, extract_features, feature_key
from geolocus.errors import InputError
from geolocus.eval import published_results, results_table, score_errors
from geolocus.eval.folds import grouped_folds
from geolocus.geo import haversine_km
from geolocus.index import Database
from geolocus.index.build import Inputs, build_database, inputs_source
from geolocus.index.executors import LocalExecutor
from geolocus.models.embedder import create_embedder
from geolocus.pipeline.formats import write_map
from geolocus.pipeline.geolocator import Geolocator, PlaceSettings, RetrievalSettings
from geolocus.pipeline.results import place_label, top1
from geolocus.places import Gazetteer
from geolocus.refine import create_refiner

if TYPE_CHECKING:
    from geolocus.models.embedder import Embedder

#: The floor: accuracy (%) at 25, 200, 750, 2500 km of the best single point on Earth
#: for all of IM2GPS3k (one constant guess for every photo, chosen knowing the answers).
CONSTANT_FLOOR = {"25": 3.7, "200": 6.7, "750": 16.4, "2500": 38.1}


def floor_line() -> str:
    return "constant-guess floor (best single point for the whole set): " + " / ".join(
        f"{v} % at {k} km" for k, v in CONSTANT_FLOOR.items()
    )


@dataclass
class BenchmarkResult:
    """Scores per method, with what produced them."""

    protocol: str
    model: str
    scores: dict[str, Any]  # method -> Scores
    n_queries: int
    n_database: list[int]
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self, compare: bool = True) -> list[tuple[str, Any]]:

        rows: list[tuple[str, Any]] = list(self.scores.items())
        if compare:
            rows += [(r.system, r) for r in published_results("im2gps3k")]
        return rows

    def table(self, markdown: bool = False, compare: bool = True) -> str:

        return results_table(self.rows(compare), markdown=markdown)

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "model": self.model,
            "n_queries": self.n_queries,
            "n_database": self.n_database,
            "seconds": self.seconds,
            "scores": {m: s.to_json() for m, s in self.scores.items()},
            **self.extra,
        }


def labelled_photos(
    data: str | os.PathLike[str] | None,
) -> tuple[Path, list[str], list[str], np.ndarray]:
    """The benchmark folder, photo ids, photo paths (``images/ID``) and true positions."""
    d = im2gps3k_dir(data).resolve()
    lab = read_coords(d / "labels.csv", "labels")
    ids = lab["IMG_ID"].tolist()
    paths = [str(d / "images" / i) for i in ids]
    return d, ids, paths, lab[["LAT", "LON"]].to_numpy(dtype=float)


def embed_store(embedder: Embedder, store: FeatureStore, batch_size: int = 4096) -> np.ndarray:
    """Retrieval vectors of every row of a feature store, in chunks (float32): the cached
    backbone features of the cross-validation, never the photos again."""
    n = len(store)
    out = np.empty((n, embedder.dim), dtype=np.float32)
    for s in range(0, n, batch_size):
        emb = np.asarray(store.embeddings[s : s + batch_size], dtype=np.float32)
        tok = None
        if store.tokens is not None and embedder.tokens:
            tok = np.asarray(store.tokens[s : s + batch_size], dtype=np.float32)
        out[s : s + len(emb)] = embedder.embed_features(emb, tok)
    return out


def cached_features(
    embedder: Embedder,
    paths: list[str],
    ids: list[str],
    cache: str | os.PathLike[str],
    tag: str = "im2gps3k",
    batch_size: int = 16,
    progress: bool = True,
):
    """The backbone features of ``paths`` under ``cache`` (computed once): a store that
    also holds full tokens is reused when the embedder needs none."""
    enc = embedder.encoder
    folder = cache_dir(cache, enc, tag)
    if not embedder.tokens:
        key = feature_key(enc.fingerprint(), "full", 4, "float16", ids, paths)
        try:
            return FeatureStore.open(folder, key=key)
        except (InputError, OSError, ValueError):
            pass
    return extract_features(
        enc,
        paths,
        folder,
        ids=ids,
        batch_size=batch_size,
        tokens=embedder.tokens,
        token_grid=embedder.token_grid,
        loader_threads=1,
        progress=progress,
    )


def cross_validate(
    model: str | None = None,
    refiners: list[str] | tuple[str, ...] = ("dualgeo",),
    data: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] = "cache/features",
    folds: int = 3,
    k: int = 20,
    k_far: int = 20,
    progress: bool = True,
    embedder: Embedder | None = None,
) -> BenchmarkResult:
    """The ``cv3`` protocol (see the module docstring)."""
    for r in refiners:
        create_refiner(r)  # fail early on an unknown name
    t0 = time.perf_counter()
    _, ids, paths, truth = labelled_photos(data)
    embedder = embedder if embedder is not None else create_embedder(model)
    store = cached_features(embedder, paths, ids, cache, progress=progress)
    t_feat = time.perf_counter() - t0
    rows = np.arange(len(ids))
    have = set(store.ids)
    readable = np.array([i in have for i in ids])
    vectors = embed_store(embedder, store)
    fold = grouped_folds(ids, folds, group=photographer)
    pred = {r: np.full((len(ids), 2), np.nan) for r in refiners}
    n_db = []
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geolocus-cv-") as tmp:
        for f in range(folds):
            train = rows[(fold != f) & readable]
            test = rows[(fold == f) & readable]
            db = Database.create(
                Path(tmp) / f"fold{f}",
                dim=embedder.dim,
                model=embedder.name,
                model_version=embedder.version,
            )
            sr = store.rows([ids[i] for i in train])
            db.add(vectors[sr], [ids[i] for i in train], truth[train])
            n_db.append(len(db))
            qr = store.rows([ids[i] for i in test])
            gps = None
            if embedder.has_gps:
                tok = None if store.tokens is None else np.asarray(store.tokens[qr], np.float32)
                gps = embedder.gps_candidates(np.asarray(store.embeddings[qr], np.float32), tok, 10)
            for r in refiners:
                geo = Geolocator.from_database(
                    db,
                    r,
                    embedder=embedder,
                    retrieval=RetrievalSettings(k=k, k_far=k_far),
                    places=PlaceSettings(names=False),
                    fit_groups=photographer,
                    cache_refiner=False,
                    warmup=False,
                )
                preds = geo.locate(vectors[qr], [ids[i] for i in test], gps=gps)
                pred[r][test] = top1(preds)
            if progress:
                print(
                    f"fold {f + 1}/{folds}: {len(test)} queries, {len(db)} in the database",
                    file=sys.stderr,
                )
    scores = {r: _score(pred[r], truth, ids) for r in refiners}
    return BenchmarkResult(
        protocol=f"cv{folds}",
        model=embedder.name,
        scores=scores,
        n_queries=len(ids),
        n_database=n_db,
        seconds={"features": t_feat, "search_refine": time.perf_counter() - t1},
        extra={"k": k, "k_far": k_far, "unreadable": [ids[i] for i in rows[~readable]]},
    )


def _score(pred: np.ndarray, truth: np.ndarray, ids: list[str]):
    """Scores of ``pred`` (NaN rows: photos not predicted, counted as misses and named)."""
    ok = ~np.isnan(pred[:, 0])
    d = haversine_km(pred[ok, 0], pred[ok, 1], truth[ok, 0], truth[ok, 1])
    missing = [i for i, good in zip(ids, ok, strict=True) if not good]
    return score_errors(d, n_missing=len(missing), missing=missing)


def holdout(
    model: str | None = None,
    refine: str = "dualgeo",
    data: str | os.PathLike[str] | None = None,
    db_dir: str | os.PathLike[str] = "out/demo-db",
    test_fold: int = 0,
    sample: int | None = 300,
    folds: int = 3,
    seed: int = 0,
    top_k: int = 5,
    k: int = 20,
    k_far: int = 20,
    progress: bool = True,
    embedder: Embedder | None = None,
) -> tuple[BenchmarkResult, list[Any], np.ndarray]:
    """The ``holdout`` protocol: returns the result, the predictions and their truth."""
    t0 = time.perf_counter()
    _, ids, paths, truth = labelled_photos(data)
    fold = grouped_folds(ids, folds, group=photographer)
    if not 0 <= test_fold < folds:
        raise InputError(f"--test-fold must be between 0 and {folds - 1}")
    train = np.flatnonzero(fold != test_fold)
    test = np.flatnonzero(fold == test_fold)
    if sample is not None and sample < len(test):
        test = np.sort(np.random.default_rng(seed).choice(test, sample, replace=False))
    embedder = embedder if embedder is not None else create_embedder(model)
    inputs = Inputs(
        ids=[ids[i] for i in train],
        paths=[paths[i] for i in train],
        latlon=truth[train],
        source="labels",
    )
    built = build_database(
        db_dir, inputs_source(inputs), embedder, LocalExecutor(embedder, 16), progress=progress
    )
    t_build = time.perf_counter() - t0
    if progress:
        print(built.summary(), file=sys.stderr)
    t1 = time.perf_counter()
    geo = Geolocator.from_database(
        built.database,
        refine,
        embedder=embedder,
        retrieval=RetrievalSettings(k=k, k_far=k_far),
        places=PlaceSettings(top_k=top_k),
        fit_groups=photographer,  # as in cv3: the queries' photographers are not in the db
    )
    t_load = time.perf_counter() - t1
    t2 = time.perf_counter()
    preds = geo.predict([paths[i] for i in test], progress=progress)
    t_pred = time.perf_counter() - t2
    scores = {refine: _score(top1(preds), truth[test], [ids[i] for i in test])}
    res = BenchmarkResult(
        protocol=f"holdout (fold {test_fold} of {folds})",
        model=embedder.name,
        scores=scores,
        n_queries=len(test),
        n_database=[len(built.database)],
        seconds={
            "build": t_build,
            "geolocator_load": t_load,
            "predict": t_pred,
            "predict_per_photo": t_pred / max(1, len(test)),
        },
        extra={"timing": dict(geo.timing), "built": not built.up_to_date},
    )
    return res, preds, truth[test]


def examples_table(preds: list[Any], truth: np.ndarray) -> str:
    """A few photos: guess 1 with its place, confidence and radius, and the true place."""
    gaz = Gazetteer.load()
    head = ["photo", "guess 1", "confidence", "± km", "true place", "error km"]
    body = []
    for p, (la, lo) in zip(preds, truth, strict=True):
        name = Path(p.image).name
        name = name if len(name) <= 28 else name[:25] + "..."
        true_label = place_label(gaz.reverse_geocode(float(la), float(lo)))
        if p.top is None:
            body.append([name, f"error: {p.error}", "", "", true_label, ""])
            continue
        g = p.top
        err = float(haversine_km(g.lat, g.lon, la, lo))
        conf = "-" if g.confidence is None else f"{100 * g.confidence:.0f} %"
        body.append([name, g.label, conf, f"{g.uncertainty_km or 0:.0f}", true_label, f"{err:.0f}"])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    right = {2, 3, 5}
    fmt = lambda r: "  ".join(  # noqa: E731
        c.rjust(w) if i in right else c.ljust(w)
        for i, (c, w) in enumerate(zip(r, widths, strict=True))
    )
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])


def write_truth_map(pred: Any, truth: Any, path: str | os.PathLike[str]) -> Path:
    """The HTML map of one benchmark photo, its true position shown."""
    return write_map(pred, path, truth=np.asarray(truth, dtype=float))
