"""Fitting a stage-2 refiner on the database itself, by leave-one-out, and caching it.

A refiner that learns (``best``; ``kde`` tunes its bandwidth) needs queries
with known positions. The database is exactly that: each of its photos is
searched against all the others (``exclude_self``), and the refiner is fitted
on how its neighbours relate to its true position. With ``groups`` (e.g. the
photographer of each photo) the neighbours from the query's own group are left
out too, as they are for a new photo from a photographer not in the database.

The fitted state is cached in ``DB/refiners/`` and reused while the database
is unchanged (same generation, count and model version).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from geolocus.data.neighbours import Neighbours
from geolocus.errors import InputError
from geolocus.files import atomic_write
from geolocus.index.build import database_vectors
from geolocus.index.database import Database
from geolocus.refine import Refiner

#: At most this many database photos serve as leave-one-out queries (a random sample).
MAX_FIT_QUERIES = 5000
CACHE_FOLDER = "refiners"


def _regroup(nb: Neighbours, k: int, groups: Callable[[str], str]) -> Neighbours:
    """Drop near neighbours of the query's own group; keep the first ``k`` left (padded)."""
    if nb.near_ids is None:
        raise InputError("grouping neighbours needs the ids of the retrieved photos")
    n = len(nb)
    near = np.empty((n, k, 2))
    near_scores = nb.near_scores
    scores = np.empty((n, k)) if near_scores is not None else None
    ids = np.empty((n, k), dtype=object)
    for i in range(n):
        g = groups(str(nb.ids[i]))
        keep = np.array([groups(str(j)) != g for j in nb.near_ids[i]], dtype=np.bool_)
        rows = np.flatnonzero(keep)[:k]
        if rows.size == 0:  # the whole list is the query's group: keep it as it is
            rows = np.arange(min(k, nb.k))
        rows = np.concatenate([rows, np.repeat(rows[-1:], k - rows.size)])
        near[i], ids[i] = nb.near[i, rows], nb.near_ids[i, rows]
        if scores is not None and near_scores is not None:
            scores[i] = near_scores[i, rows]
    return Neighbours(
        ids=nb.ids,
        near=near,
        far=nb.far,
        near_scores=scores,
        far_scores=nb.far_scores,
        near_ids=ids,
        far_ids=nb.far_ids,
    )


def loo_neighbours(
    db: Database,
    k: int,
    k_far: int,
    groups: Callable[[str], str] | None = None,
    max_queries: int = MAX_FIT_QUERIES,
    seed: int = 0,
    nprobe: int | None = None,
    min_photos: int = 3,
) -> tuple[Neighbours, np.ndarray]:
    """Neighbours of (a sample of) the database's own photos, each left out of its own
    search, and their true positions (``min_photos``: fewer is an error; a fit needs 3)."""
    n = len(db)
    if n < min_photos:
        raise InputError(f"fitting a refiner on the database needs at least 3 photos, it has {n}")
    rows = np.arange(n)
    if n > max_queries:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_queries, replace=False))
    vec = database_vectors(db, rows)
    ids = db.ids[rows]
    k_search = min(n, 4 * k) if groups is not None else k
    nb = db.search(vec, k=k_search, k_far=k_far, query_ids=ids, exclude_self=True, nprobe=nprobe)
    if groups is not None:
        nb = _regroup(nb, k, groups)
    return nb, db.coords[rows]


def _settings_tag(refiner: Refiner) -> str:
    """``""`` for a refiner with its default settings, else ``-`` and a digest of them:
    fitted to another objective, say, it is cached in a file of its own."""
    params = refiner.get_params()
    try:
        if params == type(refiner)().get_params():
            return ""
    except (TypeError, ValueError):  # settings without defaults, or not comparable
        pass
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return "-" + hashlib.blake2b(blob, digest_size=4).hexdigest()


def _identity(db: Database, refiner: Refiner, k: int, k_far: int, grouped: bool) -> dict:
    m = db.manifest
    return {
        "refiner": refiner.name,
        "k": k,
        "k_far": k_far,
        "grouped": grouped,
        "generation": m.generation,
        "count": m.count,
        "model_version": m.model_version,
    }


def fit_on_database(
    refiner: Refiner,
    db: Database,
    k: int,
    k_far: int,
    groups: Callable[[str], str] | None = None,
    cache: bool = True,
    nprobe: int | None = None,
) -> Refiner:
    """``refiner`` fitted on the database by leave-one-out (or restored from the cache)."""
    if not refiner.learns:
        return refiner
    ident = _identity(db, refiner, k, k_far, groups is not None)
    tag = ("-grouped" if groups is not None else "") + _settings_tag(refiner)
    path = Path(db.path) / CACHE_FOLDER / f"{refiner.name}-k{k}-f{k_far}{tag}.json"
    if cache and path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, InputError):
            saved = json.loads(path.read_text())
            if saved.get("identity") == ident:
                restored = type(refiner).from_state(saved["state"])
                if restored.get_params() == refiner.get_params():
                    return restored
    nb, truth = loo_neighbours(db, k, k_far, groups=groups, nprobe=nprobe)
    refiner.fit(nb, truth)
    if cache:
        try:
            with atomic_write(path) as fh:
                json.dump({"identity": ident, "state": refiner.get_state()}, fh, indent=1)
        except OSError:
            pass  # a read-only database folder: fit again next time
    return refiner
