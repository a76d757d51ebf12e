"""Output formats of ``geolocus predict``: a table for people; JSON, CSV, GeoJSON for tools."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from geolocus.errors import InputError
from geolocus.pipeline.results import Prediction
from geolocus.viz import map_html, render_map

FORMATS = ("table", "json", "csv", "geojson")
CSV_FIELDS = (
    "image",
    "rank",
    "lat",
    "lon",
    "confidence",
    "uncertainty_km",
    "place",
    "country_code",
    "source",
    "exif_lat",
    "exif_lon",
    "exif_error_km",
    "error",
)


#: What the order of the guesses means (above a table; the README says it for the others).
ORDER_NOTE = (
    "guess 1 is the answer; the other places follow in stage 2's order, not by confidence "
    "(a place's share of the retrieved evidence)"
)


#: The same for a worldwide model alone (no database, no stage 2).
WORLD_ORDER_NOTE = "guesses by the model's probability, the most probable first"


def _pct(c: float | None) -> str:
    return "-" if c is None else f"{100 * c:.1f} %"


def _km(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def table_text(pred: Prediction) -> str:
    """One photo's answer as an aligned text block."""
    lines = [pred.image]
    if pred.error is not None:
        return f"{pred.image}\n  error: {pred.error}"
    head = ["#", "lat", "lon", "confidence", "± km", "place"]
    body = [
        [
            str(r),
            f"{g.lat:.4f}",
            f"{g.lon:.4f}",
            _pct(g.confidence),
            _km(g.uncertainty_km),
            g.label + ("" if g.source == "retrieval" else f"  [{g.source}]"),
        ]
        for r, g in enumerate(pred.guesses, start=1)
    ]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head) - 1)]
    for row in [head, *body]:
        cells = [c.rjust(w) for c, w in zip(row[:-1], widths, strict=True)]
        lines.append("  " + "  ".join([*cells, row[-1]]))
    if pred.exif_gps is not None:
        la, lo = pred.exif_gps
        lines.append(
            f"  photo's own EXIF GPS: {la:.4f}, {lo:.4f} (not used; guess 1 is "
            f"{_km(pred.exif_error_km)} km from it)"
        )
    lines += [f"  note: {n}" for n in pred.notes]
    return "\n".join(lines)


def to_table(predictions: Sequence[Prediction], note: str = ORDER_NOTE) -> str:
    """The photos' answers as text blocks, under a line that says how guesses are ordered."""
    return "\n\n".join([note, *(table_text(p) for p in predictions)]) + "\n"


def to_json(
    predictions: Sequence[Prediction], neighbours: bool = True, heatmap: bool = False
) -> str:
    """A JSON list with one object per photo (see :meth:`Prediction.to_dict`)."""
    objs = [p.to_dict(neighbours, heatmap) for p in predictions]
    if heatmap:  # a heatmap is long: one object a line, not one number a line
        return "[\n" + ",\n".join(json.dumps(o, ensure_ascii=False) for o in objs) + "\n]"
    return json.dumps(objs, indent=1, ensure_ascii=False)


def to_geojson(predictions: Sequence[Prediction]) -> str:
    """One GeoJSON FeatureCollection of every photo's guesses (and EXIF positions)."""
    feats: list[dict[str, Any]] = []
    for p in predictions:
        feats += p.geojson_features()
    return json.dumps({"type": "FeatureCollection", "features": feats}, ensure_ascii=False)


def csv_rows(predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in predictions:
        ex = p.exif_gps
        base = {
            "image": p.image,
            "exif_lat": "" if ex is None else f"{ex[0]:.6f}",
            "exif_lon": "" if ex is None else f"{ex[1]:.6f}",
            "exif_error_km": "" if p.exif_error_km is None else f"{p.exif_error_km:.3f}",
            "error": p.error or "",
        }
        if not p.guesses:
            rows.append({**base, "rank": ""})
        for r, g in enumerate(p.guesses, start=1):
            d = g.to_dict()
            rows.append(
                {
                    **base,
                    "rank": r,
                    "lat": f"{g.lat:.6f}",
                    "lon": f"{g.lon:.6f}",
                    "confidence": "" if d["confidence"] is None else d["confidence"],
                    "uncertainty_km": "" if d["uncertainty_km"] is None else d["uncertainty_km"],
                    "place": d["place"],
                    "country_code": d["country_code"] or "",
                    "source": g.source,
                }
            )
    return rows


def to_csv(predictions: Sequence[Prediction]) -> str:
    """One row per guess (``rank`` 1..k), or one row with ``error`` for a failed photo."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(csv_rows(predictions))
    return buf.getvalue()


def render(
    predictions: Sequence[Prediction], fmt: str, heatmap: bool = False, note: str = ORDER_NOTE
) -> str:
    """The predictions in one of :data:`FORMATS` (``heatmap``: JSON includes each photo's
    probability of every gallery location; ``note``: how a table's guesses are ordered)."""
    if fmt == "table":
        return to_table(predictions, note)
    if fmt == "json":
        return to_json(predictions, heatmap=heatmap) + "\n"
    if fmt == "csv":
        return to_csv(predictions)
    if fmt == "geojson":
        return to_geojson(predictions) + "\n"

    raise InputError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def _map_args(pred: Prediction, title: str | None, truth: Any) -> tuple[tuple, dict]:
    """render_map/map_html arguments for one prediction."""
    nb = pred.neighbours
    guesses = [
        {
            "lat": g.lat,
            "lon": g.lon,
            "confidence": g.confidence,
            "radius_km": g.uncertainty_km,
            "label": g.label or None,
        }
        for g in pred.guesses
    ]
    far = None if nb is None or nb.far.shape[1] == 0 else nb
    args = (guesses, None if nb is None else nb.near[0], pred.exif_gps if truth is None else truth)
    kwargs = {
        "far": None if far is None else far.far[0],
        "neighbour_ids": None if nb is None or nb.near_ids is None else nb.near_ids[0],
        "far_ids": None if far is None or far.far_ids is None else far.far_ids[0],
        "title": title or f"geolocus: {pred.image}",
        "heat": None if pred.heatmap is None else (pred.heatmap.coords, pred.heatmap.probs),
    }
    return args, kwargs


def write_map(pred: Prediction, path: Any, title: str | None = None, truth: Any = None) -> Any:
    """The self-contained HTML map of one prediction: guesses, neighbours, and the true
    position (``truth``, else the photo's EXIF GPS where it has one)."""

    args, kwargs = _map_args(pred, title, truth)
    return render_map(*args, path=path, **kwargs)


def map_text(pred: Prediction, title: str | None = None, truth: Any = None) -> str:
    """The same map as :func:`write_map`, as HTML text (for the web service)."""

    args, kwargs = _map_args(pred, title, truth)
    return map_html(*args, **kwargs)
