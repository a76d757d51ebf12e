"""Speed of the offline gazetteer (geolocus.places) and of map rendering (geolocus.viz).

Uses generated points only (no benchmark data): N points uniform on the globe's
land-ish latitudes and N points scattered (σ = 0.2°) around random GeoNames
places, the realistic case for photo locations, where the population sums are
largest. Prints one line per measurement.

    .venv/bin/python bench/places_speed.py            # N = 40 000
    .venv/bin/python bench/places_speed.py --n 10000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def timed(label: str, fn: Callable[[], Any], repeat: int = 3) -> Any:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    print(f"{label:<58s} {best * 1000:9.1f} ms")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40_000, help="query points per set")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GEOLOCUS_CACHE"] = tmp
        from geolocus.places import Gazetteer, city_table
        from geolocus.places._data import build_tables, load_tables

        timed("parse GeoNames JSON (first use, no cache)", build_tables, repeat=1)
        load_tables()  # writes the cache
        timed("load numpy cache", load_tables)
        gaz = Gazetteer.load()
        print(f"places: {len(gaz)}; cities >= 100k: {len(city_table(100_000))}")
        timed("build k-d tree", lambda: Gazetteer(load_tables(), 0).tree, repeat=1)

    rng = np.random.default_rng(0)
    n = args.n
    sets = {
        "uniform": (rng.uniform(-60, 75, n), rng.uniform(-180, 180, n)),
    }
    i = rng.integers(0, len(gaz), n)
    sets["near places"] = (
        np.clip(gaz.lat[i] + rng.normal(0, 0.2, n), -90, 90),
        (gaz.lon[i] + rng.normal(0, 0.2, n) + 180) % 360 - 180,
    )
    big = city_table(100_000)
    mid = city_table(10_000)
    for name, (lat, lon) in sets.items():
        print(f"-- {n} points, {name}")
        timed("query (nearest place, k=1)", lambda: gaz.query(lat, lon))  # noqa: B023
        timed("describe (TransGeoCLIP sentence)", lambda: gaz.describe(lat, lon), repeat=1)  # noqa: B023
        timed("country_code_of", lambda: gaz.country_code_of(lat, lon))  # noqa: B023
        timed("nearest_km to a city >= 100k", lambda: big.nearest_km(lat, lon))  # noqa: B023
        for radii in ([10.0], [50.0], [10.0, 50.0, 200.0]):
            timed(
                f"population_within {radii} km, all places",
                lambda r=radii: gaz.population_within(lat, lon, r),  # noqa: B023
                repeat=1,
            )
        timed(
            "population_within [10, 50, 200] km, places >= 10k",
            lambda: mid.population_within(lat, lon, [10.0, 50.0, 200.0]),  # noqa: B023
            repeat=1,
        )

    from geolocus.viz import map_html

    g = rng.normal([45.0, 10.0], 1.0, (5, 2))
    nb = rng.normal([45.0, 10.0], 1.0, (100, 2))
    html = timed("map_html, 5 guesses + 100 neighbours", lambda: map_html(g, nb, truth=(45, 10)))
    print(f"map size: {len(html.encode()) / 1e6:.3f} MB")


if __name__ == "__main__":
    main()
