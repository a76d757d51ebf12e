"""GeoRanker's multi-order ranking loss as ``best``'s training objective: its parts.

Every row is ``best`` as registered (sharpness and L2 chosen by its inner 3-fold grouped
CV) under one training objective, 5-fold photographer-grouped cross-validated on the
queries of a neighbours file (the folds of ``geolocus benchmark refine``; ``--salt``
draws another partition):

- ``softmax``: today's objective, the expected number of thresholds met;
- ``georanker``: 0.7 x first order + 0.3 x second order, every position and pair;
- ``first``: the first order alone (Plackett-Luce over the distance order);
- ``second``: the second order alone (over pairs sorted by distance gap);
- ``top1``: both, partial Plackett-Luce over the first position only and the pairs of
  the closest candidate (the reference code's default ``K=1``).

Each finished row is kept in ``--json`` (written atomically); run again, the command
skips the rows already there, so an interrupted run goes on where it stopped.

    .venv/bin/python bench/refine_georanker.py --json out/georanker.json \\
        --neighbours ../shared/data/im2gps3k/g3_neighbours.csv \\
        --labels ../shared/data/im2gps3k/labels.csv
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from geolocus.data.im2gps3k import photographer
from geolocus.eval import score_errors
from geolocus.eval.crossval import cross_val_predict
from geolocus.eval.folds import grouped_folds
from geolocus.files import write_text_atomic
from geolocus.geo import distance_km
from geolocus.pipeline.refining import labelled_neighbours
from geolocus.refine import BestRefiner

#: Row name -> BestRefiner settings.
VARIANTS: dict[str, dict[str, Any]] = {
    "softmax": {"objective": "softmax"},
    "georanker": {"objective": "georanker"},
    "first": {"objective": "georanker", "order_weights": (1.0, 0.0)},
    "second": {"objective": "georanker", "order_weights": (0.0, 1.0)},
    "top1": {"objective": "georanker", "top": 1},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--neighbours", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--json", required=True, type=Path, help="Rows kept here as they finish.")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--salt", default="geolocus", help="grouped_folds salt (another partition)")
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    done: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    nb, truth, _ = labelled_neighbours(args.neighbours, args.labels, drop_unlabelled=True)
    folds = grouped_folds(nb.ids, 5, group=photographer, salt=args.salt)
    for name in names:
        if name in done:
            continue
        t0 = time.time()

        def say(i: int, k: int, name: str = name, t0: float = t0) -> None:
            print(f"{name}: fold {i}/{k} ({time.time() - t0:.0f} s)", file=sys.stderr)

        pred = cross_val_predict(
            lambda name=name: BestRefiner(**VARIANTS[name]), nb, truth, folds, progress=say
        )
        s = score_errors(distance_km(pred, truth))
        done[name] = {"acc": s.row(), "median_km": s.median_km, "s": time.time() - t0}
        write_text_atomic(args.json, json.dumps(done, indent=1))
    print("| objective | 1 km | 25 km | 200 km | 750 km | 2500 km | mean | median km | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        r = done[name]
        acc = " | ".join(f"{a:.2f}" for a in r["acc"])
        print(f"| {name} | {acc} | {np.mean(r['acc']):.2f} | {r['median_km']:.1f} | {r['s']:.0f} |")


if __name__ == "__main__":
    main()
