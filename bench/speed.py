"""Speed of the end-to-end geolocator: photos per second for ``index build`` and
``predict``, and the share of time spent outside the backbone's forward pass.

For each model, once loaded (loading is not a per-photo cost):

- **forward**: the backbone alone on ready-made pixel tensors (batches of ``--batch``);
- **index build**: :func:`geolocus.index.build.build_database` on the photos —
  decode, preprocess, forward, FAISS, Parquet, atomic save;
- **predict**: :meth:`Geolocator.predict` on the same photos against a database of
  ``--db-size`` photos (the built one, padded with random vectors: search time does
  not depend on their values) — decode, forward, search, refine, place names.

"outside" is ``1 - forward / total``, with the forward time measured inside the same
run (so that a busy machine slows both alike); "vs forward only" compares the whole
per-photo cost with the forward pass measured alone. Every stage runs ``--repeats``
times, interleaved, and the fastest run is kept. CLIP ViT-L/14 is built from its config
with random weights (timing does not depend on weight values), under GeoCLIP's
pretrained head and 100K GPS gallery (spec ``geoclip``): its gallery is encoded once
and cached, not per photo.

    .venv/bin/python bench/speed.py        # the offline default backbone, and geoclip
    .venv/bin/python bench/speed.py --models efficientnet-lite0 --n 64 --db-size 2000,100000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def photos(n: int, data: str | None, tmp: Path) -> list[str]:
    """``n`` IM2GPS3k photos if the shared data is here, else generated 640x480 JPEGs."""
    from geolocus.data.im2gps3k import find_data_dir

    d = find_data_dir(data)
    if d is not None and (d / "im2gps3k" / "images").is_dir():
        files = sorted((d / "im2gps3k" / "images").iterdir())
        return [str(p) for p in files[:: max(1, len(files) // n)][:n]]
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        p = tmp / f"photo{i:04d}.jpg"
        Image.fromarray(a).save(p, quality=90)
        out.append(str(p))
    return out


def forward_only(embedder, paths: list[str], batch: int) -> float:
    """Seconds per photo of the backbone's forward pass alone."""
    import torch

    from geolocus.data.images import load_image

    prep = embedder.encoder.preprocessing
    x = torch.from_numpy(np.stack([prep.image(load_image(p)) for p in paths]))
    with torch.no_grad():
        embedder.encoder(x[:batch])  # warm-up
        t0 = time.perf_counter()
        for s in range(0, len(x), batch):
            embedder.encoder(x[s : s + batch])
    return (time.perf_counter() - t0) / len(x)


def padded_database(src, size: int, factory: str, path: Path, seed: int = 0):
    """A database with ``src``'s photos plus random unit vectors at random places, up to
    ``size`` photos, in a FAISS index of ``factory``."""
    from geolocus.index import Database
    from geolocus.index.build import database_vectors

    n = max(0, size - len(src))
    rng = np.random.default_rng(seed)
    v = np.concatenate(
        [database_vectors(src), rng.normal(size=(n, src.manifest.dim)).astype(np.float32)]
    )
    ll = np.concatenate(
        [src.coords, np.column_stack([rng.uniform(-60, 70, n), rng.uniform(-180, 180, n)])]
    )
    m = src.manifest
    db = Database.create(
        path, dim=m.dim, model=m.model, model_version=m.model_version, factory=factory
    )
    db.add(v, [*map(str, src.ids), *(f"pad{i}" for i in range(n))], ll)
    return db


