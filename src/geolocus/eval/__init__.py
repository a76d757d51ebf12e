"""Evaluation as in the literature: accuracy at 1/25/200/750/2500 km, median error, GeoScore."""

from geolocus.eval.metrics import (
    Scores,
    errors_km,
    evaluate,
    score_errors,
)
from geolocus.eval.published import PublishedResult, published_results
from geolocus.eval.report import results_table

__all__ = [
    "PublishedResult",
    "Scores",
    "errors_km",
    "evaluate",
    "published_results",
    "results_table",
    "score_errors",
]
