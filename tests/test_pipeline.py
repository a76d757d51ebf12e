"""The geolocator (Python API): candidates to places, refiners, bad photos, EXIF, LMM, formats.

A "colour world" (:mod:`fakes`) makes the answers checkable: every place has its own
colour, a tiny backbone embeds a photo by its mean colour per quadrant, so a red photo
must be placed where the red photos of the database were taken.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fakes import PLACES, ColourEncoder, bomb, photo
from geolocus.errors import InputError, ServiceError
from geolocus.geo import haversine_km
from geolocus.models.embedder import BackboneEmbedder, Embedder, ModelEmbedder
from geolocus.pipeline import (
    GallerySettings,
    Geolocator,
    LMMSettings,
    PlaceSettings,
    RetrievalSettings,
    render,
    to_csv,
    to_geojson,
    to_json,
    write_map,
)
from geolocus.pipeline.candidates import distinct_places, pool_candidates, score_weights


def colour_world(folder: Path, per_place: int = 5) -> tuple[list[str], list[str], np.ndarray]:
    """Photos of every place (jittered by up to ~2 km): ids, paths, positions."""
    ids, paths, ll = [], [], []
    rng = np.random.default_rng(1)
    for name, (lat, lon, col) in PLACES.items():
        for j in range(per_place):
            p = photo(folder / f"{name}_{j}.jpg", col, seed=hash((name, j)) % 1000)
            ids.append(p.name)
            paths.append(str(p))
            ll.append((lat + rng.uniform(-0.01, 0.01), lon + rng.uniform(-0.01, 0.01)))
    return ids, paths, np.array(ll)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A database of the colour world, with its embedder."""
    tmp = tmp_path_factory.mktemp("world")
    emb = BackboneEmbedder(ColourEncoder())
    ids, paths, ll = colour_world(tmp / "db_photos")
    from geolocus.index.build import Inputs, build_database, inputs_source
    from geolocus.index.executors import LocalExecutor

    src = inputs_source(Inputs(ids, paths, ll, "labels"))
    res = build_database(tmp / "db", src, emb, LocalExecutor(emb, 8), progress=False)
    return tmp, emb, res.database


#: Neighbours retrieved in the colour world (20 photos, 5 per place).
NEAR = RetrievalSettings(k=6, k_far=4)


def _near(g, name: str, km: float = 10.0) -> bool:
    lat, lon, _ = PLACES[name]
    return float(haversine_km(g.lat, g.lon, lat, lon)) < km


# ---------------------------------------------------------------- candidates to places


def test_places_merge_close_candidates_and_keep_refiner_order():
    paris, tokyo = (48.8566, 2.3522), (35.6762, 139.6503)
    coords = np.array([paris, tokyo, (48.86, 2.36), tokyo, (48.857, 2.353)])
    w = np.array([0.1, 0.3, 0.2, 0.3, 0.1])
    places = distinct_places(coords, w, top_k=5)
    assert len(places) == 2
    assert places[0].lat == paris[0] and places[0].members == 3  # guess 1: the refiner's first
    assert places[0].confidence == pytest.approx(0.4) and places[1].confidence == pytest.approx(0.6)
    by_w = distinct_places(coords, w, top_k=5, by_weight=True)
    assert by_w[0].lat == tokyo[0] and by_w[0].confidence == pytest.approx(0.6)


def test_confidence_is_mass_not_renormalised_over_shown():
    coords = np.array([(0.0, 0.0), (10.0, 10.0), (20.0, 20.0), (30.0, 30.0)])
    w = np.array([0.4, 0.3, 0.2, 0.1])
    shown = distinct_places(coords, w, top_k=2)
    assert [p.confidence for p in shown] == pytest.approx([0.4, 0.3])


def test_uncertainty_is_spread_of_supporters_or_support_radius():
    centre = (45.0, 5.0)
    # supporters 100 km north and south with equal weight: RMS distance 100 km
    north, south = (45.0 + 100 / 111.195, 5.0), (45.0 - 100 / 111.195, 5.0)
    far = (-30.0, 120.0)
    coords = np.array([far, centre, north, south])
    w = np.array([0.2, 0.0, 0.5, 0.5])
    lone, place = distinct_places(coords, w, top_k=2, support_km=750)
    assert place.lat == centre[0] and place.uncertainty_km == pytest.approx(100.0, rel=0.01)
    assert lone.lat == far[0] and lone.uncertainty_km == 750.0  # nothing else supports it


