"""Offline reverse geocoding, countries, the population prior and the TransGeoCLIP text view."""

from __future__ import annotations

import numpy as np
import pytest

from geolocus.errors import InvalidCoordinatesError
from geolocus.geo import haversine_km
from geolocus.places import (
    Gazetteer,
    Place,
    city_table,
    continent_of,
    country_code_of,
    country_of,
    describe,
    join_parts,
    reverse_geocode,
    sentence,
)
from geolocus.places._data import PlaceTables, load_tables

CITIES = {  # name: (lat, lon, ISO code, continent)
    "Paris": (48.8566, 2.3522, "FR", "Europe"),
    "Tokyo": (35.6895, 139.6917, "JP", "Asia"),
    "Sydney": (-33.8688, 151.2093, "AU", "Oceania"),
    "Nairobi": (-1.2864, 36.8172, "KE", "Africa"),
    "Rio de Janeiro": (-22.9068, -43.1729, "BR", "South America"),
    "Chicago": (41.8781, -87.6298, "US", "North America"),
}


@pytest.fixture(scope="module")
def gaz() -> Gazetteer:
    return Gazetteer.load()


@pytest.fixture(scope="module")
def big() -> Gazetteer:
    return city_table(100_000)


def test_paris(gaz: Gazetteer) -> None:
    p = reverse_geocode(48.8566, 2.3522)
    assert isinstance(p, Place)
    assert (p.name, p.country, p.country_code, p.continent) == ("Paris", "France", "FR", "Europe")
    assert p.region == "Île-de-France"
    assert p.label == "Paris, Île-de-France, France"
    assert p.distance_km < 5
    assert p.distance_km == pytest.approx(haversine_km(48.8566, 2.3522, p.lat, p.lon))
    assert describe(48.8566, 2.3522) == "A photo taken in Paris, Île-de-France, France."


def test_known_countries_and_continents_vectorised() -> None:
    lat, lon, codes, conts = (np.array(v) for v in zip(*CITIES.values(), strict=True))
    assert country_code_of(lat, lon).tolist() == codes.tolist()
    assert continent_of(lat, lon).tolist() == conts.tolist()
    names = country_of(lat, lon).tolist()
    assert names[0] == "France" and names[1] == "Japan"


def test_mid_pacific_is_far_from_everything(gaz: Gazetteer) -> None:
    p = gaz.reverse_geocode(0.0, -140.0)
    assert p.distance_km > 500  # the nearest islands are hundreds of km away
    assert p.distance_km == pytest.approx(haversine_km(0.0, -140.0, p.lat, p.lon))


def test_nearest_matches_brute_force(big: Gazetteer) -> None:
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-90, 90, 300), rng.uniform(-180, 180, 300)
    idx, km = big.query(lat, lon)
    d = haversine_km(lat[:, None], lon[:, None], big.lat[None, :], big.lon[None, :])
    np.testing.assert_allclose(km, d.min(axis=1), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(d[np.arange(300), idx], km)


def test_antimeridian(gaz: Gazetteer) -> None:
    # Fiji straddles 180°: the nearest places of a point just west of it lie on both sides.
    places = gaz.nearest(-16.8, 179.99, k=5)
    assert {p.country_code for p in places} == {"FJ"}
    assert any(p.lon < 0 for p in places) and any(p.lon > 0 for p in places)
    assert places[0].distance_km < 100
    assert [p.distance_km for p in places] == sorted(p.distance_km for p in places)
    # lon 180 and -180 are the same meridian
    a, b = gaz.query([-17.0, 65.0], [180.0, 180.0]), gaz.query([-17.0, 65.0], [-180.0, -180.0])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])


def test_poles(gaz: Gazetteer) -> None:
    north = gaz.reverse_geocode(90.0, 0.0)
    assert north.name and north.distance_km > 500
    assert north.distance_km == pytest.approx(haversine_km(90.0, 0.0, north.lat, north.lon))
    # every longitude is the same point at the pole
    assert gaz.reverse_geocode(90.0, 123.0).name == north.name
    south = gaz.reverse_geocode(-90.0, 45.0)
    assert (south.name, south.region, south.country_code) == ("", "", "AQ")
    assert south.label == "Antarctica"
    assert describe(-75.0, 0.0) == "A photo taken in Antarctica."
    assert country_code_of(-89.0, 10.0) == "AQ"
    assert continent_of(-61.0, -60.0) == "Antarctica"
    assert isinstance(country_of(48.85, 2.35), str)
    # the raw nearest place still exists (somewhere in South America or New Zealand)
    assert gaz.nearest(-90.0, 0.0)[0].distance_km > 2500


def test_vectorised_shapes(gaz: Gazetteer) -> None:
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-60, 70, (3, 4)), rng.uniform(-180, 180, (3, 4))
    idx, km = gaz.query(lat, lon)
    assert idx.shape == km.shape == (3, 4)
    idx3, km3 = gaz.query(lat, lon, k=3)
    assert idx3.shape == km3.shape == (3, 4, 3)
    assert np.all(np.diff(km3, axis=-1) >= 0)
    np.testing.assert_array_equal(idx3[..., 0], idx)
    scalar_idx, scalar_km = gaz.query(10.0, 20.0)
    assert np.ndim(scalar_idx) == 0 and np.ndim(scalar_km) == 0
    # broadcasting: one latitude against many longitudes
    assert gaz.query(45.0, np.array([0.0, 10.0, 20.0]))[0].shape == (3,)
    places = gaz.reverse_geocode(lat, lon)
    assert isinstance(places, list) and len(places) == 12
    assert [p.name for p in places] == [gaz.place(int(i)).name for i in idx.ravel()]
    texts = describe(lat, lon)
    assert len(texts) == 12 and all(t.startswith("A photo taken in ") for t in texts)
    assert isinstance(describe(10.0, 20.0), str)
    assert len(gaz.labels([48.8566], [2.3522])) == 1


