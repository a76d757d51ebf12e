"""The metrics of the worldwide geolocation literature.

Accuracy is the share of photos whose predicted position lies within a
threshold of the truth (1 km street, 25 km city, 200 km region, 750 km
country, 2500 km continent), in percent. GeoScore is GeoGuessr's
5000·exp(−d / 1492.7 km), averaged.

A photo without a prediction is scored as the worst possible guess, half the
Earth's circumference away (20,015 km): it misses every threshold, scores
about 0 GeoScore and enters the median and mean at that distance, so that
dropping hard photos can never improve a result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from geolocus.errors import InputError
from geolocus.geo import MAX_DISTANCE_KM, THRESHOLDS_KM, haversine_km

GEOSCORE_SCALE_KM = 1492.7


@dataclass(frozen=True)
class Scores:
    """Summary of a set of geolocation errors."""

    n: int
    acc: dict[str, float]
    median_km: float
    mean_km: float
    geoscore: float
    n_missing: int = 0
    missing: list[str] = field(default_factory=list, compare=False, repr=False)

    def to_json(self) -> dict:
        """The JSON form of ``geolocus evaluate --json``."""
        d = asdict(self)
        d.pop("missing")
        return d

    def row(self) -> list[float]:
        """Accuracy at the standard thresholds, in order."""
        return [self.acc[str(t)] for t in THRESHOLDS_KM]


def score_errors(errors_km: np.ndarray, n_missing: int = 0, missing: list[str] | None = None):
    """Scores of an array of errors in km (missing predictions counted as misses)."""
    e = np.asarray(errors_km, dtype=float).reshape(-1)
    if np.isnan(e).any():
        raise ValueError("errors contain NaN")
    e = np.concatenate([e, np.full(n_missing, MAX_DISTANCE_KM)])
    if e.size == 0:
        raise InputError("nothing to score: no images")
    acc = {str(t): float(100.0 * np.mean(e <= t)) for t in THRESHOLDS_KM}
    return Scores(
        n=int(e.size),
        acc=acc,
        median_km=float(np.median(e)),
        mean_km=float(np.mean(e)),
        geoscore=float(np.mean(5000.0 * np.exp(-e / GEOSCORE_SCALE_KM))),
        n_missing=int(n_missing),
        missing=list(missing or []),
    )


def _match_paths(pred: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Predicted ids that are paths (``photos/a/b.jpg``, as ``geolocus predict`` names a
    photo) renamed to the ground-truth id they end with (``a/b.jpg``), the longest such
    ending; two predictions ending up with one id are an error, not a silent choice."""
    known = set(truth["IMG_ID"])
    ids = pred["IMG_ID"].astype(str).tolist()
    renamed = False
    for i, s in enumerate(ids):
        if s in known:
            continue
        parts = PurePosixPath(s.replace("\\", "/")).parts
        tail = next((t for j in range(1, len(parts)) if (t := "/".join(parts[j:])) in known), None)
        if tail is not None:
            ids[i], renamed = tail, True
    if not renamed:
        return pred
    out = pred.assign(IMG_ID=ids)
    dup = out["IMG_ID"].duplicated()
    if dup.any():
        raise InputError(
            f"two predictions are for the ground truth's {out['IMG_ID'][dup].iloc[0]!r} "
            "(paths ending alike)"
        )
    return out


def errors_km(pred: pd.DataFrame, truth: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Per-image error (km) of ``pred`` against ``truth`` (both ``IMG_ID,LAT,LON``).

    Returns the errors indexed by IMG_ID (truth order) and the ids of ``truth``
    with no prediction. Predictions for ids absent from ``truth`` are an error:
    they mean the two files do not describe the same benchmark.
    """
    pred = _match_paths(pred, truth)
    extra = ~pred["IMG_ID"].isin(truth["IMG_ID"])
    if extra.any():
        first = pred["IMG_ID"][extra].iloc[0]
        raise InputError(
            f"{int(extra.sum())} predicted IMG_ID(s) are not in the ground truth, first {first!r}"
        )
    merged = truth.merge(pred, on="IMG_ID", how="left", suffixes=("_true", "_pred"))
    have = merged["LAT_pred"].notna().to_numpy()
    d = haversine_km(
        merged["LAT_true"].to_numpy()[have],
        merged["LON_true"].to_numpy()[have],
        merged["LAT_pred"].to_numpy()[have],
        merged["LON_pred"].to_numpy()[have],
    )
    missing = merged["IMG_ID"][~have].tolist()
    return pd.Series(d, index=merged["IMG_ID"][have].to_numpy(), name="error_km"), missing


def evaluate(pred: pd.DataFrame, truth: pd.DataFrame) -> Scores:
    """Score predictions against ground truth (see :func:`errors_km`)."""
    err, missing = errors_km(pred, truth)
    return score_errors(err.to_numpy(), n_missing=len(missing), missing=missing)
