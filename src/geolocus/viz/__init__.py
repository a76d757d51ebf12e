"""Maps of predictions that open offline.

- :func:`render_map`: one self-contained HTML file (Leaflet and Natural Earth
  outlines inlined) with the top-k guesses, their confidence and uncertainty
  circles, the retrieved neighbours and the true location when known.
- :func:`render_svg`: the same points on a static Equal Earth SVG (no JavaScript).
- :func:`world_geojson`: the vendored 1:110m country outlines as GeoJSON.

Vendored files and their licences are listed in ``assets/README.md``.
"""

from __future__ import annotations

from geolocus.viz.html import OSM_TILES, map_html, render_map
from geolocus.viz.outline import topojson_to_geojson, world_geojson
from geolocus.viz.points import Guess, as_guesses
from geolocus.viz.svg import render_svg, svg_text

__all__ = [
    "OSM_TILES",
    "Guess",
    "as_guesses",
    "map_html",
    "render_map",
    "render_svg",
    "svg_text",
    "topojson_to_geojson",
    "world_geojson",
]