def test_score_weights_keep_distributions_else_one_vote_each():
    p = np.array([[0.7, 0.2, 0.1]])
    np.testing.assert_allclose(score_weights(p), p)
    s = np.array([[0.9, 0.8, 0.1], [-1.0, -2.0, -3.0]])  # similarities, dualgeo-like scores
    np.testing.assert_allclose(score_weights(s), 1 / 3)


def test_gallery_candidates_are_mixed_in_by_weight():
    ranked = np.array([(0.0, 0.0), (1.0, 1.0)])
    gps = (np.array([(50.0, 50.0)]), np.array([0.01]))
    coords, w, src = pool_candidates(ranked, np.array([0.6, 0.4]), gps, gps_weight=0.5)
    assert src == ["retrieval", "retrieval", "gallery"]
    np.testing.assert_allclose(w, [0.3, 0.2, 0.5])  # gallery probs renormalised, then mixed
    assert len(coords) == 3


# ---------------------------------------------------------------- the geolocator


@pytest.mark.parametrize("refine", ["nearest", "dualgeo", "kde"])
def test_colour_photos_are_placed_where_that_colour_was_taken(world, refine):
    tmp, emb, db = world
    geo = Geolocator.from_database(
        db, refine, embedder=emb, retrieval=NEAR, places=PlaceSettings(top_k=3)
    )
    queries = {n: photo(tmp / "q" / f"{n}.jpg", c, seed=99) for n, (_, _, c) in PLACES.items()}
    preds = geo(list(queries.values()))
    for (name, path), pred in zip(queries.items(), preds, strict=True):
        assert pred.ok and pred.image == str(path)
        assert _near(pred.top, name), (refine, name, pred.top)
        assert len(pred.guesses) <= 3 and pred.top.place is not None
        assert pred.neighbours.near.shape == (1, 6, 2) and pred.neighbours.far.shape == (1, 4, 2)
        # far neighbours: the least similar colours, never the query's own place
        assert not any(_near_pt(p, name) for p in pred.neighbours.far[0])
    paris = preds[0].top
    assert paris.place.country_code == "FR" and "Paris" in paris.label
    assert 0 < paris.uncertainty_km < 50  # the five Paris photos lie within ~2 km


def _near_pt(p, name: str) -> bool:
    lat, lon, _ = PLACES[name]
    return float(haversine_km(p[0], p[1], lat, lon)) < 10


def test_best_is_fitted_on_the_database_once_and_cached(world, monkeypatch):
    tmp, emb, db = world
    from geolocus.refine import BestRefiner

    calls = []
    orig = BestRefiner.fit
    monkeypatch.setattr(BestRefiner, "fit", lambda self, *a: calls.append(1) or orig(self, *a))
    geo = Geolocator.from_database(db, "best", embedder=emb, retrieval=NEAR)
    assert calls == [1] and list((db.path / "refiners").glob("best-k6-f4.json"))
    [pred] = geo([photo(tmp / "q" / "tokyo2.jpg", PLACES["tokyo"][2], seed=5)])
    assert _near(pred.top, "tokyo")
    conf = [g.confidence for g in pred.guesses]
    assert all(0 <= c <= 1 for c in conf) and sum(conf) <= 1 + 1e-9  # probabilities
    Geolocator.from_database(db, "best", embedder=emb, retrieval=NEAR)
    assert calls == [1]  # the second geolocator reads the cached fit
    Geolocator.from_database(db, geo.refiner, embedder=emb, retrieval=NEAR, cache_refiner=False)
    assert calls == [1]  # a fitted instance is used as given
    Geolocator.from_database(db, BestRefiner(), embedder=emb, retrieval=NEAR, cache_refiner=False)
    assert calls == [1, 1]  # an unfitted one is fitted


