"""Ablation of the ``best`` stage-2 refiner: what each feature group and the fitting add.

Every row is a 5-fold photographer-grouped cross-validation on the queries of a
neighbours file (``grouped_folds(ids, 5)``; ``--salt`` draws another
partition), each fold predicted by a model fitted on the other four. Rows:

- the hand-set multi-scale vote that ``best`` starts from (nothing fitted);
- the listwise model on subsets of its features (flat votes, rank-binned votes,
  plus far-neighbour counts), with fixed sharpness 2 and L2 1e-3;
- ``best`` as registered (sharpness and L2 chosen by inner CV);
- the fitted votes + far counts plus extra feature groups that were tried and
  left out (same fixed settings): exact duplicates, kernel density (vMF) at
  several bandwidths, DBSCAN cluster size and distance to its centre, and
  GeoNames population priors (``geolocus.places``);
- with ``--hgb``: one gradient-boosted classifier per threshold on all features,
  choosing the candidate that maximises the sum of P(d <= t) (slow: minutes).

With ``--single-scale`` it prints, for each threshold, the best single-scale vote
rule in hindsight (pick the candidate with the most neighbours within ``s`` km,
flat or weighted 1/sqrt(1+rank); ``s`` chosen on all queries for that threshold
alone): an optimistic ceiling for one threshold at a time.
With ``--calibration`` it also prints, per threshold, how the cross-validated
confidence of ``best``'s answer (``mass_within(ranking, t)`` of the top candidate)
compares with how often the answer really is within ``t``, by quintile of confidence.

    .venv/bin/python bench/refine_best.py \\
        --neighbours ../shared/data/im2gps3k/g3_neighbours.csv \\
        --labels ../shared/data/im2gps3k/labels.csv [--hgb] [--salt dev]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from geolocus.data import Neighbours, read_coords, read_neighbours
from geolocus.data.im2gps3k import photographer
from geolocus.eval import score_errors
from geolocus.eval.folds import grouped_folds
from geolocus.geo import THRESHOLDS_KM, SphericalKDE, dbscan_sphere, distance_km, spherical_mean
from geolocus.refine import BestRefiner
from geolocus.refine.features import FeatureSpec, candidate_features, prior_weights
from geolocus.refine.learned import fit_weights, mass_within, threshold_gains

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (train mask, test mask) -> scores


def extra_features(nb: Neighbours, groups: list[str]) -> np.ndarray:
    """Extra candidate features ``(N, K, E)`` for the groups that ``best`` leaves out."""
    near = nb.near
    n, k = near.shape[:2]
    cols: list[np.ndarray] = []
    w = 1.0 / np.sqrt(1.0 + np.arange(k))
    if "dup" in groups:
        d = distance_km(near[:, :, None, :], near[:, None, :, :])
        cols.append((d < 0.05).sum(-1).astype(float))
    if "kde" in groups:
        for bw in (2.0, 20.0, 100.0, 400.0):
            s = np.empty((n, k))
            for i in range(n):
                kde = SphericalKDE(bw).fit(near[i, :, 0], near[i, :, 1], weights=w)
                s[i] = kde.score(near[i, :, 0], near[i, :, 1])
            cols.append(s - s.max(axis=1, keepdims=True))
    if "dbscan" in groups:
        for eps in (25.0, 200.0):
            size, dc = np.zeros((n, k)), np.zeros((n, k))
            for i in range(n):
                lab = dbscan_sphere(near[i, :, 0], near[i, :, 1], eps, 2)
                for c in np.unique(lab[lab >= 0]):
                    m = lab == c
                    clat, clon = spherical_mean(near[i, m, 0], near[i, m, 1])
                    size[i, m] = m.sum()
                    dc[i, m] = distance_km(near[i, m], np.array([clat, clon]))
            cols += [size, np.log1p(dc)]
    if "population" in groups:
        from geolocus.places import city_table

        lat, lon = near[..., 0].ravel(), near[..., 1].ravel()
        pop = city_table(0).population_within(lat, lon, [5.0, 25.0, 100.0])
        cols += [np.log1p(pop[:, j]).reshape(n, k) for j in range(3)]
        big = city_table(100_000).nearest_km(lat, lon)
        cols.append(np.log1p(big).reshape(n, k))
    return np.stack(cols, axis=-1)


def listwise(x: np.ndarray, w0: np.ndarray, gains: np.ndarray) -> Scorer:
    def score(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        return x[te] @ fit_weights(x[tr], gains[tr], w0, 2.0, 1e-3)

    return score


def hgb(x: np.ndarray, dist: np.ndarray) -> Scorer:
    from sklearn.ensemble import HistGradientBoostingClassifier

    def score(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        f = x.shape[-1]
        out = np.zeros(dist[te].shape)
        for t in THRESHOLDS_KM:
            clf = HistGradientBoostingClassifier(
                max_iter=100,
                learning_rate=0.1,
                max_leaf_nodes=15,
                min_samples_leaf=100,
                l2_regularization=1.0,
                random_state=0,
            )
            clf.fit(x[tr].reshape(-1, f), (dist[tr] <= t).reshape(-1))
            out += clf.predict_proba(x[te].reshape(-1, f))[:, 1].reshape(out.shape)
        return out

    return score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--neighbours", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--salt", default="geolocus", help="grouped_folds salt (another partition)")
    ap.add_argument("--hgb", action="store_true", help="add the per-threshold HGB row (slow)")
    ap.add_argument("--calibration", action="store_true", help="print best's calibration")
    ap.add_argument("--single-scale", action="store_true", help="print per-threshold ceilings")
    args = ap.parse_args()

    nb = read_neighbours(args.neighbours)
    lab = read_coords(args.labels, "labels").set_index("IMG_ID")
    nb = nb.subset(np.isin(nb.ids, lab.index))
    truth = lab.loc[list(nb.ids), ["LAT", "LON"]].to_numpy()
    folds = grouped_folds(nb.ids, args.folds, group=photographer, salt=args.salt)
    gains = threshold_gains(nb.near, truth)
    dist = distance_km(nb.near, truth[:, None, :])
    n, k = gains.shape
    t_km = THRESHOLDS_KM

    def spec_rows(spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
        return candidate_features(nb, spec), prior_weights(spec, t_km, k)

    full = FeatureSpec()
    x_full, w_full = spec_rows(full)
    x_flat, w_flat = spec_rows(FeatureSpec(rank_bins=((0, None),), far_scales_km=(), rank=False))
    x_bin, w_bin = spec_rows(FeatureSpec(far_scales_km=()))

    def with_extra(groups: list[str]) -> Scorer:
        e = extra_features(nb, groups)
        x = np.concatenate([x_full, e], axis=-1)
        return listwise(x, np.concatenate([w_full, np.zeros(e.shape[-1])]), gains)

    def registered(tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        r = BestRefiner().fit(nb.subset(tr), truth[tr])
        return r.decision_function(nb.subset(te))

    rows: list[tuple[str, Callable[[], Scorer]]] = [
        ("nearest neighbour", lambda: lambda tr, te: -np.arange(k) + np.zeros((te.sum(), 1))),
        ("multi-scale vote, hand-set (w0)", lambda: lambda tr, te: x_full[te] @ w_full),
        ("fitted: flat votes, 9 scales", lambda: listwise(x_flat, w_flat, gains)),
        ("fitted: rank-binned votes", lambda: listwise(x_bin, w_bin, gains)),
        ("fitted: rank-binned votes + far counts", lambda: listwise(x_full, w_full, gains)),
        ("best (as registered: + inner-CV sharpness, L2)", lambda: registered),
        ("fitted: votes + far + exact duplicates", lambda: with_extra(["dup"])),
        ("fitted: votes + far + vMF KDE at 2/20/100/400 km", lambda: with_extra(["kde"])),
        ("fitted: votes + far + DBSCAN size, centre distance", lambda: with_extra(["dbscan"])),
        ("fitted: votes + far + GeoNames population prior", lambda: with_extra(["population"])),
    ]
    if args.hgb:
        x_all = np.concatenate([x_full, extra_features(nb, ["dup", "kde", "population"])], -1)
        rows.append(("HGB per threshold, sum of P(d <= t)", lambda: hgb(x_all, dist)))

    print(f"{args.folds}-fold photographer-grouped CV (salt {args.salt!r}), {n} queries\n")
    print("| variant | " + " | ".join(f"{t} km" for t in t_km) + " | mean | s |")
    print("|---|" + "---|" * (len(t_km) + 2))
    for name, make in rows:
        t0 = time.perf_counter()
        with threadpool_limits(1, user_api="blas"):
            scorer = make()
            scores = np.zeros((n, k))
            for f in np.unique(folds):
                te = folds == f
                scores[te] = scorer(~te, te)
        pick = np.argmax(scores, axis=1)
        acc = score_errors(dist[np.arange(n), pick]).row()
        cells = " | ".join(f"{a:.2f}" for a in acc)
        dt = time.perf_counter() - t0
        print(f"| {name} | {cells} | {np.mean(acc):.2f} | {dt:.0f} |", flush=True)
    if args.single_scale:
        single_scale(nb, dist)
    if args.calibration:
        calibration(nb, truth, folds)


def single_scale(nb: Neighbours, dist: np.ndarray) -> None:
    """Best one-scale vote per threshold, chosen in hindsight (no cross-validation)."""
    n, k = dist.shape
    d = distance_km(nb.near[:, :, None, :], nb.near[:, None, :, :])
    scales = (1, 5, 25, 100, 200, 500, 750, 1500, 2500)
    weights = {"flat": np.ones(k), "1/sqrt(1+rank)": 1.0 / np.sqrt(1.0 + np.arange(k))}
    best = {t: (-1.0, "") for t in THRESHOLDS_KM}
    for s in scales:
        for wname, w in weights.items():
            votes = ((d <= s) * w).sum(axis=-1) - 1e-6 * np.arange(k)  # ties: better rank
            err = dist[np.arange(n), np.argmax(votes, axis=1)]
            for t in THRESHOLDS_KM:
                acc = 100.0 * float(np.mean(err <= t))
                if acc > best[t][0]:
                    best[t] = (acc, f"{s} km, {wname}")
    print("\nbest single-scale vote per threshold, in hindsight\n")
    print("| threshold | accuracy | rule |\n|---|---|---|")
    for t, (acc, rule) in best.items():
        print(f"| {t} km | {acc:.2f} | {rule} |")


def calibration(nb: Neighbours, truth: np.ndarray, folds: np.ndarray) -> None:
    """Cross-validated confidence of the top answer against its hit rate, by quintile."""
    n = len(nb)
    top, conf = np.zeros((n, 2)), np.zeros((n, len(THRESHOLDS_KM)))
    with threadpool_limits(1, user_api="blas"):
        for f in np.unique(folds):
            te = folds == f
            ranking = BestRefiner().fit(nb.subset(~te), truth[~te]).rank(nb.subset(te))
            top[te] = ranking.top1()
            for j, t in enumerate(THRESHOLDS_KM):
                conf[te, j] = mass_within(ranking, t)[:, 0]
    err = distance_km(top, truth)
    print("\nconfidence of the top answer (mean) vs share really within t, by quintile\n")
    print("| t | " + " | ".join(f"q{q + 1}" for q in range(5)) + " |")
    print("|---|" + "---|" * 5)
    for j, t in enumerate(THRESHOLDS_KM):
        c = conf[:, j]
        q = np.digitize(c, np.quantile(c, [0.2, 0.4, 0.6, 0.8]))
        cells = [f"{c[q == b].mean():.2f} / {np.mean(err[q == b] <= t):.2f}" for b in range(5)]
        print(f"| {t} km | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
