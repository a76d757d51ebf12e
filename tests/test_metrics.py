"""Metrics: conformance with published per-image predictions, and edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geolocus.errors import InputError
from geolocus.eval import evaluate, score_errors
from geolocus.geo import MAX_DISTANCE_KM, THRESHOLDS_KM

# Figures from ../shared/README.md (GeoEstimation, Müller-Budack et al. 2018).
REFERENCE = {
    "geoestimation_base_M-fstar_im2gps3k.csv": [9.74, 27.03, 35.64, 49.15, 66.00],
    "geoestimation_ISNs_M-fstar-S3_im2gps3k.csv": [10.54, 27.99, 36.64, 49.68, 65.97],
}


def _reference_tables(path):
    df = pd.read_csv(path)
    # drop the summary lines at the end (their first field is a number, not a file name)
    df = df[df["img_id"].str.endswith(".jpg", na=False)]
    truth = pd.DataFrame({"IMG_ID": df.img_id, "LAT": df.gt_lat, "LON": df.gt_long}).astype(
        {"LAT": float, "LON": float}
    )
    pred = pd.DataFrame(
        {"IMG_ID": df.img_id, "LAT": df.predicted_lat, "LON": df.predicted_long}
    ).astype({"LAT": float, "LON": float})
    return pred, truth, df


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_predictions_reproduce_published_figures(shared_data, name):
    pred, truth, df = _reference_tables(shared_data / "reference" / name)
    s = evaluate(pred, truth)
    assert s.n == 2997 and s.n_missing == 0
    np.testing.assert_allclose(s.row(), REFERENCE[name], atol=0.01)
    # our per-image distances agree with the file's own column (rounded to 0.01 km there)
    from geolocus.eval import errors_km

    err, _ = errors_km(pred, truth)
    np.testing.assert_allclose(err.to_numpy(), df.great_circle_distance.astype(float), atol=0.6)


def test_score_errors_thresholds_inclusive():
    s = score_errors(np.array([0.5, 1.0, 25.0, 200.0, 750.0, 2500.0, 2500.1, 1e4]))
    assert s.acc == {"1": 25.0, "25": 37.5, "200": 50.0, "750": 62.5, "2500": 75.0}
    assert s.median_km == pytest.approx((200 + 750) / 2)
    e = np.array([0.5, 1.0, 25.0, 200.0, 750.0, 2500.0, 2500.1, 1e4])
    assert s.geoscore == pytest.approx(np.mean(5000 * np.exp(-e / 1492.7)))
    assert s.mean_km == pytest.approx(e.mean())


def test_missing_predictions_count_as_misses():
    truth = pd.DataFrame({"IMG_ID": ["a", "b", "c", "d"], "LAT": [0.0] * 4, "LON": [0.0] * 4})
    pred = pd.DataFrame({"IMG_ID": ["a", "b"], "LAT": [0.0, 0.0], "LON": [0.0, 0.0]})
    s = evaluate(pred, truth)
    assert s.n == 4 and s.n_missing == 2 and sorted(s.missing) == ["c", "d"]
    assert all(v == 50.0 for v in s.acc.values())
    assert s.mean_km == pytest.approx(MAX_DISTANCE_KM / 2)
    js = s.to_json()
    assert set(js) == {"n", "acc", "median_km", "mean_km", "geoscore", "n_missing"}
    assert set(js["acc"]) == {str(t) for t in THRESHOLDS_KM}


def test_predictions_outside_truth_are_an_error():
    truth = pd.DataFrame({"IMG_ID": ["a"], "LAT": [0.0], "LON": [0.0]})
    pred = pd.DataFrame({"IMG_ID": ["a", "zzz"], "LAT": [0.0, 1.0], "LON": [0.0, 1.0]})
    with pytest.raises(InputError, match=r"not in the ground truth.*zzz"):
        evaluate(pred, truth)
