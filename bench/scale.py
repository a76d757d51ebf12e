"""The index at scale: build, open and search a database of N photos that behaves like MP16.

The corpus is generated in chunks straight to disk (never all in memory): positions
drawn from GeoCLIP's 100 K-location gallery (a sample of MP16's photo positions,
shipped in the geoclip wheel) with a few km of jitter; vectors are GeoCLIP's
pretrained location encoder at the position plus Gaussian noise, normalised, so that
near places have near vectors as an image head makes them. Encoding 1 ms a position
on this CPU, the encoder runs on a pool of jittered positions (``--pool``, default
100 K) from which photos are drawn; each photo's noise is its own. Queries are
drawn the same way.

Build and search each run in a child process, so that their peak resident memory
is measured alone (``getrusage(RUSAGE_CHILDREN)``). Recall@20 is against exact
search by chunked brute force over the memory-mapped vectors; ``top1_same_as_exact``
is how often stage 2 (``dualgeo``, and ``best`` fitted on other queries with known
positions) answers the same from the database's neighbours as from exact ones.

    python bench/scale.py --n 1000000 --json out/scale-1m.json --workdir /tmp/scale

``--sweep`` measures, on the database already built, how stage 2's agreement with exact
search and the time a photo depend on the lists scanned for the near and for the far
neighbours (``NEAR/FAR`` pairs; the database's own settings are left as they are):

    python bench/scale.py --n 10000000 --workdir /tmp/scale --sweep 4/1,4/2,4/4,2/4,2/16,8/4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 512
CHUNK = 100_000
K, K_FAR = 20, 20
#: Block read at a time while bringing the searched vectors into the page cache.
WARM_BUF = bytearray(1 << 24)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- corpus ------------------------------------------------------------------------------
def _pool(workdir: Path, size: int, jitter_km: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Jittered gallery positions and their GeoCLIP location embeddings (normalised), cached."""
    f = workdir / f"pool-{size}-{jitter_km}-{seed}.npz"
    if f.exists():
        z = np.load(f)
        return z["coords"], z["vectors"]
    import pandas as pd
    import torch

    from geolocus.encoders.location import create_location_encoder
    from geolocus.encoders.location.pretrained import GPS_GALLERY
    from geolocus.weights import require

    gal = pd.read_csv(require(GPS_GALLERY)).to_numpy(dtype=float)[:, :2]
    rng = np.random.default_rng(seed)
    base = gal[rng.integers(0, len(gal), size)]
    coords = _jitter(base, jitter_km, rng)
    enc = create_location_encoder("geoclip")
    out = np.empty((size, DIM), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, size, 8192):
            out[s : s + 8192] = enc(torch.as_tensor(coords[s : s + 8192], dtype=torch.float32))
            _log(f"pool: encoded {min(size, s + 8192)}/{size}")
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    np.savez(f, coords=coords, vectors=out)
    return coords, out


def _jitter(ll: np.ndarray, km: float, rng: np.random.Generator) -> np.ndarray:
    lat = np.clip(ll[:, 0] + rng.normal(scale=km / 111.2, size=len(ll)), -89.9, 89.9)
    dlon = rng.normal(scale=km / 111.2, size=len(ll)) / np.maximum(np.cos(np.radians(lat)), 0.05)
    lon = (ll[:, 1] + dlon + 180.0) % 360.0 - 180.0
    return np.column_stack([lat, lon])