def test_constructor_only_stores_what_it_is_given(world, monkeypatch):
    """Opening, loading, fitting, writing and warming up happen in from_database, never in
    ``Geolocator(...)``: made by hand it works at once, with the settings as given."""
    tmp, emb, db = world
    from geolocus.index.database import Database
    from geolocus.pipeline import geolocator
    from geolocus.places import Gazetteer
    from geolocus.refine import BestRefiner, NearestRefiner

    def forbidden(*args, **kwargs):
        pytest.fail("a side effect in Geolocator.__init__")

    before = sorted(db.path.rglob("*"))
    with monkeypatch.context() as m:
        for owner, name in [
            (Gazetteer, "load"),
            (Database, "open"),
            (geolocator, "fit_on_database"),
            (BestRefiner, "fit"),
            (ColourEncoder, "forward"),
        ]:
            m.setattr(owner, name, forbidden)
        wide = RetrievalSettings(k=50, k_far=3)
        geo = Geolocator(db, emb, BestRefiner(), retrieval=wide, places=PlaceSettings(top_k=2))
        assert geo.retrieval == RetrievalSettings(k=len(db), k_far=3)  # a small db fills no more
        assert geo.gazetteer is None and geo.lmm is None
        assert all(v == 0 for v in geo.timing.values())
    assert sorted(db.path.rglob("*")) == before
    other = ColourEncoder()
    other.name = "another-model"
    with pytest.raises(InputError, match="built with model"):  # checked all the same
        Geolocator(db, BackboneEmbedder(other), NearestRefiner())
    geo = Geolocator(db, emb, NearestRefiner(), retrieval=NEAR, places=PlaceSettings(top_k=2))
    [pred] = geo([photo(tmp / "q" / "plain-paris.jpg", PLACES["paris"][2], seed=4)])
    assert _near(pred.top, "paris") and pred.top.place is None  # no gazetteer: unnamed
    assert len(pred.guesses) <= 2 and pred.neighbours.near.shape == (1, 6, 2)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RetrievalSettings(k=0), "k must be at least 1"),
        (lambda: RetrievalSettings(k_far=-1), "k_far at least 0"),
        (lambda: RetrievalSettings(batch_size=0), "batch_size"),
        (lambda: PlaceSettings(top_k=0), "top_k"),
    ],
)
def test_settings_refuse_impossible_values(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_bad_photos_get_errors_and_the_batch_goes_on(world):
    tmp, emb, db = world
    bad = tmp / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "text.jpg").write_text("not a photo\n" * 10)
    good = photo(bad / "good.jpg", PLACES["sydney"][2], seed=7)
    cut = bad / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    items = [
        bad / "missing.jpg",
        bad / "text.jpg",
        good,
        cut,
        bomb(bad / "bomb.png"),
        good.read_bytes(),
        Image.open(good),
    ]
    geo = Geolocator.from_database(db, "dualgeo", embedder=emb, retrieval=NEAR)
    preds = geo(items)
    assert len(preds) == len(items)
    errors = [p.error for p in preds]
    assert "no such file" in errors[0] and "missing.jpg" in errors[0]
    assert "not an image" in errors[1]
    assert "truncated" in errors[3] or "corrupt" in errors[3]
    assert "too many pixels" in errors[4]
    for i in (2, 5, 6):
        assert preds[i].ok and _near(preds[i].top, "sydney")
    assert all("\n" not in e for e in errors if e)


def test_exif_gps_is_reported_never_used(world):
    tmp, emb, db = world
    col = PLACES["nairobi"][2]
    plain = photo(tmp / "e" / "plain.jpg", col, seed=3)
    tagged = photo(tmp / "e" / "tagged.jpg", col, seed=3, exif_gps=(48.8566, 2.3522))
    geo = Geolocator.from_database(db, "dualgeo", embedder=emb, retrieval=NEAR)
    a, b = geo([plain, tagged])
    assert a.exif_gps is None and b.exif_gps == pytest.approx((48.8566, 2.3522))
    assert [(g.lat, g.lon) for g in a.guesses] == [(g.lat, g.lon) for g in b.guesses]
    assert _near(b.top, "nairobi")  # the pixels say Nairobi, the EXIF says Paris
    assert b.exif_error_km == pytest.approx(
        float(haversine_km(b.top.lat, b.top.lon, 48.8566, 2.3522))
    )
    assert "EXIF GPS" in render([b], "table")


