"""A static map as SVG (no JavaScript): for reports, papers and thumbnails.

Draws the same things as :func:`geolocus.viz.render_map` on the Equal Earth
projection (:func:`geolocus.geo.equal_earth`), an equal-area world map; with
``extent="auto"`` the view is cropped to the points. Uncertainty radii are drawn
as true geodesic circles, projected.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from geolocus.files import write_text_atomic
from geolocus.geo import EARTH_RADIUS_KM, equal_earth
from geolocus.viz.html import confidence_colour
from geolocus.viz.outline import world_geojson
from geolocus.viz.points import as_guesses, as_points


def _xy(lat: Any, lon: Any, scale: float) -> tuple[np.ndarray, np.ndarray]:
    x, y = equal_earth(np.asarray(lat, float), np.asarray(lon, float))
    return np.asarray(x) * scale, -np.asarray(y) * scale  # SVG's y axis points down


def _geodesic_circle(lat: float, lon: float, radius_km: float, n: int = 72) -> np.ndarray:
    """``n`` points (lat, lon) at ``radius_km`` from the centre, by the direct formula."""
    d = radius_km / EARTH_RADIUS_KM
    th = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    p1, l1 = np.radians(lat), np.radians(lon)
    p2 = np.arcsin(np.sin(p1) * np.cos(d) + np.cos(p1) * np.sin(d) * np.cos(th))
    l2 = l1 + np.arctan2(np.sin(th) * np.sin(d) * np.cos(p1), np.cos(d) - np.sin(p1) * np.sin(p2))
    lon2 = (np.degrees(l2) + 180.0) % 360.0 - 180.0
    return np.stack([np.degrees(p2), lon2], axis=1)


def _path(rings: list[list[list[float]]], scale: float) -> str:
    parts = []
    for ring in rings:
        a = np.asarray(ring, float)
        x, y = _xy(a[:, 1], a[:, 0], scale)
        parts.append("M" + "L".join(f"{u:.1f},{v:.1f}" for u, v in zip(x, y, strict=True)) + "Z")
    return "".join(parts)


def svg_text(
    guesses: Any,
    neighbours: Any = None,
    truth: Any = None,
    *,
    far: Any = None,
    confidence: Any = None,
    title: str | None = None,
    width: int = 1000,
    extent: str = "auto",
) -> str:
    """The SVG text of a static map (arguments as :func:`render_svg`)."""
    gs = as_guesses(guesses, confidence)
    near, far_pts = as_points(neighbours, "neighbours"), as_points(far, "far neighbours")
    tr = None if truth is None else as_points(truth, "truth")
    scale = width / (2 * 2.7064)  # Equal Earth spans x in about [-2.7064, 2.7064]
    world = (-width / 2, -1.3173 * scale, width, 2 * 1.3173 * scale)
    pts = [np.array([[g.lat, g.lon] for g in gs]).reshape(-1, 2), near]
    if tr is not None:
        pts.append(tr)
    allp = np.concatenate(pts)
    if extent == "auto" and len(allp):
        x, y = _xy(allp[:, 0], allp[:, 1], scale)
        span = max(x.max() - x.min(), y.max() - y.min(), width / 12) * 1.3
        cx, cy = (x.max() + x.min()) / 2, (y.max() + y.min()) / 2
        w, h = span * 1.6, span
        box = (cx - w / 2, cy - h / 2, w, h)
    elif extent in ("auto", "world"):
        box = world
    else:
        raise ValueError(f"extent must be 'auto' or 'world', got {extent!r}")
    edge = np.linspace(-90.0, 90.0, 91)  # the map's outline: the ±180° meridians
    sphere = _path([[[180.0, a] for a in edge] + [[-180.0, a] for a in edge[::-1]]], scale)
    unit = box[2] / width  # user units per output pixel: keeps strokes and dots constant
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{round(width * box[3] / box[2])}" '
        f'viewBox="{box[0]:.1f} {box[1]:.1f} {box[2]:.1f} {box[3]:.1f}">',
        f'<clipPath id="gl-sphere"><path d="{sphere}"/></clipPath>',
        f'<path d="{sphere}" fill="#cfe2f0" stroke="#8c8c8c" stroke-width="{unit:.3f}"/>',
        f'<g fill="#f3f0e8" stroke="#8c8c8c" stroke-width="{0.7 * unit:.3f}" '
        'clip-path="url(#gl-sphere)">',
    ]
    if title:
        out.insert(1, f"<title>{escape(title)}</title>")
    for f in world_geojson()["features"]:
        geom = f["geometry"]
        polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        out.append(f'<path d="{"".join(_path(p, scale) for p in polys)}"/>')
    out.append("</g>")
    for g in gs:
        if g.radius_km:
            c = _geodesic_circle(g.lat, g.lon, g.radius_km)
            out.append(
                f'<path d="{_path([c[:, ::-1].tolist()], scale)}" fill="#d73027" '
                f'fill-opacity="0.08" stroke="#d73027" stroke-dasharray="{4 * unit:.2f}" '
                f'stroke-width="{unit:.3f}"/>'
            )
    for arr, style in ((far_pts, 'fill="none" stroke="#7b3294"'), (near, 'fill="#2c7bb6"')):
        if len(arr):
            x, y = _xy(arr[:, 0], arr[:, 1], scale)
            out += [
                f'<circle cx="{u:.2f}" cy="{v:.2f}" r="{3 * unit:.2f}" {style} '
                f'stroke-width="{unit:.2f}"/>'
                for u, v in zip(x, y, strict=True)
            ]
    known = [g.confidence for g in gs if g.confidence is not None]
    top = max(known) if known and max(known) > 0 else None
    for rank in range(len(gs), 0, -1):
        g = gs[rank - 1]
        t = g.confidence / top if (top and g.confidence is not None) else 1.0 / rank
        t = max(t, 0.0)
        (u,), (v,) = _xy([g.lat], [g.lon], scale)
        r = (6 + 9 * np.sqrt(t)) * unit
        tip = escape(f"guess {rank}: {g.label or ''} ({g.lat:.4f}, {g.lon:.4f})")
        fill = confidence_colour(0.15 + 0.85 * t)
        out.append(
            f'<circle cx="{u:.2f}" cy="{v:.2f}" r="{r:.2f}" fill="{fill}" '
            f'stroke="#3a0a0a" stroke-width="{1.2 * unit:.2f}"><title>{tip}</title></circle>'
            f'<text x="{u:.2f}" y="{v + 4 * unit:.2f}" font-size="{11 * unit:.2f}" '
            f'text-anchor="middle" fill="#fff" font-family="sans-serif" '
            f'font-weight="bold">{rank}</text>'
        )
    if tr is not None:
        (u,), (v,) = _xy(tr[:, 0], tr[:, 1], scale)
        out.append(
            f'<circle cx="{u:.2f}" cy="{v:.2f}" r="{7 * unit:.2f}" fill="#1a9641" stroke="#000" '
            f'stroke-width="{2 * unit:.2f}"><title>true location</title></circle>'
        )
    out.append("</svg>\n")
    return "\n".join(out)


def render_svg(
    guesses: Any,
    neighbours: Any = None,
    truth: Any = None,
    *,
    path: str | os.PathLike[str],
    far: Any = None,
    confidence: Any = None,
    title: str | None = None,
    width: int = 1000,
    extent: str = "auto",
) -> Path:
    """Write a static SVG map (atomically): guesses sized by confidence, neighbours,
    truth, on Natural Earth outlines; ``extent`` is "auto" (crop to the points) or
    "world". Arguments are as for :func:`geolocus.viz.render_map`."""
    text = svg_text(
        guesses,
        neighbours,
        truth,
        far=far,
        confidence=confidence,
        title=title,
        width=width,
        extent=extent,
    )
    return write_text_atomic(path, text)