def run(
    model: str,
    paths: list[str],
    batch: int,
    db_sizes: list[int],
    refine: str,
    repeats: int,
    factory: str = "Flat",
) -> list[dict]:
    """Each stage ``repeats`` times, interleaved; the fastest run of each is kept (on a
    shared machine the minimum is the least disturbed measurement)."""
    from geolocus.index import Database
    from geolocus.index.build import Inputs, build_database, inputs_source
    from geolocus.index.executors import LocalExecutor
    from geolocus.models.embedder import create_embedder
    from geolocus.pipeline import Geolocator, RetrievalSettings

    t0 = time.perf_counter()
    hub = model in ("geoclip",) or model.startswith(("clip", "dinov2", "streetclip"))
    embedder = create_embedder(model, pretrained=not hub)
    load_s = time.perf_counter() - t0
    n = len(paths)
    rng = np.random.default_rng(1)
    ll = np.column_stack([rng.uniform(-60, 70, n), rng.uniform(-180, 180, n)])
    inputs = Inputs([Path(p).name for p in paths], paths, ll, "labels")
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="geolocus-speed-") as tmp:
        geos: dict[int, Geolocator] = {}
        for r in range(repeats):
            fwd = forward_only(embedder, paths, batch)
            runs.setdefault("forward only", []).append({"s_per_photo": fwd, "outside": 0.0})
            t = time.perf_counter()
            out = Path(tmp) / f"db{r}"
            src = inputs_source(inputs)
            res = build_database(out, src, embedder, LocalExecutor(embedder, batch), progress=False)
            total = time.perf_counter() - t
            inside = res.timing.get("forward_s", 0.0)
            runs.setdefault("index build", []).append(
                {"s_per_photo": total / n, "outside": 1 - inside / total}
            )
            for size in db_sizes:
                if size not in geos:  # made once: loading is not a per-photo cost
                    src = Database.open(Path(tmp) / "db0")
                    t = time.perf_counter()
                    db = padded_database(src, size, factory, Path(tmp) / f"pad{size}")
                    t_index = time.perf_counter() - t
                    t = time.perf_counter()
                    geos[size] = Geolocator.from_database(
                        db, refine, embedder=embedder, retrieval=RetrievalSettings(batch_size=batch)
                    )
                    geos[size].load_s = time.perf_counter() - t
                    print(f"# {factory} index of {size:,} made in {t_index:.1f} s", file=sys.stderr)
                geo = geos[size]
                geo.reset_timing()
                geo.predict(paths)
                tm = dict(geo.timing)
                stage = f"predict ({refine}, {factory} db of {len(geo.database):,})"
                runs.setdefault(stage, []).append(
                    {
                        "s_per_photo": tm["total"] / n,
                        "outside": 1 - tm["forward"] / tm["total"],
                        "breakdown": {k: v / n for k, v in tm.items() if k != "total"},
                        "geolocator_load_s": geo.load_s,
                    }
                )
    rows = []
    fwd = min(x["s_per_photo"] for x in runs["forward only"])
    for stage, xs in runs.items():
        best = min(xs, key=lambda x: x["s_per_photo"])
        row = {"model": model, "stage": stage, **best}
        if stage != "forward only":
            row["vs_forward_only"] = best["s_per_photo"] / fwd - 1
        rows.append(row)
    rows[0]["model_load_s"] = load_s
    return rows


def main() -> None:
    from geolocus.encoders.image import DEFAULT_ENCODER

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=f"{DEFAULT_ENCODER},geoclip")
    ap.add_argument("--n", type=int, default=192, help="photos per model (hub models: an eighth)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--db-size", default="2000", help="comma-separated database sizes")
    ap.add_argument("--refine", default="dualgeo")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each stage; the fastest kept")
    ap.add_argument("--factory", default="Flat", help="FAISS index of the predict databases")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2 = the target)")
    ap.add_argument("--data", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.db_size.split(",")]
    print(f"# {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}", file=sys.stderr)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.models.split(","):
            n = args.n if m.startswith("efficientnet") else max(8, args.n // 8)
            ps = photos(n, args.data, Path(tmp))
            print(f"# {m}: {len(ps)} photos", file=sys.stderr)
            bs = args.batch if n >= args.batch else 8
            out += run(m, ps, bs, sizes, args.refine, args.repeats, args.factory)
    print("| model | stage | s / photo | photos / s | outside the forward pass | vs forward only |")
    print("|---|---|---|---|---|---|")
    for r in out:
        vs = r.get("vs_forward_only")
        print(
            f"| {r['model']} | {r['stage']} | {r['s_per_photo']:.3f} | {1 / r['s_per_photo']:.1f} "
            f"| {100 * r['outside']:.1f} % | {'' if vs is None else f'{100 * vs:+.1f} %'} |"
        )
    for r in out:
        if "breakdown" in r:
            parts = ", ".join(f"{k} {1000 * v:.1f}" for k, v in r["breakdown"].items() if v > 0)
            print(f"\n{r['model']} {r['stage']}: ms per photo: {parts}; "
                  f"geolocator made in {r['geolocator_load_s']:.1f} s")  # fmt: skip
        if "model_load_s" in r:
            print(f"\n{r['model']}: model loaded in {r['model_load_s']:.1f} s")


if __name__ == "__main__":
    main()