def test_mismatched_model_is_refused(world):
    _, _, db = world
    other = ColourEncoder()
    other.weights_id = "colour-v2"
    with pytest.raises(InputError, match="another version"):
        Geolocator.from_database(db, embedder=BackboneEmbedder(other))
    other.name = "something-else"
    with pytest.raises(InputError, match="built with model"):
        Geolocator.from_database(db, embedder=BackboneEmbedder(other))
    with pytest.raises(InputError, match="built with model 'colour-test', not 'efficientnet"):
        Geolocator.from_database(db.path, model="efficientnet-lite0")


class _StubLMM:
    def __init__(self, answer=None, fail=False):
        self.answer, self.fail, self.prompts = answer, fail, []

    def ask(self, image, near, far):
        from geolocus.refine.lmm import LMMAnswer

        self.prompts.append((image.size, near, far))
        if self.fail:
            raise ServiceError("model server http://x/v1 is unreachable: refused")
        return LMMAnswer(*self.answer, reason="the flag")


def test_lmm_answer_becomes_guess_one(world):
    tmp, emb, db = world
    lmm = _StubLMM(answer=(40.4168, -3.7038))  # Madrid, not a candidate
    geo = Geolocator.from_database(
        db, "dualgeo", embedder=emb, retrieval=NEAR, lmm=LMMSettings(lmm)
    )
    [pred] = geo([photo(tmp / "l" / "p.jpg", PLACES["paris"][2], seed=11)])
    assert pred.top.source == "lmm" and pred.top.confidence is None
    assert pred.top.place.country_code == "ES"
    size, near, far = lmm.prompts[0]
    assert size == (40, 32)  # the full photo, not the backbone's crop
    assert any("Paris" in c.label for c in near) and len(far) == 4
    assert any(g.source == "retrieval" and _near(g, "paris") for g in pred.guesses[1:])
    # an answer on a candidate promotes that candidate
    lmm2 = _StubLMM(answer=PLACES["paris"][:2])
    geo2 = Geolocator.from_database(
        db, "dualgeo", embedder=emb, retrieval=NEAR, lmm=LMMSettings(lmm2)
    )
    [pred2] = geo2([photo(tmp / "l" / "p.jpg", PLACES["paris"][2], seed=11)])
    assert pred2.top.source == "retrieval+lmm" and pred2.top.confidence is not None


def test_lmm_failure_raises_or_falls_back_once(world):
    tmp, emb, db = world
    q = [photo(tmp / "l" / f"f{i}.jpg", PLACES["tokyo"][2], seed=i) for i in range(3)]
    with pytest.raises(ServiceError, match="unreachable"):
        lmm = LMMSettings(_StubLMM(fail=True))
        Geolocator.from_database(db, "dualgeo", embedder=emb, retrieval=NEAR, lmm=lmm)(q)
    warnings = []
    lmm = _StubLMM(fail=True)
    geo = Geolocator.from_database(
        db,
        "dualgeo",
        embedder=emb,
        retrieval=NEAR,
        lmm=LMMSettings(lmm, fallback=True),
        warn=warnings.append,
    )
    preds = geo(q)
    assert len(warnings) == 1 and len(lmm.prompts) == 1  # not asked again after a failure
    assert all(p.ok and _near(p.top, "tokyo") for p in preds)
    assert "lmm failed" in preds[0].notes[0]


