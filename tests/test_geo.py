"""Spherical geometry: property tests and known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geolocus.errors import InvalidCoordinatesError
from geolocus.geo import (
    EARTH_RADIUS_KM,
    MAX_DISTANCE_KM,
    SphericalKDE,
    dbscan_sphere,
    equal_earth,
    equal_earth_inverse,
    haversine_km,
    largest_cluster,
    pairwise_km,
    spherical_mean,
    validate_latlon,
    web_mercator,
    web_mercator_inverse,
)

lat_s = st.floats(-90, 90, allow_nan=False)
lon_s = st.floats(-180, 180, allow_nan=False)
point = st.tuples(lat_s, lon_s)


def test_known_distances():
    # one degree of longitude on the equator, and a quarter meridian
    assert haversine_km(0, 0, 0, 1) == pytest.approx(EARTH_RADIUS_KM * np.pi / 180, rel=1e-12)
    assert haversine_km(0, 0, 90, 0) == pytest.approx(EARTH_RADIUS_KM * np.pi / 2, rel=1e-12)
    # Paris – New York ≈ 5837 km on the mean sphere
    assert haversine_km(48.8566, 2.3522, 40.7128, -74.0060) == pytest.approx(5837, abs=5)
    # antipodes give exactly half the circumference
    assert haversine_km(10, 20, -10, -160) == pytest.approx(MAX_DISTANCE_KM, abs=1e-3)  # < 1 m


@settings(max_examples=300, deadline=None)
@given(point, point)
def test_symmetry_and_range(a, b):
    d1 = haversine_km(*a, *b)
    d2 = haversine_km(*b, *a)
    assert d1 == pytest.approx(d2, abs=1e-9)
    assert 0.0 <= d1 <= MAX_DISTANCE_KM + 1e-9


@settings(max_examples=300, deadline=None)
@given(point, point, point)
def test_triangle_inequality(a, b, c):
    # 1 m of slack: near antipodes the haversine's asin(√h), h → 1, loses ~1e-5 km (found by
    # hypothesis), far below what any answer resolves
    assert haversine_km(*a, *c) <= haversine_km(*a, *b) + haversine_km(*b, *c) + 1e-3


@settings(max_examples=100, deadline=None)
@given(lat_s, st.floats(-179.5, 179.5))
def test_antimeridian_and_identity(lat, lon):
    assert haversine_km(lat, lon, lat, lon) == pytest.approx(0.0, abs=1e-6)
    # 180 and -180 are the same meridian
    assert haversine_km(lat, 180.0, lat, -180.0) == pytest.approx(0.0, abs=1e-6)


def test_across_antimeridian_is_short():
    assert haversine_km(0, 179.5, 0, -179.5) == pytest.approx(111.2, abs=0.2)


def test_poles_all_longitudes_coincide():
    assert haversine_km(90, 0, 90, 123) == pytest.approx(0.0, abs=1e-6)
    assert haversine_km(-90, -45, -90, 170) == pytest.approx(0.0, abs=1e-6)


def test_torch_matches_numpy_and_broadcasts():
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.uniform(-90, 90, 50), rng.uniform(-180, 180, 50)])
    b = np.column_stack([rng.uniform(-90, 90, 7), rng.uniform(-180, 180, 7)])
    d_np = pairwise_km(a, b)
    d_t = pairwise_km(torch.tensor(a), torch.tensor(b))
    assert isinstance(d_t, torch.Tensor) and d_t.shape == (50, 7)
    np.testing.assert_allclose(d_t.numpy(), d_np, rtol=1e-10)


@pytest.mark.parametrize(
    "lat,lon",
    [(91, 0), (-90.5, 0), (0, 180.01), (0, -200), (np.nan, 0), (0, np.inf)],
)
def test_invalid_coordinates_rejected(lat, lon):
    with pytest.raises(InvalidCoordinatesError, match="invalid"):
        validate_latlon(np.array([0.0, lat]), np.array([0.0, lon]))


def test_spherical_mean_across_antimeridian_and_pole():
    lat, lon = spherical_mean([0, 0], [179, -179])
    assert lat == pytest.approx(0, abs=1e-9) and abs(lon) == pytest.approx(180, abs=1e-9)
    # points around the North Pole average to the pole, not to latitude 80
    lat, _ = spherical_mean([80, 80, 80, 80], [0, 90, 180, -90])
    assert lat == pytest.approx(90, abs=1e-9)
    # weights pull the mean
    lat, lon = spherical_mean([0, 0], [0, 10], weights=[3, 1])
    assert 0 < lon < 5
    # batched: one mean per row
    lat, lon = spherical_mean(np.array([[0, 0], [10, 20]]), np.array([[0, 10], [5, 5]]))
    assert lat.shape == (2,) and lat[1] == pytest.approx(15, abs=0.1)


@settings(max_examples=100, deadline=None)
@given(point)
def test_mean_of_one_point_is_the_point(p):
    lat, lon = spherical_mean([p[0]], [p[1]])
    assert haversine_km(lat, lon, *p) < 1e-6


def test_dbscan_on_sphere_joins_across_antimeridian():
    lat = np.array([0.0, 0.0, 0.0, 45.0, 45.1, -30.0])
    lon = np.array([179.9, -179.9, 179.95, 10.0, 10.1, 60.0])
    labels = dbscan_sphere(lat, lon, eps_km=50, min_samples=2)
    assert labels[0] == labels[1] == labels[2] >= 0
    assert labels[3] == labels[4] >= 0 and labels[3] != labels[0]
    assert labels[5] == -1
    mask = largest_cluster(labels)
    assert mask.tolist() == [True, True, True, False, False, False]


def test_kde_peaks_at_the_dense_spot_and_integrates_to_one():
    kde = SphericalKDE(bandwidth_km=100).fit(
        np.array([10.0, 10.1, 9.9, -40]), np.array([5, 5, 5, 100])
    )
    s = kde.score(np.array([10.0, -40]), np.array([5.0, 100]))
    assert s[0] > s[1]
    # numerical integral of the density over the sphere is 1
    lat = np.linspace(-90, 90, 721)
    lon = np.linspace(-180, 180, 1441)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    wide = SphericalKDE(bandwidth_km=2000).fit(np.array([30.0]), np.array([40.0]))
    dens = np.exp(wide.score(la, lo))
    cell = np.radians(0.25) ** 2 * np.cos(np.radians(la))
    assert float((dens * cell).sum()) == pytest.approx(1.0, rel=1e-2)


@settings(max_examples=200, deadline=None)
@given(st.floats(-89.9, 89.9), st.floats(-179.9, 179.9))
def test_projections_round_trip(lat, lon):
    for geoclip_scale in (False, True):
        x, y = equal_earth(np.array(lat), np.array(lon), geoclip_scale=geoclip_scale)
        la, lo = equal_earth_inverse(x, y, geoclip_scale=geoclip_scale)
        assert la == pytest.approx(lat, abs=1e-7) and lo == pytest.approx(lon, abs=1e-7)
    if abs(lat) < 85:
        x, y = web_mercator(np.array(lat), np.array(lon), normalize=True)
        la, lo = web_mercator_inverse(x, y, normalize=True)
        assert la == pytest.approx(lat, abs=1e-7) and lo == pytest.approx(lon, abs=1e-7)


def test_projection_known_values():
    # Equal Earth: the map's half-width at the equator is 2√3π/(3·A1) on the unit sphere
    x, y = equal_earth(np.array(0.0), np.array(180.0))
    assert float(x) == pytest.approx(2 * np.sqrt(3) * np.pi / (3 * 1.340264), rel=1e-9)
    assert float(y) == pytest.approx(0.0)
    # Web Mercator: 180°E is πR metres; torch gives the same numbers
    x, y = web_mercator(
        torch.tensor([45.0], dtype=torch.float64), torch.tensor([180.0], dtype=torch.float64)
    )
    assert float(x) == pytest.approx(np.pi * 6378137.0)
    assert float(y) == pytest.approx(5621521.486, abs=1e-2)
