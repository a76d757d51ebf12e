"""Benchmark of the image backbones: retrieval geolocation on IM2GPS3k and throughput.

Quality: photographer-grouped 3-fold cross-validation on IM2GPS3k
(``grouped_folds(ids, 3)``): each held-out photo is placed at the position of
its nearest neighbour (cosine similarity of embeddings) among the photos of
the other two folds, so no photographer is ever on both sides. Variants
(pooling, normalisation, kNN + stage-2 refiners) are compared the same way,
and a "selected" row picks, inside each outer split, the variant that does
best by an inner 2-fold CV on the training folds alone: its score is the
honest one.

Throughput: images/s for decoding + preprocessing (one thread) and for the
forward pass (``torch.set_num_threads(2)``, batch 8), separately, for the
offline backbones and, with random weights, for the hub backbones.

    .venv/bin/python bench/backbones.py --cache cache/features            # everything
    .venv/bin/python bench/backbones.py --only cv --encoders efficientnet-lite0

Features are cached (float16 memmaps) under ``--cache``; never in the repository.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geolocus.data.im2gps3k import im2gps3k_dir, photographer
from geolocus.data.images import load_image
from geolocus.data.tables import read_coords
from geolocus.eval import score_errors
from geolocus.eval.folds import grouped_folds
from geolocus.geo import THRESHOLDS_KM, haversine_km

OFFLINE = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "vit-s14-focus"]
HUB_RANDOM = ["clip-vit-l14", "streetclip", "dinov2-small", "dinov2-base", "dinov2-large"]
K = 20  # neighbours retrieved for the refiners


# --------------------------------------------------------------------------- features


ALL_STAGES = (1, 2, 3, 4, 5, 6, 7)


def extract_all(
    encoders: list[str], multilayer: list[str], data: Path, cache: Path, threads: int
) -> tuple[dict, dict]:
    """Features of every IM2GPS3k photo: embeddings + full tokens for each backbone, and
    for ``multilayer`` EfficientNets the pooled outputs of all 7 stages as well."""
    from geolocus.encoders.features import cache_dir, extract_features
    from geolocus.encoders.image import create_encoder

    labels = read_coords(data / "labels.csv", "labels")
    ids = labels["IMG_ID"].tolist()
    paths = [data / "images" / i for i in ids]
    stores, stages = {}, {}
    jobs = [(n, {}, "full") for n in encoders]
    jobs += [(n, {"stages": ALL_STAGES}, False) for n in multilayer]
    for name, opts, tokens in jobs:
        enc = create_encoder(name, **opts)
        t0 = time.perf_counter()
        store = extract_features(
            enc,
            paths,
            cache_dir(cache, enc, "im2gps3k"),
            ids=ids,
            tokens=tokens,
            batch_size=16,
            loader_threads=threads,
        )
        (stages if opts else stores)[name] = store
        print(
            f"{name} {opts or ''}: {len(store)} photos in {time.perf_counter() - t0:.0f} s "
            f"({store.meta['n_failed']} unreadable)",
            file=sys.stderr,
        )
    return stores, stages


# --------------------------------------------------------------------------- retrieval CV


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Variant:
    """One way of turning cached features into a position estimate."""

    name: str
    features: Callable[[], np.ndarray]  # (N, d) float32, all photos
    metric: str = "cosine"  # cosine | euclidean | centred-cosine
    refine: str = "nearest"  # nearest | kde | dualgeo


def neighbours(q: np.ndarray, db: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and similarities of the k most similar database rows (centring uses db only)."""
    if metric == "centred-cosine":
        mu = db.mean(0, keepdims=True)
        q, db = l2n(q - mu), l2n(db - mu)
    elif metric == "cosine":
        q, db = l2n(q), l2n(db)
    if metric == "euclidean":
        sim = -((q**2).sum(1, keepdims=True) - 2 * q @ db.T + (db**2).sum(1)[None, :])
    else:
        sim = q @ db.T
    idx = np.argpartition(-sim, kth=min(k, sim.shape[1] - 1), axis=1)[:, :k]
    s = np.take_along_axis(sim, idx, 1)
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(s, order, 1)