def test_real_lmm_client_unreachable_server(world):
    """The OpenAI-compatible client against a closed port: a one-line ServiceError."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp, emb, db = world
    lmm = LMMSettings.from_url(f"http://127.0.0.1:{port}/v1", "m")
    geo = Geolocator.from_database(db, "dualgeo", embedder=emb, retrieval=NEAR, lmm=lmm)
    with pytest.raises(ServiceError, match="unreachable") as e:
        geo([photo(tmp / "l" / "u.jpg", PLACES["tokyo"][2])])
    assert "\n" not in str(e.value)


def test_output_formats_parse(world, tmp_path):
    tmp, emb, db = world
    geo = Geolocator.from_database(
        db, "dualgeo", embedder=emb, retrieval=NEAR, places=PlaceSettings(top_k=2)
    )
    preds = geo(
        [
            photo(tmp / "f" / "a.jpg", PLACES["paris"][2], exif_gps=(48.85, 2.35)),
            tmp / "f" / "missing.jpg",
        ]
    )
    js = json.loads(to_json(preds))
    assert js[0]["guesses"][0]["country_code"] == "FR" and js[1]["error"]
    assert len(js[0]["neighbours"]["near"]) == 6 and js[0]["exif_error_km"] < 20
    gj = json.loads(to_geojson(preds))
    kinds = [f["properties"]["kind"] for f in gj["features"]]
    assert kinds.count("guess") == len(preds[0].guesses) and kinds.count("exif") == 1
    lon, lat = gj["features"][0]["geometry"]["coordinates"]
    assert (lat, lon) == pytest.approx((preds[0].top.lat, preds[0].top.lon), abs=1e-6)
    rows = list(csv.DictReader(io.StringIO(to_csv(preds))))
    assert [r["rank"] for r in rows] == ["1", "2", ""][: len(rows)] or rows[-1]["error"]
    assert rows[-1]["error"] and rows[0]["country_code"] == "FR"
    html = write_map(preds[0], tmp_path / "m.html").read_text()
    assert "<!DOCTYPE html>" in html and "http" not in html.split("geolocus-data")[1][:200]
    with pytest.raises(InputError, match="unknown format"):
        render(preds, "xml")


class _ProtocolOnly:
    """An embedder seen through the :class:`Embedder` protocol: any other attribute fails,
    so a caller that needs more than the protocol lists fails its test."""

    NAMES = frozenset(
        {*Embedder.__annotations__, *(n for n, v in vars(Embedder).items() if callable(v))}
        - set(vars(object))
    )

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        if name not in self.NAMES:
            raise AttributeError(f"{name!r} is not part of the Embedder protocol")
        return getattr(self._inner, name)


def test_location_head_adds_gallery_candidates(world):
    """A GeoCLIP head over the colour backbone: gallery candidates join the answer. The
    database is built and searched through the Embedder protocol alone."""
    from geolocus.models.gallery import GPSGallery
    from geolocus.models.geoclip import GeoCLIP, GeoCLIPConfig

    tmp, _, _ = world
    torch.manual_seed(0)
    cfg = GeoCLIPConfig(
        embed_dim=12,
        dim=16,
        pretrained_location=False,
        location_options={"n_freq": 8, "hidden": 16},
        queue_size=0,
    )
    model = GeoCLIP(cfg)
    coords = np.array([p[:2] for p in PLACES.values()] + [(0.0, 0.0), (60.0, 30.0)])
    gal = GPSGallery.build(model.location_encoder, coords, cache=False, progress=False)
    full = ModelEmbedder(model, ColourEncoder(), "geoclip-test", "id-1", gallery=gal)
    assert isinstance(full, Embedder) and isinstance(BackboneEmbedder(ColourEncoder()), Embedder)
    emb = _ProtocolOnly(full)
    assert emb.has_gps and emb.dim == 16
    with pytest.raises(AttributeError, match="not part of the Embedder protocol"):
        emb.features  # noqa: B018
    ids, paths, ll = colour_world(tmp / "db2_photos", per_place=3)
    from geolocus.index.build import Inputs, build_database, inputs_source

    src = inputs_source(Inputs(ids, paths, ll, "labels"))
    db = build_database(tmp / "db2", src, emb, progress=False).database
    geo = Geolocator.from_database(
        db,
        "nearest",
        embedder=emb,
        retrieval=RetrievalSettings(k=4, k_far=2),
        places=PlaceSettings(top_k=10),
        gallery=GallerySettings(k=3),
    )
    [pred] = geo([photo(tmp / "g" / "q.jpg", PLACES["paris"][2])])
    sources = {g.source for g in pred.guesses}
    assert any("gallery" in s for s in sources) and any("retrieval" in s for s in sources)
    conf = [g.confidence for g in pred.guesses]
    assert conf == sorted(conf, reverse=True) and sum(conf) <= 1 + 1e-9
