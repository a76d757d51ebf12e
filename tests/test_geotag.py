"""Geotagging a collection from its own geotagged photos (the colour world of :mod:`fakes`)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fakes import PLACES, ColourEncoder, photo
from geolocus.errors import InputError
from geolocus.geo import haversine_km
from geolocus.models.embedder import BackboneEmbedder
from geolocus.pipeline import geotag as gt


def _collection(root: Path) -> dict[str, str]:
    """Four places; three photos of each with GPS, one without; a corrupt file.
    Returns the untagged photo of each place -> its place name."""
    untagged = {}
    for j, (name, (lat, lon, col)) in enumerate(PLACES.items()):
        for i in range(3):
            photo(root / f"{name}_{i}.jpg", col, seed=10 * j + i, exif_gps=(lat, lon))
        p = photo(root / "camera" / f"DSC_{j:04d}.jpg", col, seed=100 + j)
        untagged[p.relative_to(root).as_posix()] = name
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return untagged


def _read(path: Path) -> dict[str, dict]:
    with open(path, newline="") as fh:
        return {r["IMG_ID"]: r for r in csv.DictReader(fh)}


def test_geotag_places_untagged_photos_with_their_look_alikes(tmp_path):
    untagged = _collection(tmp_path / "trip")
    out = tmp_path / "geotags.csv"
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "trip").rglob("*.jpg")}
    res = gt.geotag(
        tmp_path / "trip",
        out,
        embedder=BackboneEmbedder(ColourEncoder()),
        progress=False,
        log=lambda s: None,
    )
    assert res.geotagged == 12 and res.n_predicted == 4 and res.refiner == "collection"
    rows = _read(out)
    assert set(rows) == set(untagged)
    for rid, name in untagged.items():
        lat, lon, _ = PLACES[name]
        assert haversine_km(float(rows[rid]["LAT"]), float(rows[rid]["LON"]), lat, lon) < 5
        assert rows[rid]["PLACE"]  # a place name
    # the leave-one-out check: every geotagged photo is found at its own place
    assert res.check is not None and res.check.acc["25"] == 100.0
    # the corrupt file is reported, not fatal; no photo was modified
    assert [r["IMG_ID"] for r in res.failed] == ["broken.jpg"]
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "trip").rglob("*.jpg")}
    # the answers are readable by `geolocus evaluate`
    from geolocus.data import read_coords

    assert len(read_coords(out)) == 4


def test_interrupted_run_resumes_without_redoing_answers(tmp_path, monkeypatch):
    untagged = _collection(tmp_path / "trip")
    out = tmp_path / "geotags.csv"
    emb = BackboneEmbedder(ColourEncoder())
    from geolocus.pipeline.geolocator import Geolocator

    real = Geolocator.predict

    def crash_after_two(self, images, progress=False, on_result=None):
        if on_result is None:  # the geolocator's warm-up
            return real(self, images, progress=progress)

        def cb(p):
            on_result(p)
            cb.n += 1
            if cb.n == 2:
                raise KeyboardInterrupt

        cb.n = 0
        return real(self, images, progress=progress, on_result=cb)

    monkeypatch.setattr(Geolocator, "predict", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        gt.geotag(
            tmp_path / "trip", out, embedder=emb, check=False, progress=False, log=lambda s: None
        )
    assert not out.exists()
    partial = tmp_path / "trip" / gt.WORK / gt.PARTIAL
    assert len(_read(partial)) == 2
    seen = []
    monkeypatch.setattr(
        Geolocator,
        "predict",
        lambda self, images, progress=False, on_result=None: (
            seen.extend(i for i in images if isinstance(i, str)),
            real(self, images, progress=progress, on_result=on_result),
        )[1],
    )
    logs = []
    gt.geotag(tmp_path / "trip", out, embedder=emb, check=False, progress=False, log=logs.append)
    assert len(seen) == 2 and any("resuming: 2" in s for s in logs)
    assert set(_read(out)) == set(untagged) and not partial.exists()


def test_xmp_sidecars_never_overwrite(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    rows = [
        {"IMG_ID": "a.jpg", "LAT": "-33.8688", "LON": "151.2093"},
        {"IMG_ID": "b.jpg", "LAT": "48.8566", "LON": "2.3522"},
    ]
    (root / "b.jpg.xmp").write_text("mine")
    n, skipped = gt.write_sidecars(rows, root)
    assert n == 1 and skipped == [str(root / "b.jpg.xmp")]
    x = (root / "a.jpg.xmp").read_text()
    assert 'exif:GPSLatitude="33,52.128000S"' in x and 'exif:GPSLongitude="151,12.558000E"' in x
    assert (root / "b.jpg.xmp").read_text() == "mine"


def test_too_few_geotagged_photos_is_a_clear_error(tmp_path):
    root = tmp_path / "c"
    photo(root / "a.jpg", (10, 10, 10), exif_gps=(1.0, 2.0))
    photo(root / "b.jpg", (10, 10, 10))
    with pytest.raises(InputError, match="at least 2 geotagged"):
        gt.geotag(
            root,
            tmp_path / "o.csv",
            embedder=BackboneEmbedder(ColourEncoder()),
            progress=False,
            log=lambda s: None,
        )
    with pytest.raises(InputError, match="not a folder"):
        gt.geotag(tmp_path / "nope", tmp_path / "o.csv", progress=False)


def test_best_fitted_to_another_objective_geotags_and_checks_with_it(tmp_path, monkeypatch):
    """``refine="best", objective="georanker"``: fitted on the collection to GeoRanker's
    loss; the leave-one-out check refits the same settings on every fold."""
    untagged = _collection(tmp_path / "trip")
    folds = []
    real = gt.cross_val_predict

    def spy(factory, *args, **kwargs):
        folds.append(factory().get_params()["objective"])
        return real(factory, *args, **kwargs)

    monkeypatch.setattr(gt, "cross_val_predict", spy)
    res = gt.geotag(
        tmp_path / "trip",
        tmp_path / "g.csv",
        embedder=BackboneEmbedder(ColourEncoder()),
        refine="best",
        objective="georanker",
        progress=False,
        log=lambda s: None,
    )
    assert res.refiner == "best" and res.n_predicted == len(untagged)
    assert res.check is not None and res.check.acc["25"] == 100.0
    assert folds == ["georanker"]
