"""How the cell heads (planet, hybrid, pigeon) scale: fitting their cells and prototypes
(``prepare``) and training steps on N synthetic photos, through the same calls any
caller uses (``create_model``, ``model.prepare(TrainingSet(...))``, ``geolocus.train.fit``).

Positions: a mixture of 2,000 "cities" with Pareto-distributed weights and 1-200 km
spreads; embeddings: random float16 rows in a memory-mapped file under ``--workdir``
(the cost measured is the cells', not the features'). Timings are wall-clock seconds
on whatever machine runs it.

    PYTHONPATH=src .venv/bin/python bench/cells_scale.py --n 1000000 --workdir /tmp/cells-bench
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from geolocus.models import create_model
from geolocus.train.data import TrainingSet
from geolocus.train.loop import TrainConfig, fit

#: Per-head cell sizes used here (the values suggested for 1 M photos in configs/*.toml).
SIZES = {
    "planet": {"min_photos": 50, "max_photos": 1000},
    "hybrid": {"min_photos": 50, "max_photos": 1000},
    "pigeon": {"min_photos": 50, "max_photos": 1000},
}


def world(n: int, dim: int, workdir: Path, seed: int = 0) -> TrainingSet:
    """N clustered positions and a memory-mapped ``(N, dim)`` float16 embedding file."""
    rng = np.random.default_rng(seed)
    cities = np.column_stack((rng.uniform(-50, 65, 2000), rng.uniform(-180, 180, 2000)))
    w = rng.pareto(1.0, 2000) + 1
    c = rng.choice(2000, n, p=w / w.sum())
    spread = rng.uniform(0.01, 2.0, n)[:, None]
    gps = cities[c] + rng.normal(0, 1, (n, 2)) * spread
    gps[:, 0] = np.clip(gps[:, 0], -89.9, 89.9)
    gps[:, 1] = (gps[:, 1] + 180) % 360 - 180
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"emb-{n}-{dim}.npy"
    emb = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for s in range(0, n, 100_000):
        emb[s : s + 100_000] = rng.normal(0, 1, (min(100_000, n - s), dim))
    emb.flush()
    return TrainingSet([str(i) for i in range(n)], gps, np.load(path, mmap_mode="r"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batches", type=int, default=50, help="training steps timed per head")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--heads", nargs="+", default=list(SIZES))
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    data = world(a.n, a.dim, a.workdir)
    out = {}
    for name in a.heads:
        model = create_model(name, embed_dim=a.dim, **SIZES[name])
        t = time.perf_counter()
        model.prepare(data)
        t_prep = time.perf_counter() - t

        def some(epoch: int) -> Iterator[dict]:
            for i, b in enumerate(data.batches(a.batch_size)(epoch)):
                if i == a.batches:
                    return
                yield b

        t = time.perf_counter()
        fit(model, some, TrainConfig(epochs=1, lr=1e-3, batch_size=a.batch_size), progress=False)
        t_step = (time.perf_counter() - t) / a.batches
        out[name] = {
            "n_cells": int(model.config.n_cells),
            "prepare_s": round(t_prep, 1),
            "step_s": round(t_step, 3),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        }
        print(name, out[name], file=sys.stderr, flush=True)
    if a.json:
        a.json.write_text(json.dumps({"n": a.n, "dim": a.dim, "heads": out}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
