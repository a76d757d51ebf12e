"""How informative is spatial verification inside IM2GPS3k collections?

For a random sample of photos of the collection benchmark (``geolocus benchmark
collections``), the inlier counts (local features, ratio test, RANSAC homography;
:class:`geolocus.refine.verify.Verifier`) with each of their 10 most similar other
photos of the same collection, and the share of pairs within 1 km of each other
above a few inlier counts. Keypoints are cached under ``cache/local``.

    .venv/bin/python bench/collections_verify.py orb 500 400
    .venv/bin/python bench/collections_verify.py sift 1000 150
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np

from geolocus.geo import haversine_km
from geolocus.models.embedder import create_embedder
from geolocus.pipeline import collections as col
from geolocus.pipeline.benchmark import cached_features, embed_store, labelled_photos
from geolocus.refine.verify import Verifier


def main(kind: str, features: int, n_queries: int) -> None:
    _, ids, paths, truth = labelled_photos(None)
    emb = create_embedder(None)
    store = cached_features(emb, paths, ids, "cache/features", progress=False)
    vec = embed_store(emb, store)[store.rows(ids)]
    with tempfile.TemporaryDirectory() as tmp:
        cs = col.build_collections(ids, vec, truth, emb, tmp, k=10, progress=False)
    queries = [(c, i) for c in cs for i in range(len(c.rows))]
    pick = np.random.default_rng(0).choice(len(queries), n_queries, replace=False)
    v = Verifier(dict(zip(ids, paths, strict=True)).get, top=10, kind=kind, features=features,
                 cache="cache/local")  # fmt: skip
    rows = []
    t0 = time.perf_counter()
    for p in pick:
        c, i = queries[p]
        nb = c.neighbours.subset(slice(i, i + 1))
        inl = v(nb)[0]
        q = truth[c.rows[i]]
        d = haversine_km(nb.near[0, :, 0], nb.near[0, :, 1], q[0], q[1])
        rows += [(inl[j], d[j] <= 1) for j in range(nb.k)]
    print(f"{(time.perf_counter() - t0) / n_queries:.2f} s per query (10 pairs)")
    a = np.array(rows, float)
    for th in (0, 8, 12, 15, 20, 30):
        m = a[:, 0] >= th
        share = f"{100 * a[m, 1].mean():.1f} %" if m.any() else "-"
        print(
            f"{kind} {features}: inliers >= {th:>2}: {int(m.sum()):>5} pairs, within 1 km {share}"
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