def _draw(pool: tuple[np.ndarray, np.ndarray], n: int, noise: float, rng: np.random.Generator):
    coords, vecs = pool
    rows = rng.integers(0, len(coords), n)
    v = vecs[rows] + rng.normal(scale=noise, size=(n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return coords[rows], v


def make_corpus(args: argparse.Namespace) -> Path:
    """``corpus-N/``: vectors (float16) and coordinates written chunk by chunk; queries."""
    d = args.workdir / f"corpus-{args.n}"
    if (d / "done").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    pool = _pool(args.workdir, args.pool, args.jitter_km, 0)
    vec = np.lib.format.open_memmap(d / "vectors.npy", "w+", np.float16, (args.n, DIM))
    ll = np.lib.format.open_memmap(d / "coords.npy", "w+", np.float64, (args.n, 2))
    rng = np.random.default_rng(1)
    for s in range(0, args.n, CHUNK):
        e = min(args.n, s + CHUNK)
        ll[s:e], vec[s:e] = _draw(pool, e - s, args.noise, rng)
    vec.flush()
    ll.flush()
    del vec, ll
    qll, qv = _draw(pool, args.queries + args.fit_queries, args.noise, np.random.default_rng(2))
    np.savez(d / "queries.npz", coords=qll, vectors=qv)
    (d / "done").write_text("ok\n")
    _log(f"corpus: {args.n} vectors in {d}")
    return d


# ---- children: build and search ----------------------------------------------------------
def child_build(args: argparse.Namespace) -> None:
    from geolocus.index import Database
    from geolocus.index.columns import release

    corpus = args.workdir / f"corpus-{args.n}"
    vec = np.load(corpus / "vectors.npy", mmap_mode="r")
    ll = np.load(corpus / "coords.npy", mmap_mode="r")
    t0 = time.perf_counter()
    db = Database.create(
        _db_dir(args),
        dim=DIM,
        model="bench-geoclip-location",
        factory=args.index,
        overwrite=True,
        **({} if args.target_recall is None else {"target_recall": args.target_recall}),
    )
    for s in range(0, args.n, CHUNK):
        e = min(args.n, s + CHUNK)
        ids = [f"{i:09d}.jpg" for i in range(s, e)]
        db.add(np.asarray(vec[s:e], dtype=np.float32), ids, np.asarray(ll[s:e]))
        release(vec)  # the corpus is the bench's, not the database's: keep it out of the RSS
        _log(f"build: added {e}/{args.n}")
    db.save()
    print(
        json.dumps(
            {
                "build_s": time.perf_counter() - t0,
                "factory": db.manifest.factory,
                "search": db.manifest.search,
                "peak_rss_gb": _own_peak_gb(),
            }
        )
    )


def child_search(args: argparse.Namespace) -> None:
    from geolocus.index import Database

    corpus = args.workdir / f"corpus-{args.n}"
    q = np.load(corpus / "queries.npz")["vectors"]
    # the searched vectors into the page cache first (a build or the exact search may
    # have evicted them): latencies are those of a database in use, not of a cold disk
    t0 = time.perf_counter()
    for f in sorted(_db_dir(args).glob("lists-*.npy")) or sorted(_db_dir(args).glob("exact-*.npy")):
        with open(f, "rb") as fh:
            while fh.readinto(WARM_BUF):
                pass
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    db = Database.open(_db_dir(args))
    open_s = time.perf_counter() - t0
    db.search(q[:16], k=K, k_far=K_FAR)  # first touch
    t0 = time.perf_counter()
    parts = [db.search(q[s : s + 16], k=K, k_far=K_FAR) for s in range(0, len(q), 16)]
    batch_ms = (time.perf_counter() - t0) * 1000 / len(q)
    n_single = min(200, len(q))
    t0 = time.perf_counter()
    for i in range(n_single):
        db.search(q[i : i + 1], k=K, k_far=K_FAR)
    single_ms = (time.perf_counter() - t0) * 1000 / n_single
    np.savez(
        _db_dir(args).with_suffix(".found.npz"),
        near=np.concatenate([p.near for p in parts]),
        near_scores=np.concatenate([p.near_scores for p in parts]),
        near_ids=np.concatenate([p.near_ids for p in parts]).astype(str),
        far=np.concatenate([p.far for p in parts]),
        far_scores=np.concatenate([p.far_scores for p in parts]),
        far_ids=np.concatenate([p.far_ids for p in parts]).astype(str),
    )
    print(
        json.dumps(
            {
                "open_s": open_s,
                "ms_per_photo_batch16": batch_ms,
                "ms_per_photo_single": single_ms,
                "copy_10mb_ms": _copy_ms(),
                "warm_s": warm_s,
                "peak_rss_gb": _own_peak_gb(),
            }
        )
    )


def _copy_ms() -> float:
    """Milliseconds to copy 10 MB in memory (best of 20): the machine's memory speed
    at the time, beside the latencies it bounds (the scan is memory-bound)."""
    src = np.ones(10_000_000, dtype=np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def _db_dir(args: argparse.Namespace) -> Path:
    return args.workdir / (args.db_name or f"db-{args.n}")


def _own_peak_gb() -> float:
    """This process's peak resident memory (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _child(args: argparse.Namespace, stage: str) -> tuple[dict, float]:
    """Run a stage in a child process: its JSON line and its peak resident memory (GB),
    as the child measured it (``RUSAGE_SELF``: children's maxima would mix stages)."""
    cmd = [
        sys.executable,
        __file__,
        "--stage",
        stage,
        "--n",
        str(args.n),
        "--workdir",
        str(args.workdir),
        "--index",
        args.index,
        "--db-name",
        args.db_name,
    ]
    if args.target_recall is not None:
        cmd += ["--target-recall", str(args.target_recall)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    return res, float(res["peak_rss_gb"])


# ---- exact search and stage 2 ------------------------------------------------------------
def exact_neighbours(args: argparse.Namespace, q: np.ndarray) -> dict[str, np.ndarray]:
    from geolocus.index.compressed import exact_topk

    corpus = args.workdir / f"corpus-{args.n}"
    vec = np.load(corpus / "vectors.npy", mmap_mode="r")
    ll = np.load(corpus / "coords.npy", mmap_mode="r")
    qn = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    ns, ni = exact_topk(vec, qn, K)
    fs, fi = exact_topk(vec, -qn, K_FAR)
    return {
        "near": np.asarray(ll)[ni],
        "near_scores": ns,
        "near_rows": ni,
        "far": np.asarray(ll)[fi],
        "far_rows": fi,
        "far_scores": -fs,
    }


def _neighbours(d: dict[str, np.ndarray], rows: slice):
    from geolocus.data.neighbours import Neighbours

    n = len(d["near"][rows])
    return Neighbours(
        ids=np.asarray([str(i) for i in range(n)], dtype=object),
        near=d["near"][rows],
        far=d["far"][rows],
        near_scores=d["near_scores"][rows].astype(float),
        far_scores=d["far_scores"][rows].astype(float),
    )


def top1_agreement(exact: dict, found: dict, truth: np.ndarray, n_eval: int) -> dict[str, float]:
    from geolocus.geo import haversine_km
    from geolocus.refine import create_refiner

    ev, fit = slice(0, n_eval), slice(n_eval, None)
    out = {}
    for name in ("dualgeo", "best"):
        ref = create_refiner(name)
        if ref.learns:
            ref.fit(_neighbours(exact, fit), truth[fit])
        a = ref.predict(_neighbours(exact, ev))
        b = ref.predict(_neighbours(found, ev))
        km = haversine_km(a[:, 0], a[:, 1], b[:, 0], b[:, 1])
        out[name] = round(float(np.mean(km < 0.001)), 4)
        out[f"{name}_within_1km"] = round(float(np.mean(km < 1.0)), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--index", default="auto", help="factory: auto, Flat, or any FAISS string")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--fit-queries", type=int, default=500, help="with positions, to fit best")
    ap.add_argument("--pool", type=int, default=100_000)
    ap.add_argument("--jitter-km", type=float, default=3.0)
    ap.add_argument("--noise", type=float, default=0.03, help="per dimension, before normalising")
    ap.add_argument(
        "--target-recall",
        type=float,
        default=None,
        help="recall@20 tuned for (default: the database's own default)",
    )
    ap.add_argument("--db-name", default="", help="database folder name (default db-N)")
    ap.add_argument("--stage", choices=["all", "build", "search"], default="all")
    ap.add_argument(
        "--skip-build",
        action="store_true",
        help="search the database already in the workdir (build figures are then NaN)",
    )
    ap.add_argument("--sweep", default="", help="NEAR/FAR lists scanned, e.g. 4/1,4/2")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        rows = sweep(args, args.sweep)
        if args.json:
            args.json.write_text(json.dumps({"n": args.n, "sweep": rows}, indent=2) + "\n")
        return None
    if args.stage == "build":
        return child_build(args)
    if args.stage == "search":
        return child_search(args)
    corpus = make_corpus(args)
    if args.skip_build:  # measure search again on the database as it is (e.g. re-tuned)
        from geolocus.index.database import read_manifest

        man = read_manifest(_db_dir(args))
        built, rss_build = {"build_s": float("nan"), "factory": man.factory,
                            "search": man.search}, float("nan")  # fmt: skip
    else:
        _log("build ...")
        built, rss_build = _child(args, "build")
        _log(f"built in {built['build_s']:.1f} s: {built['factory']} {built['search']}")
    searched, rss_search = _child(args, "search")
    db_dir = _db_dir(args)
    disk = sum(f.stat().st_size for f in db_dir.iterdir() if f.is_file())
    z = np.load(corpus / "queries.npz")
    q, truth = z["vectors"], z["coords"]
    _log("exact search ...")
    exact = exact_neighbours(args, q)
    f = np.load(_db_dir(args).with_suffix(".found.npz"))
    found = {k: f[k] for k in ("near", "near_scores", "far", "far_scores")}
    found_rows = np.vectorize(lambda s: int(s.split(".")[0]))(f["near_ids"])
    nq = args.queries
    hits = [
        len(np.intersect1d(a, b))
        for a, b in zip(found_rows[:nq], exact["near_rows"][:nq], strict=True)
    ]
    far_rows = np.vectorize(lambda s: int(s.split(".")[0]))(f["far_ids"])
    far_hits = [
        len(np.intersect1d(a, b))
        for a, b in zip(far_rows[:nq], exact["far_rows"][:nq], strict=True)
    ]
    result = {
        "n": args.n,
        "build_s": round(built["build_s"], 1),
        "peak_rss_build_gb": round(rss_build, 3),
        "peak_rss_search_gb": round(rss_search, 3),
        "disk_gb": round(disk / 1e9, 3),
        "open_s": round(searched["open_s"], 3),
        "ms_per_photo_batch16": round(searched["ms_per_photo_batch16"], 3),
        "ms_per_photo_single": round(searched["ms_per_photo_single"], 3),
        "copy_10mb_ms": round(searched["copy_10mb_ms"], 3),
        "warm_s": round(searched["warm_s"], 1),
        "recall_at_20": round(float(np.sum(hits) / (nq * K)), 4),
        "top1_same_as_exact": top1_agreement(exact, found, truth, nq),
        "far_recall_at_20": round(float(np.sum(far_hits) / (nq * K_FAR)), 4),
        "factory": built["factory"],
        "search": built["search"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def sweep(args: argparse.Namespace, pairs: str) -> list[dict]:
    """Agreement, recall and ms a photo (batches of 16) for each ``NEAR/FAR`` lists scanned."""
    from geolocus.index import Database
    from geolocus.index.compressed import SCAN

    z = np.load(args.workdir / f"corpus-{args.n}" / "queries.npz")
    q, truth = z["vectors"], z["coords"]
    cache = _db_dir(args).with_suffix(".exact.npz")  # exact neighbours, computed once
    if cache.is_file():
        exact = dict(np.load(cache))
    else:
        _log("exact search ...")
        exact = exact_neighbours(args, q)
        np.savez(cache, **exact)
    db = Database.open(_db_dir(args))
    tuned = db.manifest.search
    if tuned.get("rerank") != SCAN or tuned.get("far_rerank") != SCAN:
        sys.exit("scale: --sweep needs a compressed database tuned to scan its lists")
    out = []
    for pair in pairs.split(","):
        near, far = (int(x) for x in pair.split("/"))
        lists = {"nprobe": near, "far_nprobe": far}
        db.search(q[:16], k=K, k_far=K_FAR, **lists)
        t0 = time.perf_counter()
        parts = [db.search(q[s : s + 16], k=K, k_far=K_FAR, **lists) for s in range(0, len(q), 16)]
        ms = (time.perf_counter() - t0) * 1000 / len(q)
        found = {k: np.concatenate([getattr(p, k) for p in parts])
                 for k in ("near", "near_scores", "far", "far_scores")}  # fmt: skip
        rows = np.vectorize(lambda s: int(s.split(".")[0]))(
            np.concatenate([p.near_ids for p in parts])
        )
        nq = args.queries
        hits = [len(np.intersect1d(a, b)) for a, b in zip(rows[:nq], exact["near_rows"][:nq],
                                                          strict=True)]  # fmt: skip
        row = {
            "near_lists": near,
            "far_lists": far,
            "ms_per_photo_batch16": round(ms, 3),
            "recall_at_20": round(float(np.sum(hits) / (nq * K)), 4),
            "top1_same_as_exact": top1_agreement(exact, found, truth, nq),
        }
        _log(json.dumps(row))
        out.append(row)
    return out


if __name__ == "__main__":
    main()
