"""Cells on the sphere for the classification heads: PlaNet's adaptive cells and PIGEON's
semantic geocells (numpy, scipy and scikit-learn; no torch).

Adaptive cells (:func:`adaptive_cells`, PlaNet, Weyand et al. 2016) are S2 cells in
all but their numbering. As in S2, a point's unit vector is projected onto the face
of the circumscribed cube it points to (faces 0–5, S2's face and (u, v) axes), each
face coordinate goes through S2's quadratic transform (which makes cells of one level
nearly equal in area), and each face is cut into a quadtree: a level-``l`` cell is one
of the ``4**l`` squares of its face. S2 numbers the squares along a Hilbert curve;
here they follow a Morton (Z-order) curve, which is simpler to compute in numpy and
serves the same purpose — a cell is a contiguous range of 64-bit leaf keys, so a
point is assigned by one binary search. Cell ids therefore differ from S2's tokens.
Like PlaNet, the tree is refined where photos are dense: a cell holding more than
``max_photos`` photos is split into its four children, and cells left with fewer
than ``min_photos`` are dropped (a point falling in a dropped or empty cell is
assigned to the kept cell with the nearest centroid).

Semantic geocells (:func:`semantic_cells`, PIGEON, Haas et al. 2024) start from the
photos' administrative areas, merge the areas holding fewer than ``min_photos`` into
their nearest neighbour area and split those holding more than ``max_photos`` by
OPTICS clustering of their photos. The areas themselves come from the caller
(offline: :meth:`geolocus.places.Gazetteer.admin_area_of`, the admin-1 area of the
nearest GeoNames populated place, since no boundary polygons are installed).

Every cell answers with the mean position of its training photos (its centroid).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from geolocus.errors import InputError
from geolocus.geo.sphere import from_unit, haversine_km, to_unit, validate_latlon

#: Depth of the leaf keys: 3 face bits and 2 × 24 position bits (leaf cells of ~1 m).
MAX_LEVEL = 24
_FACE_SHIFT = 2 * MAX_LEVEL
_SIDE = 1 << MAX_LEVEL


# ----------------------------------------------------------------------- cube faces (S2)


def _face_uv(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S2's face (0–5) and face coordinates (u, v) in [-1, 1] of unit vectors ``(N, 3)``."""
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    axis = np.argmax(np.abs(xyz), axis=1)
    major = xyz[np.arange(len(xyz)), axis]
    face = axis + 3 * (major < 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cases = [face == f for f in range(6)]
        u = np.select(cases, [y / x, -x / y, -x / z, z / x, z / y, -y / z])
        v = np.select(cases, [z / x, z / y, -y / z, y / x, -x / y, -x / z])
    return face.astype(np.int64), u, v


def _uv_to_xyz(face: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_face_uv` (not normalised)."""
    one = np.ones_like(u)
    cases = [face == f for f in range(6)]
    x = np.select(cases, [one, -u, -u, -one, v, v])
    y = np.select(cases, [u, one, -v, -v, -one, u])
    z = np.select(cases, [v, v, one, -u, -u, -one])
    return np.stack((x, y, z), axis=-1)


def _uv_to_st(u: np.ndarray) -> np.ndarray:
    """S2's quadratic transform [-1, 1] -> [0, 1]."""
    return np.where(u >= 0, 0.5 * np.sqrt(1 + 3 * np.abs(u)), 1 - 0.5 * np.sqrt(1 + 3 * np.abs(u)))


def _st_to_uv(s: np.ndarray) -> np.ndarray:
    return np.where(s >= 0.5, (4 * s * s - 1) / 3, (1 - 4 * (1 - s) ** 2) / 3)


def _spread(x: np.ndarray) -> np.ndarray:
    """Put the bits of ``x`` (< 2**32) at the even positions (Morton interleaving)."""
    x = x.astype(np.uint64) & np.uint64(0xFFFFFFFF)
    for shift, mask in (
        (16, 0x0000FFFF0000FFFF),
        (8, 0x00FF00FF00FF00FF),
        (4, 0x0F0F0F0F0F0F0F0F),
        (2, 0x3333333333333333),
        (1, 0x5555555555555555),
    ):
        x = (x | (x << np.uint64(shift))) & np.uint64(mask)
    return x


def _compact(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_spread`: the even bits of ``x`` gathered."""
    x = x.astype(np.uint64) & np.uint64(0x5555555555555555)
    for shift, mask in (
        (1, 0x3333333333333333),
        (2, 0x0F0F0F0F0F0F0F0F),
        (4, 0x00FF00FF00FF00FF),
        (8, 0x0000FFFF0000FFFF),
        (16, 0x00000000FFFFFFFF),
    ):
        x = (x | (x >> np.uint64(shift))) & np.uint64(mask)
    return x


def leaf_keys(lat: Any, lon: Any) -> np.ndarray:
    """64-bit key of each point's leaf cell (level :data:`MAX_LEVEL`): face, then the Morton
    code of its (s, t) square. A level-``l`` cell is the key range sharing its top
    ``3 + 2l`` bits."""
    lat_a = np.asarray(lat, dtype=float).ravel()
    lon_a = np.asarray(lon, dtype=float).ravel()
    validate_latlon(lat_a, lon_a)
    face, u, v = _face_uv(to_unit(lat_a, lon_a))
    i = np.clip((_uv_to_st(u) * _SIDE).astype(np.int64), 0, _SIDE - 1)
    j = np.clip((_uv_to_st(v) * _SIDE).astype(np.int64), 0, _SIDE - 1)
    morton = _spread(i) | (_spread(j) << np.uint64(1))
    return (face << _FACE_SHIFT) | morton.astype(np.int64)


def _unit_mean(xyz: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """``(n, 2)`` spherical mean (lat, lon) of the points of each label."""
    s = np.stack([np.bincount(labels, weights=xyz[:, d], minlength=n) for d in range(3)], -1)
    return np.column_stack(from_unit(s))


def cell_spread_km(lat: Any, lon: Any, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Root-mean-square distance in km of each cell's photos from its centroid (0 for a cell
    without photos): the cell's size, which normalises the hybrid head's offsets."""
    labels = np.asarray(labels, dtype=np.int64)
    d = haversine_km(lat, lon, centroids[labels, 0], centroids[labels, 1])
    n = len(centroids)
    cnt = np.bincount(labels, minlength=n)
    ss = np.bincount(labels, weights=np.square(d), minlength=n)
    return np.sqrt(ss / np.maximum(cnt, 1))


class _Nearest:
    """Nearest centroid by chord distance between unit vectors (a k-d tree, built once)."""

    def __init__(self, centroids: np.ndarray) -> None:
        self.tree = cKDTree(to_unit(centroids[:, 0], centroids[:, 1]))

    def __call__(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        _, idx = self.tree.query(to_unit(lat, lon).reshape(-1, 3))
        return np.asarray(idx, dtype=np.int64)


# ----------------------------------------------------------------------- adaptive cells


@dataclass
class AdaptiveCells:
    """Adaptive quadtree cells (see the module docstring): cell ``c`` holds the leaf keys
    ``[lo[c], hi[c])``; ``lo`` is sorted and the ranges are disjoint."""

    lo: np.ndarray  # int64 (C,)
    hi: np.ndarray  # int64 (C,)
    centroids: np.ndarray  # float64 (C, 2) mean position of the cell's training photos
    counts: np.ndarray  # int64 (C,) training photos inside the cell
    _nearest: _Nearest | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.lo = np.asarray(self.lo, dtype=np.int64)
        self.hi = np.asarray(self.hi, dtype=np.int64)
        self.centroids = np.asarray(self.centroids, dtype=np.float64).reshape(-1, 2)
        self.counts = np.asarray(self.counts, dtype=np.int64)
        if len(self.lo) == 0:
            raise InputError("no cell: every cell held fewer photos than the minimum")
        if np.any(np.diff(self.lo) <= 0) or np.any(self.hi[:-1] > self.lo[1:]):
            raise InputError("adaptive cells: ranges must be sorted and disjoint")

    def __len__(self) -> int:
        return len(self.lo)

    @property
    def levels(self) -> np.ndarray:
        """Quadtree level of each cell (0: a whole cube face)."""
        span = (self.hi - self.lo).astype(np.float64)
        return MAX_LEVEL - np.round(np.log2(span) / 2).astype(np.int64)

    @property
    def ids(self) -> np.ndarray:
        """A unique int64 id per cell, S2's convention: the first leaf key times two plus
        the number of leaves (so a cell and its children never share an id)."""
        return 2 * self.lo + (self.hi - self.lo)

    def bounds(self) -> np.ndarray:
        """``(C, 4, 2)`` (lat, lon) corners of each cell (great-circle edges between them)."""
        face = self.lo >> _FACE_SHIFT
        morton = (self.lo & ((1 << _FACE_SHIFT) - 1)).astype(np.uint64)
        i0, j0 = (
            _compact(morton).astype(np.int64),
            _compact(morton >> np.uint64(1)).astype(np.int64),
        )
        size = np.left_shift(1, MAX_LEVEL - self.levels)
        out = np.empty((len(self), 4, 2))
        for k, (di, dj) in enumerate(((0, 0), (1, 0), (1, 1), (0, 1))):
            s = (i0 + di * size) / _SIDE
            t = (j0 + dj * size) / _SIDE
            xyz = _uv_to_xyz(face, _st_to_uv(s), _st_to_uv(t))
            out[:, k, 0], out[:, k, 1] = from_unit(xyz)
        return out

    def assign(self, lat: Any, lon: Any) -> np.ndarray:
        """The cell of each point, ``(N,)`` int64: the cell containing it, or, for a point in
        a dropped or empty part of the sphere, the cell with the nearest centroid."""
        lat_a = np.asarray(lat, dtype=float).ravel()
        lon_a = np.asarray(lon, dtype=float).ravel()
        keys = leaf_keys(lat_a, lon_a)
        idx = np.searchsorted(self.lo, keys, side="right") - 1
        inside = (idx >= 0) & (keys < self.hi[np.maximum(idx, 0)])
        if not inside.all():
            if self._nearest is None:
                self._nearest = _Nearest(self.centroids)
            out = ~inside
            idx[out] = self._nearest(lat_a[out], lon_a[out])
        return idx


def adaptive_cells(
    lat: Any,
    lon: Any,
    min_photos: int,
    max_photos: int,
    start_level: int = 0,
    max_level: int = MAX_LEVEL,
) -> AdaptiveCells:
    """PlaNet's partition of the photos at ``(lat, lon)``: from the cells of ``start_level``
    (0: the six cube faces), split every cell holding more than ``max_photos`` photos into
    its four children until none does (or ``max_level`` is reached: photos at one spot
    cannot be split), then drop the cells with fewer than ``min_photos``.

    Linear in the number of photos per level (one sort, then run lengths of key prefixes):
    a million photos take a few seconds.
    """
    if not 1 <= min_photos <= max_photos:
        raise InputError(f"need 1 <= min_photos <= max_photos, got {min_photos}, {max_photos}")
    if not 0 <= start_level <= max_level <= MAX_LEVEL:
        raise InputError(f"need 0 <= start_level <= max_level <= {MAX_LEVEL}")
    lat_a = np.asarray(lat, dtype=float).ravel()
    lon_a = np.asarray(lon, dtype=float).ravel()
    if len(lat_a) == 0:
        raise InputError("no photos to build cells from")
    keys = np.sort(leaf_keys(lat_a, lon_a))
    los, his, cnts = [], [], []
    active = keys
    for level in range(start_level, max_level + 1):
        shift = 2 * (MAX_LEVEL - level)
        pre = active >> shift
        starts = np.flatnonzero(np.r_[True, pre[1:] != pre[:-1]])
        cnt = np.diff(np.r_[starts, len(pre)])
        prefix = pre[starts]
        done = (cnt <= max_photos) | (level == max_level)
        los.append(prefix[done] << shift)
        his.append((prefix[done] + 1) << shift)
        cnts.append(cnt[done])
        active = active[np.repeat(~done, cnt)]
        if len(active) == 0:
            break
    lo, hi, cnt = np.concatenate(los), np.concatenate(his), np.concatenate(cnts)
    keep = cnt >= min_photos
    order = np.argsort(lo[keep])
    lo, hi, cnt = lo[keep][order], hi[keep][order], cnt[keep][order]
    if len(lo) == 0:
        raise InputError(
            f"no cell holds {min_photos} photos or more ({len(lat_a)} photos): lower min_photos"
        )
    # each photo's cell among the kept ones (photos of dropped cells take no part in centroids)
    pk = leaf_keys(lat_a, lon_a)
    idx = np.searchsorted(lo, pk, side="right") - 1
    inside = (idx >= 0) & (pk < hi[np.maximum(idx, 0)])
    xyz = to_unit(lat_a[inside], lon_a[inside])
    centroids = _unit_mean(xyz, idx[inside], len(lo))
    return AdaptiveCells(lo, hi, centroids, cnt)


# ----------------------------------------------------------------------- semantic cells


@dataclass
class SemanticCells:
    """PIGEON-style geocells: each training photo's cell (``labels``), each cell's centroid
    (mean position of its photos) and count. New points are assigned to the cell with the
    nearest centroid (no boundary polygons offline)."""

    labels: np.ndarray  # int64 (N,) cell of each training photo
    centroids: np.ndarray  # float64 (C, 2)
    counts: np.ndarray  # int64 (C,)
    _nearest: _Nearest | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.centroids)

    def assign(self, lat: Any, lon: Any) -> np.ndarray:
        """The cell with the nearest centroid of each point, ``(N,)`` int64."""
        if self._nearest is None:
            self._nearest = _Nearest(self.centroids)
        return self._nearest(np.asarray(lat, float).ravel(), np.asarray(lon, float).ravel())


def _merge_small(labels: np.ndarray, xyz: np.ndarray, min_photos: int) -> np.ndarray:
    """Merge every group of fewer than ``min_photos`` points into the group whose centroid
    is nearest its own, smallest groups first, until none is left (or one group remains).
    Returns consecutive labels 0..G-1."""
    uniq, lab = np.unique(labels, return_inverse=True)
    n = len(uniq)
    sums = np.stack([np.bincount(lab, weights=xyz[:, d], minlength=n) for d in range(3)], -1)
    count = np.bincount(lab, minlength=n).astype(np.int64)
    parent = np.arange(n)
    alive = np.ones(n, dtype=bool)
    for g in np.argsort(count, kind="stable"):
        if count[g] >= min_photos or alive.sum() <= 1:
            continue
        cent = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        sim = cent @ cent[g]
        sim[~alive] = -np.inf
        sim[g] = -np.inf
        t = int(np.argmax(sim))
        sums[t] += sums[g]
        count[t] += count[g]
        parent[g], alive[g] = t, False
    for g in range(n):  # resolve chains (a group merged into one merged later)
        r = g
        while parent[r] != r:
            r = parent[r]
        parent[g] = r
    return np.unique(parent[lab], return_inverse=True)[1].astype(np.int64)


def _optics_parts(
    lat: np.ndarray, lon: np.ndarray, sample: int, min_cluster: int, rng: np.random.Generator
) -> np.ndarray:
    """OPTICS (haversine) on a sample of at most ``sample`` points; every point takes the
    label of its nearest sampled point (OPTICS noise: one more part, "the rest")."""
    from sklearn.cluster import OPTICS  # imported here: sklearn takes ~1.5 s to import

    n = len(lat)
    rows = rng.choice(n, size=min(n, sample), replace=False) if n > sample else np.arange(n)
    m = len(rows)
    min_size = max(2, min(m // 2, int(np.ceil(m * min_cluster / n))))
    opt = OPTICS(
        min_samples=min(5, m - 1), min_cluster_size=min_size, metric="haversine", algorithm="brute"
    )
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "all reachability values are inf": no cluster
        lab = opt.fit_predict(np.radians(np.column_stack((lat[rows], lon[rows]))))
    lab = np.where(lab < 0, lab.max() + 1, lab)
    _, near = cKDTree(to_unit(lat[rows], lon[rows])).query(to_unit(lat, lon))
    return np.asarray(lab[near], dtype=np.int64)


def _kmeans_parts(xyz: np.ndarray, k: int, rng: np.random.Generator, iters: int = 10) -> np.ndarray:
    """Spherical k-means (unit vectors, cosine), the fallback when OPTICS finds no split."""
    centres = xyz[rng.choice(len(xyz), size=k, replace=False)]
    lab = np.zeros(len(xyz), dtype=np.int64)
    for _ in range(iters):
        lab = np.argmax(xyz @ centres.T, axis=1)
        s = np.stack([np.bincount(lab, weights=xyz[:, d], minlength=k) for d in range(3)], -1)
        norm = np.linalg.norm(s, axis=1, keepdims=True)
        centres = np.where(norm > 1e-12, s / np.maximum(norm, 1e-12), centres)
    return lab


def semantic_cells(
    lat: Any,
    lon: Any,
    areas: Any,
    min_photos: int,
    max_photos: int,
    optics_sample: int = 200,
    seed: int = 0,
) -> SemanticCells:
    """PIGEON's geocells from each photo's administrative area (``areas``: any hashable
    ints, one per photo): areas of fewer than ``min_photos`` photos are merged into their
    nearest area (by centroid), then areas of more than ``max_photos`` are split by OPTICS
    on a sample of ``optics_sample`` of their photos (0: skip OPTICS); parts still too large,
    or areas where OPTICS finds no structure, are split by spherical k-means into parts of
    about ``(min + max) / 2`` photos, and parts smaller than ``min_photos`` rejoin their
    nearest sibling. Photos at a single spot are never split,
    so such a cell may exceed ``max_photos``."""
    if not 1 <= min_photos <= max_photos:
        raise InputError(f"need 1 <= min_photos <= max_photos, got {min_photos}, {max_photos}")
    lat_a = np.asarray(lat, dtype=float).ravel()
    lon_a = np.asarray(lon, dtype=float).ravel()
    validate_latlon(lat_a, lon_a)
    area = np.asarray(areas).ravel()
    if len(area) != len(lat_a) or len(lat_a) == 0:
        raise InputError(f"need one area per photo, got {len(area)} for {len(lat_a)} photos")
    rng = np.random.default_rng(seed)
    xyz = to_unit(lat_a, lon_a)
    groups = _merge_small(area, xyz, min_photos)
    target = (min_photos + max_photos) / 2
    out = np.empty(len(lat_a), dtype=np.int64)
    n_cells = 0
    order = np.argsort(groups, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(groups))]
    # (rows, depth): OPTICS splits an area once (its cost grows fast with the sample);
    # parts still above the maximum are split further by k-means
    stack = [(order[bounds[g] : bounds[g + 1]], 0) for g in range(len(bounds) - 1)]
    while stack:
        rows, depth = stack.pop()
        if len(rows) <= max_photos:
            out[rows] = n_cells
            n_cells += 1
            continue
        part = np.zeros(len(rows), dtype=np.int64)
        if depth == 0 and optics_sample > 0:
            part = _optics_parts(lat_a[rows], lon_a[rows], optics_sample, min_photos, rng)
            part = _merge_small(part, xyz[rows], min_photos)
        if part.max() == 0:  # no OPTICS, or it found no split worth keeping
            k = min(max(int(np.ceil(len(rows) / target)), 2), len(rows))
            part = _merge_small(_kmeans_parts(xyz[rows], k, rng), xyz[rows], min_photos)
        if part.max() == 0:  # cannot be split (one spot): a cell above the maximum
            out[rows] = n_cells
            n_cells += 1
            continue
        srt = np.argsort(part, kind="stable")
        b = np.r_[0, np.cumsum(np.bincount(part))]
        stack += [(rows[srt[b[p] : b[p + 1]]], depth + 1) for p in range(len(b) - 1)]
    counts = np.bincount(out, minlength=n_cells)
    return SemanticCells(out, _unit_mean(xyz, out, n_cells), counts)


__all__ = [
    "MAX_LEVEL",
    "AdaptiveCells",
    "SemanticCells",
    "adaptive_cells",
    "cell_spread_km",
    "leaf_keys",
    "semantic_cells",
]
