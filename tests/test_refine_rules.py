"""Stage-2 rules on generated neighbours, and on the shared G3 neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from geolocus.data import Neighbours, read_coords, read_neighbours
from geolocus.errors import InputError
from geolocus.eval import score_errors
from geolocus.geo import haversine_km
from geolocus.refine import create_refiner, list_refiners


def _one(near, far=None):
    near = np.asarray(near, float)[None]
    far = np.zeros((1, 0, 2)) if far is None else np.asarray(far, float)[None]
    return Neighbours(ids=["q"], near=near, far=far)


def test_registry():
    assert {"nearest", "dualgeo", "kde"} <= set(list_refiners())
    with pytest.raises(InputError, match="unknown refine method"):
        create_refiner("nope")


def test_nearest_takes_the_first():
    nb = _one([[1, 1], [50, 50], [50.01, 50.01]])
    assert create_refiner("nearest").predict(nb).tolist() == [[1.0, 1.0]]


def test_dualgeo_takes_the_member_of_the_largest_cluster_nearest_its_centre():
    # an outlier first, then three points near Paris; the middle one is closest to their centre
    nb = _one([[-33.9, 18.4], [48.80, 2.30], [48.86, 2.35], [48.92, 2.40]])
    pred = create_refiner("dualgeo").predict(nb)
    assert pred.tolist() == [[48.86, 2.35]]


def test_dualgeo_without_any_cluster_falls_back_to_retrieval_order():
    nb = _one([[0, 0], [40, 40], [-40, 100]])
    assert create_refiner("dualgeo").predict(nb).tolist() == [[0.0, 0.0]]


def test_kde_picks_the_dense_candidate_and_scores_form_a_distribution():
    nb = _one([[10, 10], [-20, 30], [-20.05, 30.05], [-19.95, 30.0]])
    r = create_refiner("kde").rank(nb)
    assert haversine_km(*r.candidates[0, 0], -20, 30) < 10
    assert r.scores.sum() == pytest.approx(1.0)
    assert np.all(np.diff(r.scores[0]) <= 0)


def test_rules_on_shared_neighbours(im2gps3k):
    nb = read_neighbours(im2gps3k / "g3_neighbours.csv")
    lab = read_coords(im2gps3k / "labels.csv").set_index("IMG_ID")
    t = lab.loc[list(nb.ids), ["LAT", "LON"]].to_numpy()

    def acc(name):
        p = create_refiner(name).predict(nb)
        return score_errors(haversine_km(p[:, 0], p[:, 1], t[:, 0], t[:, 1])).row()

    nearest, dualgeo = acc("nearest"), acc("dualgeo")
    # the README's nearest-neighbour row is on all 2946 queries; the dev file is close to it
    np.testing.assert_allclose(nearest, [13.27, 34.01, 45.52, 61.61, 78.11], atol=1.0)
    # DualGeo's re-ranking: the issue quotes ~13.2 / 37.6 / 50.4 / 65.8 / 80.5 on all queries
    np.testing.assert_allclose(dualgeo, [13.2, 37.6, 50.4, 65.8, 80.5], atol=1.0)
    assert dualgeo[2] > nearest[2] + 3  # clustering helps at region scale
