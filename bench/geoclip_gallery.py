"""Time GeoCLIP's 100K GPS gallery: encoding it once, reopening the cache, and one query.

    .venv/bin/python bench/geoclip_gallery.py [--threads 2] [--queries 200]

Encodes into a fresh temporary cache folder (so the first build really
encodes), then reopens it (memory-mapped) and times ``GPSGallery.search`` for
single queries and for batches. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from geolocus.encoders.location import GeoCLIPLocationEncoder
from geolocus.models.gallery import GPSGallery


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip

    t0 = time.perf_counter()
    enc = GeoCLIPLocationEncoder.from_pretrained()
    print(f"load pretrained location encoder: {time.perf_counter() - t0:.2f} s")

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        gal = GPSGallery.geoclip(enc, cache_dir=cache, progress=False)
        t_build = time.perf_counter() - t0
        size = gal.path.stat().st_size / 2**20
        print(f"encode 100K gallery once (+ write {size:.0f} MiB cache): {t_build:.1f} s")

        t0 = time.perf_counter()
        gal = GPSGallery.geoclip(enc, cache_dir=cache, progress=False)
        print(f"reopen cached gallery (hash weights + memory-map): "
              f"{time.perf_counter() - t0:.2f} s")  # fmt: skip

        rng = np.random.default_rng(0)
        q = rng.standard_normal((args.queries, gal.dim)).astype(np.float32)
        gal.search(q[:1], args.k)  # page the embeddings in
        times = []
        for i in range(args.queries):
            t0 = time.perf_counter()
            gal.search(q[i : i + 1], args.k)
            times.append(time.perf_counter() - t0)
        print(f"search, 1 query at a time: median {1e3 * statistics.median(times):.1f} ms/query "
              f"(p90 {1e3 * sorted(times)[int(0.9 * len(times))]:.1f} ms)")  # fmt: skip
        for b in (64,):
            t0 = time.perf_counter()
            for i in range(0, args.queries, b):
                gal.search(q[i : i + b], args.k)
            per = (time.perf_counter() - t0) / args.queries
            print(f"search, batches of {b}: {1e3 * per:.2f} ms/query")
        print(f"speed-up over re-encoding the gallery per query: "
              f"{t_build / statistics.median(times):.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
