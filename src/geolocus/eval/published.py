"""Published results of other systems, kept in one data file with their sources."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import pandas as pd

from geolocus.geo import THRESHOLDS_KM


@dataclass(frozen=True)
class PublishedResult:
    benchmark: str
    system: str
    venue: str
    acc: dict[str, float]
    database: str
    source: str

    def row(self) -> list[float]:
        return [self.acc[str(t)] for t in THRESHOLDS_KM]


def published_results(benchmark: str | None = None) -> list[PublishedResult]:
    """Rows of ``published.csv``, optionally for one benchmark (case-insensitive)."""
    with resources.files("geolocus.eval").joinpath("published.csv").open(encoding="utf-8") as f:
        df = pd.read_csv(f, dtype={"venue": str})
    if benchmark is not None:
        df = df[df["benchmark"].str.lower() == benchmark.lower()]
    return [
        PublishedResult(
            benchmark=r.benchmark,
            system=r.system,
            venue=r.venue,
            acc={str(t): float(getattr(r, f"acc_{t}")) for t in THRESHOLDS_KM},
            database=r.database,
            source=r.source,
        )
        for r in df.itertuples(index=False)
    ]
