"""Placing a collection's photos from its own geotagged ones: the ``collection`` refiner,
capture times, ``geotag``'s default, and ``geolocus benchmark collections`` on generated
collections (the colour world of :mod:`fakes`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fakes import PLACES, ColourEncoder, photo
from geolocus.cli.main import main
from geolocus.data.neighbours import Neighbours
from geolocus.geo import haversine_km
from geolocus.models.embedder import BackboneEmbedder
from geolocus.pipeline import collections as col
from geolocus.pipeline import geotag as gt
from geolocus.refine import create_refiner
from geolocus.refine.collection import CollectionRefiner, feature_names

PARIS, TOKYO = PLACES["paris"][:2], PLACES["tokyo"][:2]
LYON = (45.764, 4.8357)


def _nb(near, scores, ids=None, near_ids=None) -> Neighbours:
    near = np.asarray(near, float)
    n = len(near)
    return Neighbours(
        ids=ids if ids is not None else [f"q{i}" for i in range(n)],
        near=near,
        far=np.zeros((n, 0, 2)),
        near_scores=np.asarray(scores, float),
        near_ids=near_ids,
    )


def test_agreeing_lookalikes_outvote_one_lucky_match():
    # the most similar photo is alone in Tokyo; three nearly as similar ones agree on Paris
    nb = _nb([[TOKYO, PARIS, PARIS, PARIS]], [[0.90, 0.88, 0.87, 0.86]])
    assert tuple(create_refiner("nearest").predict(nb)[0]) == TOKYO
    r = create_refiner("collection")
    assert not r.requires_fit  # usable unfitted: its prior is the weighted vote
    assert tuple(r.predict(nb)[0]) == PARIS
    ranking = r.rank(nb)
    assert np.allclose(ranking.scores.sum(axis=1), 1.0)


def test_padding_is_never_chosen_and_fitting_learns_from_padded_sets():
    nan = (np.nan, np.nan)
    near, scores, truth, ids = [], [], [], []
    for i in range(60):  # truth: the second most similar photo, never the first
        t = PARIS if i % 2 else TOKYO
        other = TOKYO if i % 2 else PARIS
        near.append([other, t, nan, nan] if i % 3 else [other, t, other, nan])
        scores.append([0.9, 0.85, np.nan, np.nan] if i % 3 else [0.9, 0.85, 0.5, np.nan])
        truth.append(t)
        ids.append(f"{i}_x_owner{i % 6}.jpg")
    nb = _nb(near, scores, ids=ids)
    r = CollectionRefiner(sharpness=2.0, l2=1e-3).fit(nb, np.array(truth))
    assert r.coef_.shape == (len(feature_names()),)
    pred = r.predict(nb)
    assert np.isfinite(pred).all()  # a padded slot is never the answer
    hit = haversine_km(pred[:, 0], pred[:, 1], np.array(truth)[:, 0], np.array(truth)[:, 1])
    assert (hit < 1).mean() > 0.9  # learned: "not the most similar one"
    again = CollectionRefiner.from_state(r.get_state())
    assert np.array_equal(again.predict(nb), pred)


def test_capture_time_decides_between_lookalikes():
    # two look-alike places; the photo was taken 10 minutes after the Lyon photos
    nb = _nb(
        [[PARIS, LYON, PARIS, LYON]],
        [[0.91, 0.90, 0.89, 0.88]],
        ids=["q"],
        near_ids=np.array([["p1", "l1", "p2", "l2"]], dtype=object),
    )
    day = 86400.0
    times = {"q": 5 * day + 600, "l1": 5 * day, "l2": 5 * day + 300, "p1": day, "p2": day + 60}
    plain = CollectionRefiner()
    assert tuple(plain.predict(nb)[0]) == PARIS  # the pixels alone lean to Paris
    timed = CollectionRefiner(use_time=True)
    timed.times = times
    assert tuple(timed.predict(nb)[0]) == LYON
    timed.times = {}  # no times known: the visual answer
    assert tuple(timed.predict(nb)[0]) == PARIS


def _stamp(day: int, minute: int) -> str:
    return f"2024:05:{day:02d} {10 + minute // 60:02d}:{minute % 60:02d}:00"


def test_geotag_places_lookalikes_by_capture_time(tmp_path):
    """Paris and Lyon photos look alike (one colour); untagged photos taken minutes after
    the geotagged ones of one city go to that city, whichever city looks closer."""
    root = tmp_path / "trip"
    red = PLACES["paris"][2]
    for i in range(3):
        photo(root / f"paris_{i}.jpg", red, seed=i, exif_gps=PARIS, taken=_stamp(1, 5 * i))
        photo(root / f"lyon_{i}.jpg", red, seed=10 + i, exif_gps=LYON, taken=_stamp(5, 5 * i))
    photo(root / "tokyo_0.jpg", PLACES["tokyo"][2], seed=30, exif_gps=TOKYO, taken=_stamp(9, 0))
    for j in range(3):
        photo(root / "cam" / f"p{j}.jpg", red, seed=40 + j, taken=_stamp(1, 12 + j))
        photo(root / "cam" / f"l{j}.jpg", red, seed=50 + j, taken=_stamp(5, 12 + j))
    photo(root / "cam" / "t.jpg", PLACES["tokyo"][2], seed=60)  # no capture time at all
    out = tmp_path / "geotags.csv"
    res = gt.geotag(
        root,
        out,
        embedder=BackboneEmbedder(ColourEncoder()),
        progress=False,
        log=lambda s: None,
    )
    assert res.refiner == gt.DEFAULT_REFINE == "collection"
    with open(out, newline="") as fh:
        rows = {r["IMG_ID"]: r for r in csv.DictReader(fh)}
    assert len(rows) == 7
    for rid, r in rows.items():
        want = {"p": PARIS, "l": LYON, "t": TOKYO}[Path(rid).stem[0]]
        assert haversine_km(float(r["LAT"]), float(r["LON"]), *want) < 1, rid
        assert 0 < float(r["CONFIDENCE"]) <= 1
    # the leave-one-out check uses the times too: every geotagged photo finds its city
    assert res.check is not None and res.check.acc["25"] > 80


# -- the benchmark -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """IM2GPS3k's layout: images/..._<owner>.jpg and labels.csv. Six photographers, each
    with photos at two places of the colour world; one photographer with a single photo."""
    root = tmp_path_factory.mktemp("collections")
    rows = []
    names = list(PLACES)
    for o in range(6):
        for i in range(5):
            name = names[(o + (i % 2)) % len(names)]
            lat, lon, colour = PLACES[name]
            fid = f"{1000 + 10 * o + i}_abc_{o}_owner{o}@N00.jpg"
            photo(root / "images" / fid, colour, seed=10 * o + i, size=(48, 40))
            rows.append(f"{fid},{lat + 0.001 * i},{lon}\n")
    photo(root / "images" / "9999_abc_9_alone@N00.jpg", (9, 9, 9), seed=99)
    rows.append("9999_abc_9_alone@N00.jpg,10.0,10.0\n")
    (root / "labels.csv").write_text("IMG_ID,LAT,LON\n" + "".join(rows))
    return root


def _labels(data: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(data / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = [r["IMG_ID"] for r in rows]
    truth = np.array([[float(r["LAT"]), float(r["LON"])] for r in rows])
    return ids, [str(data / "images" / i) for i in ids], truth


def test_benchmark_places_each_photo_from_its_own_collection_only(data, tmp_path, monkeypatch):
    ids, paths, truth = _labels(data)
    fitted_on: list[set[str]] = []
    real_fit = CollectionRefiner.fit

    def spy(self, nb, t):
        fitted_on.append({i.split("_owner")[-1] for i in nb.ids})
        return real_fit(self, nb, t)

    monkeypatch.setattr(CollectionRefiner, "fit", spy)
    res = col.benchmark_collections(
        ids,
        paths,
        truth,
        ["nearest", "collection-prior", "collection"],
        embedder=BackboneEmbedder(ColourEncoder()),
        cache=tmp_path / "cache",
        folds=3,
        progress=False,
    )
    assert res.n_collections == 6 and res.placed.sum() == 30
    assert not res.placed[ids.index("9999_abc_9_alone@N00.jpg")]  # nothing to place it from
    # colour = place, and each photographer shot each of his places at least twice: the most
    # similar other photo of the collection is always at the right place
    for m in ("nearest", "collection-prior", "collection"):
        assert res.scores[m].acc["25"] == 100.0, m
    assert res.scores["best other photo (oracle)"].acc["1"] == 100.0
    # the medoid ignores pixels: it is right only for a photo of the photographer's main place
    assert res.scores["the collection's medoid (no pixels)"].acc["25"] < 100
    # the fitted method is fitted once per fold, never on the collections it places
    assert len(fitted_on) == 3
    assert all(len(s) == 4 for s in fitted_on)  # 6 collections, 3 folds: 4 to fit on
    # from confidence 0 every photo is placed; higher levels place fewer, never more
    table = col.confidence_table(res, "collection", levels=(0.0, 0.5, 1.01)).splitlines()
    shares = [float(line.split()[1]) for line in table[-3:]]
    assert shares[0] == 100.0 and shares[0] >= shares[1] >= shares[2] == 0.0
    # the predictions file holds every placed photo, readable by `geolocus evaluate`
    out = tmp_path / "pred.csv"
    assert res.write_predictions("collection", out) == 30
    from geolocus.data import read_coords

    assert len(read_coords(out)) == 30


def test_reference_points_leave_the_photo_out():
    coords = np.array([PARIS, PARIS, TOKYO])
    medoid, oracle, seq = col.reference_points(coords, np.array([3.0, 1.0, 2.0]))
    assert tuple(oracle[0]) == PARIS and tuple(oracle[2]) in (PARIS,)
    assert tuple(medoid[2]) == PARIS  # the others are both in Paris
    assert tuple(medoid[0]) in (PARIS, TOKYO)
    assert tuple(seq[0]) == TOKYO and tuple(seq[1]) == TOKYO and tuple(seq[2]) in (PARIS,)
    assert np.isnan(col.reference_points(coords)[2]).all()  # no order known


@pytest.mark.slow
def test_cli_collections_with_lite0(data, tmp_path, capsys):
    out, pred = tmp_path / "c.json", tmp_path / "p.csv"
    argv = ["benchmark", "collections", "--data", str(data), "--cache", str(tmp_path / "c")]
    argv += ["--methods", "nearest,collection-prior", "--folds", "2"]
    assert main([*argv, "--json", str(out), "--pred", str(pred)]) == 0
    cap = capsys.readouterr().out
    assert "nearest" in cap and "oracle" in cap and "30 photos in 6 collections" in cap
    js = json.loads(out.read_text())
    assert js["n_photos"] == 30 and set(js["scores"]) >= {"nearest", "collection-prior"}
    assert len(pred.read_text().splitlines()) == 31
    cache = {p: p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*") if p.is_file()}
    assert main([*argv]) == 0
    # the features are cached: the second run rewrites none of them
    assert cache == {p: p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", ["no labels", "empty labels", "json is a folder", "bad method"])
def test_cli_collections_bad_inputs(data, tmp_path, capsys, monkeypatch, case):
    monkeypatch.delenv("GEOLOCUS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "d"
    (d / "images").mkdir(parents=True)
    argv = ["benchmark", "collections", "--data", str(d), "--cache", str(tmp_path / "c")]
    if case == "no labels":
        match = "not found"
    elif case == "empty labels":
        (d / "labels.csv").write_text("")
        match = "labels"
    elif case == "json is a folder":
        argv = [*argv[:3], str(data), "--json", str(tmp_path)]
        match = "is a folder"
    else:
        argv = [*argv[:3], str(data), "--methods", "nearest,magic"]
        match = "unknown method 'magic'"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert err.strip().count("\n") == 0 and err.startswith("geolocus: error:")


def test_geotag_leaves_unsure_photos_untagged(tmp_path):
    """Two look-alike cities and no capture times: a red photo could be in either, so at a
    high minimum confidence it is left untagged (no sidecar), its guess kept in the CSV."""
    root = tmp_path / "trip"
    red = PLACES["paris"][2]
    for i in range(3):
        photo(root / f"paris_{i}.jpg", red, seed=i, exif_gps=PARIS)
        photo(root / f"lyon_{i}.jpg", red, seed=10 + i, exif_gps=LYON)
        photo(root / f"tokyo_{i}.jpg", PLACES["tokyo"][2], seed=20 + i, exif_gps=TOKYO)
    photo(root / "cam" / "red.jpg", red, seed=40)
    photo(root / "cam" / "blue.jpg", PLACES["tokyo"][2], seed=41)
    out = tmp_path / "geotags.csv"
    emb = BackboneEmbedder(ColourEncoder())
    res = gt.geotag(root, out, embedder=emb, check=False, progress=False, log=lambda s: None,
                    min_confidence=0.75)  # fmt: skip
    with open(out, newline="") as fh:
        rows = {r["IMG_ID"]: r for r in csv.DictReader(fh)}
    assert rows["cam/red.jpg"]["TAGGED"] == "no" and rows["cam/red.jpg"]["LAT"]
    assert float(rows["cam/red.jpg"]["CONFIDENCE"]) < 0.75
    assert rows["cam/blue.jpg"]["TAGGED"] == "yes"
    assert float(rows["cam/blue.jpg"]["CONFIDENCE"]) >= 0.75
    assert [r["IMG_ID"] for r in res.unsure] == ["cam/red.jpg"] and res.n_predicted == 1
    n, _ = gt.write_sidecars(res.predicted, root)
    assert n == 1 and (root / "cam" / "blue.jpg.xmp").exists()
    assert not (root / "cam" / "red.jpg.xmp").exists()


def test_cli_default_min_confidence_is_the_library_one():
    from geolocus.cli import geotag as cli_geotag

    assert cli_geotag.MIN_CONFIDENCE == gt.MIN_CONFIDENCE


def test_flickr_id_is_the_upload_order():
    from geolocus.data.im2gps3k import flickr_id

    assert flickr_id("1000269685_e60e9cdfb4_1125_78841376@N00.jpg") == 1000269685
    assert flickr_id("holiday/DSC_0001.jpg") is None
    order = col.flickr_order(["20_a_1_x@N00.jpg", "DSC.jpg", "3_b_1_x@N00.jpg"])
    assert order == {"20_a_1_x@N00.jpg": 20.0, "3_b_1_x@N00.jpg": 3.0}


def test_spatial_verification_finds_the_same_scene(tmp_path):
    pytest.importorskip("cv2")
    from PIL import Image

    from geolocus.refine.verify import Verifier

    rng = np.random.default_rng(0)
    scene = (rng.random((60, 80)) > 0.5).astype(np.uint8) * 255
    scene = np.kron(scene, np.ones((5, 5), np.uint8))  # 300 x 400 blocks: many corners
    Image.fromarray(scene).save(tmp_path / "a.png")
    Image.fromarray(np.roll(scene, (12, 20), axis=(0, 1))).save(tmp_path / "b.png")  # moved
    other = np.kron((rng.random((60, 80)) > 0.5).astype(np.uint8) * 255, np.ones((5, 5), np.uint8))
    Image.fromarray(other).save(tmp_path / "c.png")
    (tmp_path / "d.png").write_bytes(b"not an image")
    nb = Neighbours(
        ids=["a"],
        near=np.array([[PARIS, TOKYO, LYON, PARIS]]),
        far=np.zeros((1, 0, 2)),
        near_scores=np.array([[0.9, 0.8, 0.7, 0.6]]),
        near_ids=np.array([["b", "c", "d", "zz"]], dtype=object),
    )
    files = {x: str(tmp_path / f"{x}.png") for x in "abcd"}
    for kind in ("orb", "sift"):
        v = Verifier(files.get, top=3, kind=kind, cache=tmp_path / "cache")
        inl = v(nb)[0]
        assert inl[0] >= 30 and inl[0] > 4 * inl[1], (kind, inl)  # the same scene; another
        assert inl[2] == 0 and np.isnan(inl[3])  # unreadable: no match; not verified (top 3)
        v.save_pairs()
        again = Verifier(files.get, top=3, kind=kind, cache=tmp_path / "cache")
        assert np.array_equal(again(nb)[0][:3], inl[:3])  # from the caches
    with pytest.raises(Exception, match="unknown local features"):
        Verifier(files.get, kind="surf")
