"""Self-contained HTML maps of a prediction: one file that opens offline in any browser.

The page inlines Leaflet 1.9.4 (BSD-2-Clause, ``assets/LICENSE-leaflet.txt``, from the
npm package ``leaflet``, source map comment removed), Natural Earth country outlines
(:mod:`geolocus.viz.outline`: 1:110m for the world, 1:50m near the points) and the
data, so it needs no network: a file of about 0.4-0.7 MB. OpenStreetMap tiles are an
overlay the reader may switch on when online; they are off by default, so opening
the file fetches nothing.

Data reaches the page as JSON inside ``<script type="application/json">`` with
``<``, ``>`` and ``&`` escaped, and the page script writes user strings with
``textContent`` only, so a place name or photo id cannot inject markup.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from geolocus.errors import GeolocusError
from geolocus.files import write_text_atomic
from geolocus.geo import haversine_km
from geolocus.places import Gazetteer
from geolocus.viz.outline import asset_text, detail_geojson, world_geojson_text
from geolocus.viz.points import Guess, as_guesses, as_points

#: Tile layer offered (off by default) for readers who are online.
OSM_TILES = {
    "url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
    "attribution": '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a>'
    " contributors",
}
_LOW, _HIGH = np.array([0xFE, 0xE0, 0x8B]), np.array([0xD7, 0x30, 0x27])


def _json_for_script(obj: Any) -> str:
    """JSON that cannot end its ``<script>`` element or open a comment."""
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _unwrap(lon: float, ref: float) -> float:
    """``lon`` moved by whole turns to within 180° of ``ref`` (keeps points across the
    antimeridian next to each other on the flat map)."""
    return ref + ((lon - ref + 180.0) % 360.0) - 180.0


def confidence_colour(t: float) -> str:
    r, g, b = np.rint(_LOW + (_HIGH - _LOW) * float(np.clip(t, 0.0, 1.0))).astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


#: Beyond this distance from the nearest named place a label says how far it is.
NEAR_KM = 25.0
#: A heatmap shows at most this many locations, the most probable, and none below this
#: fraction of the most probable one (invisible on the map, and megabytes of page).
HEAT_POINTS = 20000
HEAT_FLOOR = 1e-4


def _heat_records(heat: Any, ref: float) -> list[list[float]]:
    """``(coords (N, 2), probs (N,))`` as ``[lat, lon shown, p]`` triples, most probable
    first (see :data:`HEAT_POINTS`)."""
    if heat is None:
        return []
    coords = as_points(heat[0], "heatmap locations")
    p = np.asarray(heat[1], dtype=float).reshape(-1)
    if len(p) != len(coords):
        raise ValueError(f"{len(p)} heatmap probabilities for {len(coords)} locations")
    if len(p) == 0 or not np.isfinite(p).all():
        return []
    idx = np.argsort(-p, kind="stable")[:HEAT_POINTS]
    idx = idx[p[idx] >= HEAT_FLOOR * p[idx[0]]]
    return [
        [
            round(float(coords[i, 0]), 4),
            round(_unwrap(float(coords[i, 1]), ref), 4),
            float(f"{p[i]:.4g}"),
        ]
        for i in idx
    ]


def _place_labels(lat: list[float], lon: list[float]) -> list[str | None]:
    """Offline place names ("Kyoto, Japan", or "310 km from Taiohae, ..." at sea), or
    None each if the gazetteer is not installed."""
    if not lat:
        return []
    try:
        places = Gazetteer.load().reverse_geocode(lat, lon)
    except GeolocusError:
        return [None] * len(lat)
    return [
        p.label if p.distance_km <= NEAR_KM else f"{p.distance_km:.0f} km from {p.label}"
        for p in places
    ]


def _guess_records(
    guesses: list[Guess], truth: np.ndarray | None, ref: float, place_names: bool
) -> list[dict[str, Any]]:
    conf = [g.confidence for g in guesses]
    known = [c for c in conf if c is not None]
    probs = bool(known) and all(0.0 <= c <= 1.0 for c in known)
    top = max(known) if known and max(known) > 0 else None
    labels: list[str | None] = [g.label for g in guesses]
    if place_names:
        missing = [i for i, lb in enumerate(labels) if lb is None]
        found = _place_labels([guesses[i].lat for i in missing], [guesses[i].lon for i in missing])
        for i, lb in zip(missing, found, strict=True):
            labels[i] = lb
    out = []
    for rank, (g, label) in enumerate(zip(guesses, labels, strict=True), start=1):
        if g.confidence is not None and top is not None:
            t = max(g.confidence, 0.0) / top
        else:  # no confidences: fade by rank
            t = 1.0 / rank
        if g.confidence is None:
            text = None
        elif probs:
            text = f"{100 * g.confidence:.1f} %"
        else:
            text = f"{g.confidence:.4g} (score)"
        to_truth = None
        if truth is not None:
            to_truth = float(haversine_km(g.lat, g.lon, truth[0], truth[1]))
        out.append(
            {
                "rank": rank,
                "lat": g.lat,
                "lon": g.lon,
                "lon_shown": _unwrap(g.lon, ref),
                "label": label,
                "confidence": g.confidence,
                "confidence_text": text,
                "radius_km": g.radius_km,
                "to_truth_km": to_truth,
                "color": confidence_colour(0.15 + 0.85 * t),
                "size": round(6.0 + 9.0 * float(np.sqrt(t)), 2),
            }
        )
    return out


def _neighbour_records(
    pts: np.ndarray, ids: Any, top: Guess | None, ref: float, what: str
) -> list[dict[str, Any]]:
    if ids is not None:
        ids = [str(i) for i in np.asarray(ids, dtype=object).ravel()]
        if len(ids) != len(pts):
            raise ValueError(f"{len(ids)} {what} ids for {len(pts)} {what}")
    out = []
    for i, (la, lo) in enumerate(pts):
        out.append(
            {
                "lat": float(la),
                "lon": float(lo),
                "lon_shown": _unwrap(float(lo), ref),
                "id": None if ids is None else ids[i],
                "to_top_km": None if top is None else float(haversine_km(la, lo, top.lat, top.lon)),
            }
        )
    return out


def map_html(
    guesses: Any,
    neighbours: Any = None,
    truth: Any = None,
    *,
    far: Any = None,
    confidence: Any = None,
    neighbour_ids: Any = None,
    far_ids: Any = None,
    title: str = "geolocus: where was this photo taken?",
    place_names: bool = True,
    tiles: dict[str, str] | None = None,
    detail: bool = True,
    heat: Any = None,
) -> str:
    """The HTML text of the map (see :func:`render_map` for the arguments)."""
    gs = as_guesses(guesses, confidence)
    near_pts = as_points(neighbours, "neighbours")
    far_pts = as_points(far, "far neighbours")
    truth_pt = None if truth is None else as_points(truth, "truth")[0]
    ref = gs[0].lon if gs else (float(truth_pt[1]) if truth_pt is not None else 0.0)
    top = gs[0] if gs else None
    truth_rec = None
    if truth_pt is not None:
        la, lo = float(truth_pt[0]), float(truth_pt[1])
        truth_rec = {
            "lat": la,
            "lon": lo,
            "lon_shown": _unwrap(lo, ref),
            "label": _place_labels([la], [lo])[0] if place_names else None,
            "error_km": None if top is None else float(haversine_km(la, lo, top.lat, top.lon)),
        }
    data: dict[str, Any] = {
        "guesses": _guess_records(gs, truth_pt, ref, place_names),
        "near": _neighbour_records(near_pts, neighbour_ids, top, ref, "neighbour"),
        "far": _neighbour_records(far_pts, far_ids, top, ref, "far neighbour"),
        "truth": truth_rec,
        "heat": _heat_records(heat, ref),
        "tiles": dict(tiles or OSM_TILES),
        "credits": ["Place names: GeoNames (CC BY 4.0)"] if place_names else [],
    }
    shown = [(g["lat"], g["lon_shown"]) for g in data["guesses"]]
    shown += [(p["lat"], p["lon_shown"]) for p in data["near"]]
    if truth_rec is not None:
        shown.append((truth_rec["lat"], truth_rec["lon_shown"]))
    fine = None
    if detail and shown:
        fine = detail_geojson([p[0] for p in shown], [p[1] for p in shown])
    meta = [f"{len(gs)} guess{'es' if len(gs) != 1 else ''}"]
    if len(near_pts):
        meta.append(f"{len(near_pts)} neighbours")
    if len(far_pts):
        meta.append(f"{len(far_pts)} far")
    if data["heat"]:
        meta.append(f"heatmap of {len(data['heat'])} locations")
    if truth_rec is not None:
        meta.append("true location shown")
    if truth_rec is not None and truth_rec["error_km"] is not None:
        meta.append(f"error of guess 1: {truth_rec['error_km']:.1f} km")
    t = html.escape(str(title))
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="generator" content="geolocus">',
            f"<title>{t}</title>",
            f"<style>\n{asset_text('leaflet.css')}\n</style>",
            f"<style>\n{asset_text('geolocus-map.css')}\n</style>",
            "</head><body>",
            f'<div id="gl-header"><h1>{t}</h1>'
            f'<span class="gl-meta">{html.escape(" · ".join(meta))}</span></div>',
            '<div id="map"></div>',
            f'<script type="application/json" id="geolocus-data">{_json_for_script(data)}</script>',
            f'<script type="application/json" id="geolocus-world">{world_geojson_text()}</script>',
            '<script type="application/json" id="geolocus-detail">'
            f"{_json_for_script(fine)}</script>",
            f"<script>\n{asset_text('leaflet.js')}\n</script>",
            f"<script>\n{asset_text('geolocus-map.js')}\n</script>",
            "</body></html>",
            "",
        ]
    )


def render_map(
    guesses: Any,
    neighbours: Any = None,
    truth: Any = None,
    *,
    path: str | os.PathLike[str],
    far: Any = None,
    confidence: Any = None,
    neighbour_ids: Any = None,
    far_ids: Any = None,
    title: str = "geolocus: where was this photo taken?",
    place_names: bool = True,
    tiles: dict[str, str] | None = None,
    detail: bool = True,
    heat: Any = None,
) -> Path:
    """Write a self-contained HTML map to ``path`` (atomically) and return the path.

    - ``guesses``: the top-k candidates, best first: a ``(k, 2)`` array of (lat, lon)
      with ``confidence`` (k,), or records with ``lat``, ``lon`` and optional
      ``confidence``/``score``, ``radius_km`` (drawn as a dashed circle) and ``label``.
      Marker size and colour grow with confidence; each has a popup.
    - ``neighbours`` / ``far``: ``(n, 2)`` retrieved neighbours (small dots) and far
      ("dissimilar") neighbours (hollow dots), with optional ``neighbour_ids``/``far_ids``.
    - ``truth``: the true (lat, lon), for benchmarks; a dashed line joins it to guess 1.
    - ``place_names``: label unlabelled guesses and the truth with
      :mod:`geolocus.places` (offline).
    - ``tiles``: ``{"url", "attribution"}`` of the optional online tile layer (OSM).
    - ``detail``: also embed Natural Earth 1:50m coastlines of the countries near the
      points (drawn from zoom 4 on; about 0.05-0.3 MB more), unless the points span
      more than 60°.
    - ``heat``: ``(coords (N, 2), probs (N,))``, a model's probability of every location
      of its gallery, drawn as a heat layer under the guesses (offline, on a canvas; the
      :data:`HEAT_POINTS` most probable).
    """
    text = map_html(
        guesses,
        neighbours,
        truth,
        far=far,
        confidence=confidence,
        neighbour_ids=neighbour_ids,
        far_ids=far_ids,
        title=title,
        place_names=place_names,
        tiles=tiles,
        detail=detail,
        heat=heat,
    )
    return write_text_atomic(path, text)
