"""The cells of the classification heads: PlaNet's adaptive quadtree cells and PIGEON's
semantic geocells (geolocus.geo.cells), and the tangent-plane offsets of the hybrid head."""

from __future__ import annotations

import numpy as np
import pytest

from geolocus.errors import InputError
from geolocus.geo import haversine_km, spherical_mean
from geolocus.geo.cells import (
    MAX_LEVEL,
    AdaptiveCells,
    adaptive_cells,
    cell_spread_km,
    leaf_keys,
    semantic_cells,
)
from geolocus.geo.sphere import local_offset_km, offset_position, to_unit


def _world(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3000 photos: 2000 within ~20 km of Paris, 1000 spread over the whole sphere.
    Returns lat, lon and a mask of the Paris photos."""
    rng = np.random.default_rng(seed)
    dense = np.column_stack((48.85 + rng.normal(0, 0.1, 2000), 2.35 + rng.normal(0, 0.15, 2000)))
    z = rng.uniform(-1, 1, 1000)
    sparse = np.column_stack((np.degrees(np.arcsin(z)), rng.uniform(-180, 180, 1000)))
    pts = np.vstack((dense, sparse))
    return pts[:, 0], pts[:, 1], np.r_[np.ones(2000, bool), np.zeros(1000, bool)]


def test_leaf_keys_cover_the_six_faces_and_nest():
    # one point on each face's centre: the 6 faces in S2's order
    pts = [(0, 0), (0, 90), (90, 0), (0, 180), (0, -90), (-90, 0)]
    keys = leaf_keys([p[0] for p in pts], [p[1] for p in pts])
    assert list(keys >> (2 * MAX_LEVEL)) == [0, 1, 2, 3, 4, 5]
    # nearby points share long prefixes, distant ones do not
    a, b, c = leaf_keys([48.85, 48.8501, -33.0], [2.35, 2.3501, 151.0])
    common = lambda x, y: 64 - int(x ^ y).bit_length()  # noqa: E731
    assert common(a, b) > common(a, c) + 20


def test_adaptive_cells_respect_the_limits_and_assign_every_photo_once():
    lat, lon, _ = _world()
    cells = adaptive_cells(lat, lon, min_photos=5, max_photos=100)
    assert np.all(cells.counts >= 5) and np.all(cells.counts <= 100)
    keys = leaf_keys(lat, lon)
    inside = (cells.lo[None, :] <= keys[:, None]) & (keys[:, None] < cells.hi[None, :])
    assert inside.sum(axis=1).max() == 1  # ranges are disjoint: never two cells
    # counts are the photos inside each range; photos outside every range were dropped
    assert np.array_equal(inside.sum(axis=0), cells.counts)
    a = cells.assign(lat, lon)
    assert a.shape == lat.shape and a.min() >= 0 and a.max() < len(cells)
    kept = inside.any(axis=1)
    assert np.array_equal(a[kept], np.argmax(inside[kept], axis=1))
    # a dropped photo goes to the nearest centroid
    d_all = haversine_km(lat[~kept, None], lon[~kept, None], *cells.centroids.T[:, None, :])
    assert np.array_equal(a[~kept], np.argmin(d_all, axis=1))
    # each centroid is the spherical mean of its photos
    i = int(np.argmax(cells.counts))
    m = spherical_mean(lat[kept & (a == i)], lon[kept & (a == i)])
    assert haversine_km(*m, *cells.centroids[i]) < 1e-6
    assert len(np.unique(cells.ids)) == len(cells)


def test_adaptive_cells_split_where_photos_are_dense():
    lat, lon, paris = _world()
    cells = adaptive_cells(lat, lon, min_photos=5, max_photos=100)
    a = cells.assign(lat, lon)
    levels = cells.levels
    assert levels[a[paris]].min() > levels[a[~paris]].max() - 1
    assert levels[a[paris]].mean() > levels[a[~paris]].mean() + 3
    # Paris' cells are small: their corners lie within ~100 km of their centroid
    corners = cells.bounds()
    ci = np.unique(a[paris])
    far = haversine_km(corners[ci, :, 0], corners[ci, :, 1], *cells.centroids[ci].T[:, :, None])
    assert np.median(far) < 100
    # and every photo lies inside its cell: on the same side of its four great-circle edges
    kept_rows = np.flatnonzero(cells.counts[a] > 0)
    c = to_unit(corners[a[kept_rows], :, 0], corners[a[kept_rows], :, 1])  # (M, 4, 3)
    p = to_unit(lat[kept_rows], lon[kept_rows])
    sides = np.stack(
        [np.einsum("md,md->m", np.cross(c[:, k], c[:, (k + 1) % 4]), p) for k in range(4)], 1
    )
    same = np.all(sides >= -1e-12, axis=1) | np.all(sides <= 1e-12, axis=1)
    inside = (cells.lo[a] <= leaf_keys(lat, lon)) & (leaf_keys(lat, lon) < cells.hi[a])
    assert np.all(same[inside[kept_rows]])
    assert inside.mean() > 0.9


def test_adaptive_cells_bad_input_and_rebuild():
    lat, lon, _ = _world()
    with pytest.raises(InputError, match="min_photos <= max_photos"):
        adaptive_cells(lat, lon, min_photos=10, max_photos=5)
    with pytest.raises(InputError, match="lower min_photos"):
        adaptive_cells(lat[:3], lon[:3], min_photos=4, max_photos=5)
    with pytest.raises(InputError, match="invalid"):
        adaptive_cells([91.0], [0.0], 1, 2)
    cells = adaptive_cells(lat, lon, 5, 100)
    again = AdaptiveCells(cells.lo, cells.hi, cells.centroids, cells.counts)
    assert np.array_equal(again.assign(lat, lon), cells.assign(lat, lon))
    with pytest.raises(InputError, match="sorted and disjoint"):
        AdaptiveCells(cells.lo[::-1], cells.hi[::-1], cells.centroids, cells.counts)


def test_one_spot_cannot_be_split_beyond_the_deepest_level():
    cells = adaptive_cells(np.full(50, 10.0), np.full(50, 20.0), 1, 10)
    assert len(cells) == 1 and cells.counts[0] == 50 and cells.levels[0] == MAX_LEVEL


def _areas_world(seed: int = 0):
    """A big area (1200 photos in 4 clusters ~300 km apart), three middle-sized areas and
    two tiny ones (3 photos each)."""
    rng = np.random.default_rng(seed)
    parts, areas = [], []
    for la, lo in [(40, 0), (43, 0), (40, 4), (43, 4)]:
        parts.append(np.column_stack((la + rng.normal(0, 0.2, 300), lo + rng.normal(0, 0.2, 300))))
        areas += [1] * 300
    for a, (la, lo) in enumerate([(10, 10), (-20, 30), (50, 100)], start=2):
        parts.append(np.column_stack((la + rng.normal(0, 1, 80), lo + rng.normal(0, 1, 80))))
        areas += [a] * 80
    for a, (la, lo) in enumerate([(10.5, 12), (-20, 33)], start=9):
        parts.append(np.column_stack((np.full(3, la), np.full(3, lo))))
        areas += [a] * 3
    pts = np.vstack(parts)
    return pts[:, 0], pts[:, 1], np.array(areas)


def test_semantic_cells_merge_small_areas_and_split_large_ones():
    lat, lon, areas = _areas_world()
    cells = semantic_cells(lat, lon, areas, min_photos=50, max_photos=400, seed=0)
    assert cells.labels.shape == lat.shape  # one cell per photo
    assert np.all(cells.counts >= 50) and np.all(cells.counts <= 400)
    assert cells.counts.sum() == len(lat)
    # the big area was split, the middle ones kept whole, the tiny ones merged into the
    # nearest middle one (area 9 -> area 2 near (10, 10), area 10 -> area 3 near (-20, 30))
    big = cells.labels[areas == 1]
    assert len(np.unique(big)) >= 3
    for small, host in ((9, 2), (10, 3)):
        assert len(np.unique(cells.labels[areas == small])) == 1
        assert cells.labels[areas == small][0] == cells.labels[areas == host][0]
    assert len(np.unique(cells.labels[areas == 4])) == 1
    # centroids are the mean positions of the cells' photos; assign = nearest centroid
    for c in range(len(cells)):
        m = spherical_mean(lat[cells.labels == c], lon[cells.labels == c])
        assert haversine_km(*m, *cells.centroids[c]) < 1e-6
    a = cells.assign(cells.centroids[:, 0], cells.centroids[:, 1])
    assert np.array_equal(a, np.arange(len(cells)))


def test_semantic_cells_reach_the_target_count_without_optics():
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(30, 50, 5000), rng.uniform(-10, 30, 5000)
    cells = semantic_cells(lat, lon, np.zeros(5000, int), 100, 300, optics_sample=0)
    assert np.all((cells.counts >= 100) & (cells.counts <= 300))
    assert 5000 / 300 <= len(cells) <= 5000 / 100
    with pytest.raises(InputError, match="one area per photo"):
        semantic_cells(lat, lon, np.zeros(3, int), 1, 2)


def test_local_offsets_invert_and_cell_spread():
    lat0, lon0 = np.array([48.85, -33.9, 0.0, 70.0]), np.array([2.35, 151.2, 179.9, -20.0])
    lat, lon = np.array([49.0, -34.5, 0.5, 71.0]), np.array([2.0, 150.0, -179.5, 10.0])
    east, north = local_offset_km(lat0, lon0, lat, lon)
    assert np.allclose(np.hypot(east, north), haversine_km(lat0, lon0, lat, lon))
    assert east[0] < 0 < north[0] and east[2] > 0  # west and north of Paris; across 180°
    back = offset_position(lat0, lon0, east, north)
    assert np.allclose(back[0], lat, atol=1e-9) and np.allclose(back[1], lon, atol=1e-9)
    spread = cell_spread_km([0.0, 0.0, 10.0], [0.0, 2.0, 0.0], np.array([0, 0, 1]),
                            np.array([[0.0, 1.0], [10.0, 0.0]]))  # fmt: skip
    assert spread[0] == pytest.approx(haversine_km(0, 0, 0, 1)) and spread[1] == 0.0