def test_invalid_coordinates(gaz: Gazetteer) -> None:
    with pytest.raises(InvalidCoordinatesError):
        gaz.query([0.0, 95.0], [0.0, 0.0])
    with pytest.raises(InvalidCoordinatesError):
        reverse_geocode(0.0, float("nan"))
    with pytest.raises(ValueError, match="one point"):
        gaz.nearest(np.array([1.0, 2.0]), np.array([1.0, 2.0]))


def test_templates() -> None:
    assert join_parts("Paris", "Île-de-France", "France") == "Paris, Île-de-France, France"
    assert join_parts("Singapore", "", "Singapore") == "Singapore"
    assert join_parts("Dubai", "Dubai", "United Arab Emirates") == "Dubai, United Arab Emirates"
    assert join_parts(None, "Bavaria", "Germany") == "Bavaria, Germany"
    assert join_parts("", None, "") == ""
    assert sentence("Rome, Lazio, Italy") == "A photo taken in Rome, Lazio, Italy."
    assert sentence("") == "A photo taken in an unknown place."
    assert sentence("Oslo", template="{place}") == "Oslo"
    p = Place("Kyoto", "Kyoto", "Japan", "JP", 35.0, 135.7, 1, 0.0)
    assert p.describe() == "A photo taken in Kyoto, Japan."
    assert describe(35.6895, 139.6917, template="Taken near {place}").startswith("Taken near ")


def test_city_table_and_thresholds(gaz: Gazetteer, big: Gazetteer) -> None:
    assert len(big) < len(gaz)
    assert big.population.min() >= 100_000
    n = len(big)
    assert big.lat.shape == big.lon.shape == big.population.shape == big.country_code.shape == (n,)
    assert "FR" in set(big.country_code.tolist())
    rng = np.random.default_rng(2)
    lat, lon = rng.uniform(-60, 70, 500), rng.uniform(-180, 180, 500)
    near_any, near_big = gaz.nearest_km(lat, lon), big.nearest_km(lat, lon)
    assert np.all(near_big >= near_any - 1e-9)
    assert Gazetteer.load(100_000) is big  # cached per threshold


def test_population_within_matches_brute_force(big: Gazetteer) -> None:
    rng = np.random.default_rng(3)
    # points near cities, so that the sums are not all zero
    i = rng.integers(0, len(big), 400)
    lat = np.clip(big.lat[i] + rng.normal(0, 0.5, 400), -90, 90)
    lon = (big.lon[i] + rng.normal(0, 0.5, 400) + 180) % 360 - 180
    radii = [5.0, 50.0, 300.0]
    pop = big.population_within(lat, lon, radii)
    cnt = big.count_within(lat, lon, radii)
    assert pop.shape == cnt.shape == (400, 3)
    d = haversine_km(lat[:, None], lon[:, None], big.lat[None, :], big.lon[None, :])
    for r, radius in enumerate(radii):
        inside = d <= radius
        np.testing.assert_allclose(pop[:, r], (inside * big.population).sum(1), rtol=1e-9)
        np.testing.assert_array_equal(cnt[:, r], inside.sum(1))
    assert np.all(np.diff(pop, axis=1) >= 0)
    assert pop[:, 2].sum() > 0
    one = big.population_within(lat[:7], lon[:7], 50.0)
    assert one.shape == (7,)
    np.testing.assert_allclose(one, pop[:7, 1])
    with pytest.raises(ValueError):
        big.population_within(lat, lon, -1.0)


def test_ten_thousand_points_run(gaz: Gazetteer) -> None:
    """Not timed; checks that the vectorised paths handle a realistic batch."""
    rng = np.random.default_rng(4)
    lat, lon = rng.uniform(-90, 90, 10_000), rng.uniform(-180, 180, 10_000)
    texts = gaz.describe(lat, lon)
    assert len(texts) == 10_000 and all(t.endswith(".") for t in texts)
    assert gaz.population_within(lat, lon, 25.0).shape == (10_000,)
    assert country_code_of(lat, lon).shape == (10_000,)


def test_cache_roundtrip(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GEOLOCUS_CACHE", str(tmp_path))
    built = load_tables()
    files = list(tmp_path.glob("places-v*.npz"))
    assert len(files) == 1
    read = PlaceTables.read(files[0])
    np.testing.assert_array_equal(built.lat, read.lat)
    np.testing.assert_array_equal(built.population, read.population)
    assert [read.names[i] for i in (0, 1000, len(read.names) - 1)] == [
        built.names[i] for i in (0, 1000, len(built.names) - 1)
    ]
    assert read.country_codes == built.country_codes
    # a corrupt cache is rebuilt, not fatal
    files[0].write_bytes(b"not a zip")
    again = load_tables()
    assert len(again.lat) == len(built.lat)
