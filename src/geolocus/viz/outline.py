"""The world's country outlines, offline: Natural Earth from vendored TopoJSON files.

Both files come from the npm package ``world-atlas`` 2.0.2 (ISC licence,
``assets/LICENSE-world-atlas.txt``), an unmodified TopoJSON redistribution of
Natural Earth's public-domain Admin 0 country boundaries, version 4.1.0:

- ``assets/countries-110m.json`` (1:110m, 177 countries, 108 kB): the whole world,
  drawn on every map;
- ``assets/countries-50m.json.gz`` (1:50m, 241 countries; the npm file gzipped,
  230 kB): finer coastlines, of which a map embeds only the polygons near its
  points (:func:`detail_geojson`) and shows them when zoomed in.

They are decoded here into GeoJSON, the format Leaflet draws, rather than
shipping second copies.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
from importlib import resources
from typing import Any

import numpy as np

#: Vendored TopoJSON (see the module docstring for their source and licence).
WORLD_TOPOJSON = "countries-110m.json"
DETAIL_TOPOJSON = "countries-50m.json.gz"
#: Largest span (degrees of latitude or longitude) of points that gets 1:50m detail.
DETAIL_MAX_SPAN = 60.0


def asset_text(name: str) -> str:
    """The text of a file in ``geolocus/viz/assets`` (package data)."""
    return resources.files("geolocus.viz").joinpath("assets", name).read_text(encoding="utf-8")


def _decode_arcs(topo: dict[str, Any], digits: int) -> list[list[tuple[float, float]]]:
    """Absolute (lon, lat) positions of every arc: TopoJSON stores quantised deltas."""
    t = topo.get("transform")
    arcs = []
    for arc in topo["arcs"]:
        a = np.asarray(arc, dtype=float).reshape(-1, 2)
        if t:
            a = np.cumsum(a, axis=0) * t["scale"] + t["translate"]
        arcs.append([tuple(p) for p in np.round(a, digits).tolist()])
    return arcs


def _ring(indices: list[int], arcs: list[list[tuple[float, float]]]) -> list[list[float]]:
    """Stitch arcs into one ring; ``~i`` (negative) means arc ``i`` reversed."""
    ring: list[tuple[float, float]] = []
    for k, i in enumerate(indices):
        pts = arcs[i] if i >= 0 else arcs[~i][::-1]
        ring.extend(pts if k == 0 else pts[1:])
    return _unwrap_ring([list(p) for p in ring])


def _unwrap_ring(ring: list[list[float]]) -> list[list[float]]:
    """Make a ring that crosses the antimeridian continuous in longitude.

    world-atlas keeps rings whole for spherical renderers, so Fiji or Chukotka jump
    from 180 to -180 and a flat map would draw a line across the world. Such a ring
    is rewritten with longitudes beyond ±180 (e.g. 177..181), which a flat map draws
    in place (the map draws the outlines again 360° either side). A ring around a
    pole (Antarctica) winds through 360° and is left as it is: on a flat map its
    jump closes it along the bottom edge, which is the right shape.
    """
    lon = [p[0] for p in ring]
    steps = [b - a for a, b in itertools.pairwise(lon)]
    if not any(abs(d) > 180 for d in steps):
        return ring
    shift, out = 0.0, [list(ring[0])]
    for d, p in zip(steps, ring[1:], strict=True):
        if d > 180:
            shift -= 360.0
        elif d < -180:
            shift += 360.0
        out.append([round(p[0] + shift, 6), p[1]])
    if abs(shift) > 1e-9:  # winds around a pole: keep the original
        return ring
    return out


def topojson_to_geojson(topo: dict[str, Any], obj: str, digits: int = 2) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the (Multi)Polygons of TopoJSON object ``obj``,
    coordinates rounded to ``digits`` decimals (2 ≈ 1 km, finer than the 1:110m data)."""
    arcs = _decode_arcs(topo, digits)
    features = []
    for g in topo["objects"][obj]["geometries"]:
        if g["type"] == "Polygon":
            coords: Any = [_ring(r, arcs) for r in g["arcs"]]
        elif g["type"] == "MultiPolygon":
            coords = [[_ring(r, arcs) for r in poly] for poly in g["arcs"]]
        else:  # points and lines do not occur in the outline files
            continue
        features.append(
            {
                "type": "Feature",
                "id": g.get("id"),
                "properties": dict(g.get("properties") or {}),
                "geometry": {"type": g["type"], "coordinates": coords},
            }
        )
    return {"type": "FeatureCollection", "features": features}


@functools.lru_cache(maxsize=1)
def world_geojson_text() -> str:
    """The 110m country outlines as compact GeoJSON text (cached; ~0.25 MB)."""
    topo = json.loads(asset_text(WORLD_TOPOJSON))
    return json.dumps(topojson_to_geojson(topo, "countries"), separators=(",", ":"))


def world_geojson() -> dict[str, Any]:
    """The 110m country outlines as a GeoJSON FeatureCollection (lon/lat order)."""
    return json.loads(world_geojson_text())


def feature_key(f: dict[str, Any]) -> str:
    """What identifies a country in both scales: its ISO numeric id, else its name."""
    return str(f.get("id") or f["properties"].get("name", ""))


@functools.lru_cache(maxsize=1)
def _detail_polygons() -> list[tuple[str, str, list[Any], tuple[float, float, float, float]]]:
    """(key, name, rings, bbox west/south/east/north) of every 1:50m polygon."""
    raw = resources.files("geolocus.viz").joinpath("assets", DETAIL_TOPOJSON).read_bytes()
    geo = topojson_to_geojson(json.loads(gzip.decompress(raw)), "countries")
    out = []
    for f in geo["features"]:
        g = f["geometry"]
        for poly in [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]:
            lon = [p[0] for p in poly[0]]
            lat = [p[1] for p in poly[0]]
            bbox = (min(lon), min(lat), max(lon), max(lat))
            out.append((feature_key(f), f["properties"].get("name", ""), poly, bbox))
    return out


def detail_geojson(
    lat: Any, lon: Any, margin: float = 3.0, max_span: float = DETAIL_MAX_SPAN
) -> dict[str, Any] | None:
    """1:50m polygons near the points (lat, lon sequences; lon may lie beyond ±180 when
    unwrapped), or None when the points span more than ``max_span`` degrees (the world
    map is then zoomed out, where 1:110m is enough). Polygons are whole, not clipped,
    and shifted by 360° where that puts them next to the points; each feature carries
    its country's ``key`` (:func:`feature_key`) so that the page can hide the coarse
    outline it replaces."""
    lat, lon = [float(v) for v in lat], [float(v) for v in lon]
    if not lat:
        return None
    s, n = min(lat) - margin, max(lat) + margin
    w, e = min(lon) - margin, max(lon) + margin
    if n - s > max_span + 2 * margin or e - w > max_span + 2 * margin:
        return None
    features = []
    for key, name, rings, (pw, ps, pe, pn) in _detail_polygons():
        if ps > n or pn < s:
            continue
        for off in (-360.0, 0.0, 360.0):
            if pw + off <= e and pe + off >= w:
                coords = [[[x + off, y] for x, y in r] for r in rings] if off else rings
                features.append(
                    {
                        "type": "Feature",
                        "properties": {"key": key, "name": name},
                        "geometry": {"type": "Polygon", "coordinates": coords},
                    }
                )
                break
    return {"type": "FeatureCollection", "features": features}
