"""Self-contained HTML maps and static SVG maps."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from geolocus.errors import InputError, InvalidCoordinatesError
from geolocus.places import Place
from geolocus.viz import Guess, as_guesses, map_html, render_map, render_svg, world_geojson

GUESSES = [
    {"lat": 43.7696, "lon": 11.2558, "confidence": 0.5, "radius_km": 25},
    {"lat": 44.4949, "lon": 11.3426, "confidence": 0.3, "radius_km": 60},
    {"lat": 41.9028, "lon": 12.4964, "confidence": 0.2},
]
EVIL = '</script><script>alert("x")</script><img src=x onerror=alert(1)>'


class _Scripts(HTMLParser):
    """Collects every element's tag and attributes, and the text of each <script>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._in: dict[str, str | None] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in = dict(attrs)
            self.scripts.append((self._in, ""))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = None

    def handle_data(self, data):
        if self._in is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)


def _parse(text: str) -> _Scripts:
    p = _Scripts()
    p.feed(text)
    return p


def _data(text: str) -> dict:
    p = _parse(text)
    (blob,) = [t for a, t in p.scripts if a.get("id") == "geolocus-data"]
    return json.loads(blob)


def _point_in_ring(lat: float, lon: float, ring: list[list[float]]) -> bool:
    inside = False
    for (x1, y1), (x2, y2) in zip(ring, ring[1:] + ring[:1], strict=True):
        if (y1 > lat) != (y2 > lat) and lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def test_render_map_writes_self_contained_html(tmp_path: Path) -> None:
    near = np.array([[43.7, 11.2], [43.9, 11.1], [44.0, 11.5]])
    far = np.array([[35.68, 139.7], [40.7, -74.0]])
    out = render_map(
        GUESSES, near, truth=(43.72, 10.40), far=far, path=tmp_path / "maps" / "m.html"
    )
    assert out == tmp_path / "maps" / "m.html" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["m.html"]  # no temporary left behind
    text = out.read_text(encoding="utf-8")
    assert len(text.encode()) < 1_500_000
    parsed = _parse(text)
    # nothing that rendering would fetch: no external scripts, stylesheets, imports or images
    for tag, attrs in parsed.tags:
        assert not (tag == "script" and attrs.get("src")), attrs
        assert not (tag == "link" and attrs.get("href")), attrs
        assert tag not in ("img", "iframe")
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import|url\(\s*['\"]?https?:", text)
    assert "L.map(" in text and "Leaflet 1.9.4" in text  # Leaflet is inlined
    # the outlines are embedded
    (world,) = [t for a, t in parsed.scripts if a.get("id") == "geolocus-world"]
    names = {f["properties"]["name"] for f in json.loads(world)["features"]}
    assert {"France", "Italy", "Brazil", "Japan"} <= names
    data = _data(text)
    assert [(g["lat"], g["lon"]) for g in data["guesses"]] == [
        (g["lat"], g["lon"]) for g in GUESSES
    ]
    assert [g["rank"] for g in data["guesses"]] == [1, 2, 3]
    assert data["guesses"][0]["label"].startswith("Florence")  # named offline
    assert data["guesses"][0]["confidence_text"] == "50.0 %"
    assert data["guesses"][1]["radius_km"] == 60
    sizes = [g["size"] for g in data["guesses"]]
    assert sizes == sorted(sizes, reverse=True)  # more confident, bigger
    assert len(data["near"]) == 3 and len(data["far"]) == 2
    assert data["truth"]["error_km"] == pytest.approx(68.9, abs=1.0)  # Florence to Pisa
    assert data["tiles"]["url"].startswith("https://")  # offered, not loaded


def test_names_cannot_inject_markup(tmp_path: Path) -> None:
    guesses = [Guess(48.85, 2.35, 0.9, label=EVIL), Guess(45.76, 4.83, 0.1)]
    text = map_html(
        guesses,
        neighbours=[[48.8, 2.3]],
        neighbour_ids=[EVIL],
        title=EVIL,
        truth=(48.86, 2.34),
    )
    parsed = _parse(text)
    # exactly the page's own five scripts (data, outlines, detail, Leaflet, page script)
    assert len(parsed.scripts) == 5
    assert not any(tag == "img" for tag, _ in parsed.tags)
    assert "<img" not in text and "</script><script>alert" not in text
    assert "&lt;/script&gt;" in text  # the title, escaped
    data = _data(text)  # and the data still carries the exact strings
    assert data["guesses"][0]["label"] == EVIL and data["near"][0]["id"] == EVIL
    # the page script writes strings with textContent only
    js = parsed.scripts[-1][1]
    assert "innerHTML" not in js and "textContent" in js


def test_guess_forms() -> None:
    a = as_guesses(np.array([[10.0, 20.0], [30.0, 40.0]]), confidence=[0.7, 0.3])
    assert [(g.lat, g.lon, g.confidence) for g in a] == [(10, 20, 0.7), (30, 40, 0.3)]
    assert as_guesses([[10.0, 20.0]])[0] == Guess(10.0, 20.0)
    assert as_guesses((10.0, 20.0))[0] == Guess(10.0, 20.0)
    b = as_guesses([{"latitude": 1, "lng": 2, "score": 3.5, "name": "x"}])
    assert b[0] == Guess(1.0, 2.0, 3.5, None, "x")
    place = Place("Lyon", "Auvergne-Rhône-Alpes", "France", "FR", 45.76, 4.83, 1, 0.0)
    assert as_guesses([place])[0].label == "Lyon, Auvergne-Rhône-Alpes, France"
    assert as_guesses(None) == []
    with pytest.raises(InputError):
        as_guesses([[1.0, 2.0]], confidence=[0.5, 0.5])
    with pytest.raises(InputError):
        as_guesses([{"lat": 1.0}])
    with pytest.raises(InvalidCoordinatesError):
        as_guesses([[95.0, 0.0]])
    with pytest.raises(InputError):
        as_guesses([{"lat": 1.0, "lon": 2.0, "radius_km": -5}])
    with pytest.raises(InputError):
        as_guesses(np.zeros((2, 3)))


def test_scores_that_are_not_probabilities_and_no_confidence() -> None:
    d = _data(map_html([[10, 20], [11, 21]], confidence=[3.0, 1.5], place_names=False))
    assert d["guesses"][0]["confidence_text"] == "3 (score)"
    assert d["guesses"][0]["label"] is None
    d = _data(map_html([[10, 20], [11, 21]], place_names=False))
    assert d["guesses"][0]["confidence_text"] is None
    assert d["guesses"][0]["size"] > d["guesses"][1]["size"]  # rank still shows


def test_antimeridian_points_are_drawn_side_by_side() -> None:
    d = _data(map_html([[-17.7, 179.5], [-18.1, -179.0]], neighbours=[[-16.5, -179.8]]))
    top = d["guesses"][0]["lon_shown"]
    for p in [d["guesses"][1], d["near"][0]]:
        assert abs(p["lon_shown"] - top) < 180
        assert (p["lon_shown"] - p["lon"]) % 360 == pytest.approx(0)
    assert d["guesses"][1]["lon"] == -179.0  # popups show the real longitude
    far_out = _data(map_html([[0.0, -140.0]]))["guesses"][0]["label"]
    assert re.fullmatch(r"\d+ km from .+", far_out)  # at sea: how far from the nearest place


def test_world_outlines() -> None:
    world = world_geojson()
    assert len(world["features"]) == 177
    france = next(f for f in world["features"] if f["properties"]["name"] == "France")
    polys = france["geometry"]["coordinates"]
    assert any(_point_in_ring(46.6, 2.4, p[0]) for p in polys)  # central France
    assert not any(_point_in_ring(40.4, -3.7, p[0]) for p in polys)  # Madrid
    # rings are continuous in longitude, except Antarctica's, which circles the pole
    for f in world["features"]:
        g = f["geometry"]
        for poly in [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]:
            for ring in poly:
                jumps = np.abs(np.diff([p[0] for p in ring])) > 180
                assert not jumps.any() or f["properties"]["name"] == "Antarctica"


def _detail(text: str) -> dict | None:
    (blob,) = [t for a, t in _parse(text).scripts if a.get("id") == "geolocus-detail"]
    return json.loads(blob)


def test_fine_coastlines_only_near_the_points() -> None:
    local = _detail(map_html([[35.01, 135.77], [34.69, 135.50]], place_names=False))
    keys = {f["properties"]["key"] for f in local["features"]}
    assert "392" in keys  # Japan (ISO 3166 numeric), at 1:50m
    assert "250" not in keys  # France is far away
    world = world_geojson()
    coarse_keys = {str(f.get("id") or f["properties"]["name"]) for f in world["features"]}
    assert "392" in coarse_keys
    spread = [[48.85, 2.35], [35.68, 139.7], [-33.9, 151.2]]
    assert _detail(map_html(spread, place_names=False)) is None  # world view: 110m is enough
    assert _detail(map_html(spread[:1], place_names=False, detail=False)) is None
    # across the antimeridian the fine polygons are shifted next to the points
    fiji = _detail(map_html([[-17.7, 179.5], [-18.1, -179.0]], place_names=False))
    lons = [p[0] for f in fiji["features"] for r in f["geometry"]["coordinates"] for p in r]
    assert min(lons) > 170 and max(lons) < 190


def test_render_svg(tmp_path: Path) -> None:
    out = render_svg(
        GUESSES,
        [[43.7, 11.2]],
        truth=(43.72, 10.40),
        far=[[35.0, 139.0]],
        title=EVIL,
        path=tmp_path / "m.svg",
    )
    root = ET.parse(out).getroot()  # well-formed XML despite the title
    ns = "{http://www.w3.org/2000/svg}"
    circles = root.findall(f".//{ns}circle")
    assert len(circles) == 3 + 1 + 1 + 1  # guesses, neighbour, far neighbour, truth
    assert root.find(f"{ns}title").text == EVIL
    assert len(root.findall(f".//{ns}path")) > 100  # outlines
    world = render_svg(GUESSES, path=tmp_path / "w.svg", extent="world")
    assert ET.parse(world).getroot().get("viewBox") != root.get("viewBox")
    with pytest.raises(ValueError):
        render_svg(GUESSES, path=tmp_path / "x.svg", extent="moon")


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed")
def test_map_renders_in_headless_chromium(tmp_path: Path) -> None:
    """The page script runs: Leaflet draws outlines and markers, with no network."""
    page = render_map(
        GUESSES, [[43.7, 11.2], [43.9, 11.1]], truth=(43.72, 10.4), path=tmp_path / "m.html"
    )
    dom = subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--virtual-time-budget=3000",
            "--dump-dom", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert dom.count("leaflet-interactive") >= 3 + 2 + 1  # guesses, neighbours, truth
    assert dom.count('class="leaflet-tooltip gl-rank') == 3
    assert "leaflet-overlay-pane" in dom and "<path" in dom
    assert 'data-detail="on"' in dom  # zoomed in on Italy: the 1:50m coastlines are drawn
