"""Embedding throughput of each executor: one process, a local process pool, Ray.

    PYTHONPATH=src python bench/embed_throughput.py --n 600 --shard-size 50 \
        --modes one,pool,ray [--ray-address HOST:PORT] [--workers 2]

The first ``--n`` photos of IM2GPS3k (``--data``, read only) are cut into shards
of ``--shard-size`` and embedded with ``--model`` by each executor in turn; nothing is
written (the outputs stay in memory and are compared: every executor must give the
same ids and, within float16 rounding, the same vectors). Printed per executor:
wall time with start-up (processes, model loading, the Ray runtime), photos/s over
that, and photos/s once running (after the first shard finished).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from geolocus.data.sources import Record, items_source
from geolocus.index.executors import (
    Executor,
    LocalExecutor,
    PoolExecutor,
    Progress,
    RayExecutor,
)
from geolocus.index.shards import ShardOutput
from geolocus.models.embedder import create_embedder


def _source(data: Path, n: int, shard_size: int):
    labels = pd.read_csv(data / "labels.csv")
    rows = []
    for rid, lat, lon in labels[["IMG_ID", "LAT", "LON"]].itertuples(index=False):
        p = data / "images" / str(rid)
        if p.is_file():
            rows.append(Record(str(rid), str(p), float(lat), float(lon), str(p)))
        if len(rows) == n:
            break
    return items_source(rows, "labels", str(data), shard_size)


def _run(ex: Executor, src) -> tuple[dict[str, ShardOutput], float, float]:
    outs: dict[str, ShardOutput] = {}
    first: list[float] = []
    photos_first = [0]

    def done(spec, out):
        if not first:
            first.append(time.perf_counter())
            photos_first[0] = spec.size or 0
        outs[spec.name] = out

    bar = Progress(len(src.shards), src.photos, enabled=False)
    t0 = time.perf_counter()
    ex.run(src.shards, done, bar)
    t1 = time.perf_counter()
    wall = t1 - t0
    n = src.photos or 0
    steady = (n - photos_first[0]) / max(t1 - first[0], 1e-9)
    return outs, wall, steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/im2gps3k"))
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--modes", default="one,pool,ray")
    ap.add_argument("--ray-address", default=None)
    args = ap.parse_args()

    src = _source(args.data, args.n, args.shard_size)
    print(
        f"{src.photos} photos of {args.data}, {len(src.shards)} shards of {args.shard_size}, "
        f"model {args.model}, {os.cpu_count()} cores, batch {args.batch_size}"
    )
    results: dict[str, dict[str, ShardOutput]] = {}
    print(f"{'executor':32s} {'wall s':>8s} {'photos/s':>9s} {'running photos/s':>17s}")
    for mode in args.modes.split(","):
        if mode == "one":
            ex: Executor = LocalExecutor(create_embedder(args.model), args.batch_size)
            label = "one process"
        elif mode == "pool":
            ex = PoolExecutor(args.model, args.workers, args.batch_size)
            label = f"local pool of {args.workers}"
        elif mode == "ray":
            ex = RayExecutor(args.model, args.workers, None, args.batch_size)
            label = f"Ray local runtime, {args.workers} workers"
        elif mode == "ray-cluster":
            ex = RayExecutor(args.model, args.workers, args.ray_address, args.batch_size)
            label = f"Ray cluster {args.ray_address}, {args.workers} workers"
        else:
            raise SystemExit(f"unknown mode {mode}")
        outs, wall, steady = _run(ex, src)
        n = src.photos or 0
        print(f"{label:32s} {wall:8.1f} {n / wall:9.1f} {steady:17.1f}", flush=True)
        results[mode] = outs
    ref_mode = next(iter(results))
    ref = results[ref_mode]
    for mode, outs in results.items():
        ids_same = all(outs[k].ids == ref[k].ids for k in ref)
        diff = max(
            float(
                np.abs(outs[k].vectors.astype(np.float32) - ref[k].vectors.astype(np.float32)).max(
                    initial=0.0
                )
            )
            for k in ref
        )
        print(f"{mode} vs {ref_mode}: same ids {ids_same}, max |vector difference| {diff:.4g}")


if __name__ == "__main__":
    main()