def predict(
    v: Variant,
    feats: np.ndarray,
    coords: np.ndarray,
    q: np.ndarray,
    db: np.ndarray,
    fit_on: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """Positions (lat, lon) for query rows ``q`` from database rows ``db``."""
    from geolocus.data import Neighbours
    from geolocus.refine import create_refiner

    idx, sim = neighbours(feats[q], feats[db], v.metric, K if v.refine != "nearest" else 1)
    if v.refine == "nearest":
        return coords[db][idx[:, 0]]
    ref = create_refiner(v.refine)
    if v.refine == "kde" and fit_on is not None:  # bandwidth chosen inside the training folds
        fq, fdb = fit_on
        fidx, fsim = neighbours(feats[fq], feats[fdb], v.metric, K)
        nb = Neighbours(
            ids=np.arange(len(fq)),
            near=coords[fdb][fidx],
            far=np.zeros((len(fq), 0, 2)),
            near_scores=fsim,
        )
        ref.fit(nb, coords[fq])
    nb = Neighbours(
        ids=np.arange(len(q)), near=coords[db][idx], far=np.zeros((len(q), 0, 2)), near_scores=sim
    )
    return ref.predict(nb)


def crit(errors: np.ndarray) -> float:
    """Selection criterion: mean accuracy over the standard thresholds."""
    return float(np.mean([np.mean(errors <= t) for t in THRESHOLDS_KM]))


def cross_validate(variants: list[Variant], coords: np.ndarray, folds: np.ndarray):
    """Outer 3-fold errors of each variant, and of the variant selected by inner CV."""
    n = len(coords)
    errs = {v.name: np.full(n, np.nan) for v in variants}
    selected = np.full(n, np.nan)
    chosen = []
    cache = {v.name: v.features() for v in variants}
    for f in np.unique(folds):
        test, train = np.flatnonzero(folds == f), np.flatnonzero(folds != f)
        a_f, b_f = [g for g in np.unique(folds) if g != f]
        a, b = np.flatnonzero(folds == a_f), np.flatnonzero(folds == b_f)
        inner = {}
        for v in variants:
            feats = cache[v.name]
            # inner CV on the training folds only: a against b and b against a
            e = []
            for q, db in ((a, b), (b, a)):
                p = predict(v, feats, coords, q, db, fit_on=(db, q))
                e.append(haversine_km(p[:, 0], p[:, 1], coords[q, 0], coords[q, 1]))
            inner[v.name] = crit(np.concatenate(e))
            # outer: the held-out fold against both training folds (kde fitted on a vs b)
            p = predict(v, feats, coords, test, train, fit_on=(a, b))
            errs[v.name][test] = haversine_km(p[:, 0], p[:, 1], coords[test, 0], coords[test, 1])
        best = max(inner, key=inner.get)
        chosen.append(best)
        selected[test] = errs[best][test]
    return errs, selected, chosen


def stage_slices(name: str) -> list[slice]:
    """Column ranges of the head and of stages 1..7 in a multi-layer embedding."""
    from geolocus.encoders.image import create_encoder
    from geolocus.encoders.image.efficientnet import stage_ends

    net = create_encoder(name, pretrained=False).net
    widths = [1280] + [net._blocks[e]._block_args.output_filters for e in stage_ends(net)]
    edges = np.cumsum([0, *widths])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def multilayer_variants(name: str, store) -> list[Variant]:
    """Head embedding concatenated with the last few stages (each part L2-normalised)."""
    parts = stage_slices(name)
    full = lambda: np.asarray(store.embeddings, np.float32)  # noqa: E731

    def take(first_stage: int) -> Callable[[], np.ndarray]:
        cols = [parts[0], *parts[first_stage:]]
        return lambda: np.concatenate([full()[:, c] for c in cols], 1)

    return [
        Variant(f"avg + stages {s}-7, {m.replace('-', ' ')}", take(s), metric=m)
        for s in (6, 5, 4, 3)
        for m in ("cosine", "centred-cosine")
    ]


def variants_for(name: str, store) -> list[Variant]:
    emb = lambda: np.asarray(store.embeddings, np.float32)  # noqa: E731
    tok = lambda: np.asarray(store.tokens, np.float32)  # noqa: E731
    if name.startswith("efficientnet"):

        def gem(p: float) -> Callable[[], np.ndarray]:
            return lambda: np.power(np.power(np.clip(tok(), 1e-6, None), p).mean(1), 1 / p)

        vs = [
            Variant("avg, cosine", emb),
            Variant("avg, euclidean", emb, metric="euclidean"),
            Variant("avg, centred cosine", emb, metric="centred-cosine"),
            Variant("GeM p=3, cosine", gem(3.0)),
            Variant("GeM p=3, centred cosine", gem(3.0), metric="centred-cosine"),
            Variant("max, cosine", lambda: tok().max(1)),
        ]
    else:
        mean = lambda: tok().mean(1)  # noqa: E731
        vs = [
            Variant("CLS, cosine", emb),
            Variant("CLS, euclidean", emb, metric="euclidean"),
            Variant("CLS, centred cosine", emb, metric="centred-cosine"),
            Variant("mean, cosine", mean),
            Variant("CLS+mean, cosine", lambda: np.concatenate([l2n(emb()), l2n(mean())], 1)),
            Variant(
                "CLS+mean, centred cosine",
                lambda: np.concatenate([l2n(emb()), l2n(mean())], 1),
                metric="centred-cosine",
            ),
        ]
    return vs


def with_refiners(vs: list[Variant]) -> list[Variant]:
    """kNN + stage-2 refiners on the plain and centred cosine variants of the default pooling."""
    out = list(vs)
    for v in [vs[0], vs[2]]:
        for r in ("kde", "dualgeo"):
            out.append(Variant(f"{v.name} + {r} (k={K})", v.features, v.metric, r))
    return out


# --------------------------------------------------------------------------- throughput


def throughput(names: list[str], data: Path, n_load: int, n_fwd: int, batch: int) -> dict:
    import torch

    from geolocus.encoders.image import create_encoder

    torch.set_num_threads(2)
    files = sorted((data / "images").iterdir())[:n_load]
    res = {}
    for name in names:
        pretrained = name in OFFLINE
        enc = create_encoder(name, pretrained=pretrained)
        prep = enc.preprocessing
        # the machine is shared: time in slices and keep the fastest (least disturbed) one
        t_load, arrs = np.inf, []
        for s in range(0, len(files), 50):
            t0 = time.perf_counter()
            part = [prep.image(load_image(f, min_size=prep.resize)) for f in files[s : s + 50]]
            t_load = min(t_load, (time.perf_counter() - t0) / len(part))
            arrs += part
        x = torch.from_numpy(np.stack(arrs[:batch]))
        t_fwd = np.inf
        with torch.no_grad():
            enc(x[:1])  # warm-up
            for _ in range(max(1, n_fwd // batch)):
                t0 = time.perf_counter()
                enc(x)
                t_fwd = min(t_fwd, (time.perf_counter() - t0) / len(x))
        res[name] = (1 / t_load, 1 / t_fwd, pretrained)
        print(
            f"{name}: load+preprocess {1 / t_load:.1f} img/s, forward {1 / t_fwd:.2f} img/s",
            file=sys.stderr,
        )
        del enc
    return res


# --------------------------------------------------------------------------- comparison


def compare(a: str, b: str, data: Path, cache: Path, threads: int, n_boot: int = 2000) -> None:
    """Accuracy difference A - B of the plain nearest neighbour (cosine and centred cosine),
    with a 95 % interval from a bootstrap that resamples photographers, not photos."""

    stores, _ = extract_all([a, b], [], data, cache, threads)
    labels = read_coords(data / "labels.csv", "labels").set_index("IMG_ID")
    ids = stores[a].ids
    assert stores[b].ids == ids
    coords = labels.loc[ids, ["LAT", "LON"]].to_numpy(float)
    folds = grouped_folds(ids, 3, group=photographer)
    owners = np.array([photographer(i) for i in ids])
    groups = [np.flatnonzero(owners == o) for o in np.unique(owners)]
    rng = np.random.default_rng(0)
    print(f"\n## {a} minus {b}: plain nearest neighbour, photographer bootstrap\n")
    print("| metric | threshold | difference (pp) | 95 % interval |")
    print("|---|---|---|---|")
    for metric in ("cosine", "centred-cosine"):
        err = {}
        for name in (a, b):
            s = stores[name]
            v = Variant("v", lambda s=s: np.asarray(s.embeddings, np.float32), metric=metric)
            err[name] = cross_validate([v], coords, folds)[0]["v"]
        for t in THRESHOLDS_KM:
            d = (err[a] <= t).astype(float) - (err[b] <= t)
            boot = []
            for _ in range(n_boot):
                pick = np.concatenate(
                    [groups[g] for g in rng.integers(0, len(groups), len(groups))]
                )
                boot.append(d[pick].mean())
            lo, hi = np.percentile(boot, [2.5, 97.5]) * 100
            print(f"| {metric} | {t} km | {100 * d.mean():+.2f} | {lo:+.2f} … {hi:+.2f} |")


# --------------------------------------------------------------------------- main


def fmt_row(name: str, s) -> str:
    acc = " | ".join(f"{a:.1f}" for a in s.row())
    return f"| {name} | {acc} | {s.median_km:.0f} | {np.mean(s.row()):.2f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="IM2GPS3k folder (labels.csv, images/)")
    ap.add_argument("--cache", default="cache/features", help="feature cache (git-ignored)")
    ap.add_argument("--encoders", nargs="*", default=OFFLINE)
    ap.add_argument(
        "--multilayer",
        nargs="*",
        default=["efficientnet-lite0"],
        help="EfficientNets to also try with multi-layer pooling",
    )
    ap.add_argument("--random", nargs="*", default=HUB_RANDOM, help="hub backbones to time")
    ap.add_argument("--only", choices=["cv", "throughput", "compare"], default=None)
    ap.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), default=None,
        help="with --only compare: paired photographer-bootstrap of A minus B (plain NN)",
    )  # fmt: skip
    ap.add_argument("--no-refiners", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="image-loading threads")
    ap.add_argument("--n-load", type=int, default=200)
    ap.add_argument("--n-forward", type=int, default=32)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    data = im2gps3k_dir(args.data)
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", file=sys.stderr)

    if args.only == "compare":
        compare(*args.compare, data, Path(args.cache), args.threads)
        return
    if args.only != "throughput":
        stores, staged = extract_all(
            args.encoders, args.multilayer, data, Path(args.cache), args.threads
        )
        labels = read_coords(data / "labels.csv", "labels").set_index("IMG_ID")
        print("\n## Nearest-neighbour geolocation, photographer-grouped 3-fold CV on IM2GPS3k\n")
        print(
            "| backbone / variant | 1 km | 25 km | 200 km | 750 km | 2500 km | median km "
            "| mean acc |"
        )
        print("|---|---|---|---|---|---|---|---|")
        summary = {}
        for name, store in stores.items():
            ids = store.ids
            coords = labels.loc[ids, ["LAT", "LON"]].to_numpy(float)
            folds = grouped_folds(ids, 3, group=photographer)
            vs = variants_for(name, store)
            if not args.no_refiners:
                vs = with_refiners(vs)
            if name in staged:
                assert staged[name].ids == ids
                vs += multilayer_variants(name, staged[name])
            errs, sel, chosen = cross_validate(vs, coords, folds)
            for v in vs:
                print(fmt_row(f"{name}: {v.name}", score_errors(errs[v.name])))
            print(
                fmt_row(
                    f"**{name}: selected by inner CV** ({'; '.join(chosen)})", score_errors(sel)
                )
            )
            summary[name] = (
                np.mean(score_errors(sel).row()),
                np.mean(score_errors(errs[vs[0].name]).row()),
            )
            sys.stdout.flush()
        print("\nmean accuracy over the five thresholds (selected by inner CV / plain cosine NN):")
        for name, (a, b) in sorted(summary.items(), key=lambda kv: -kv[1][0]):
            print(f"- {name}: {a:.2f} / {b:.2f}")

    if args.only != "cv":
        names = [*args.encoders, *args.random]
        res = throughput(names, data, args.n_load, args.n_forward, batch=8)
        print("\n## Throughput on this machine (images/s)\n")
        print(
            "| backbone | weights | load + preprocess (1 thread) | forward (2 threads, batch 8) |"
        )
        print("|---|---|---|---|")
        for name, (lo, fw, pre) in res.items():
            print(f"| {name} | {'pretrained' if pre else 'random'} | {lo:.1f} | {fw:.2f} |")


if __name__ == "__main__":
    main()
