"""The learned ``best`` refiner: generated worlds, shapes, determinism, errors, saving,
the CLI, and cross-validation on the shared G3 neighbours."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geolocus.cli.main import main
from geolocus.data import Neighbours, read_coords, read_neighbours
from geolocus.data.im2gps3k import photographer
from geolocus.errors import InputError
from geolocus.eval import score_errors
from geolocus.eval.crossval import cross_val_predict
from geolocus.eval.folds import grouped_folds
from geolocus.geo import distance_km
from geolocus.ocr import PlaceMatch, TextEvidence
from geolocus.refine import BestRefiner, create_refiner, list_refiners
from geolocus.refine.features import FeatureSpec, candidate_features, prior_weights
from geolocus.refine.learned import mass_within
from geolocus.refine.text import text_feature_names, text_features

K = 20


def _random_points(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.stack([rng.uniform(-60, 70, shape), rng.uniform(-180, 180, shape)], axis=-1)


def _blob(rng: np.random.Generator, centre: np.ndarray, m: int, deg: float) -> np.ndarray:
    pts = centre + rng.normal(0.0, deg, (m, 2))
    return np.column_stack([np.clip(pts[:, 0], -89, 89), (pts[:, 1] + 180) % 360 - 180])


def dense_world(n: int, seed: int, smallest: int = 3) -> tuple[Neighbours, np.ndarray]:
    """The truth sits in the densest cluster (``smallest``-8 members, ~2 km spread) at
    random ranks; the other neighbours are scattered over the globe; far ones are random."""
    rng = np.random.default_rng(seed)
    truth = _random_points(rng, (n,))
    near = _random_points(rng, (n, K))
    for i in range(n):
        m = int(rng.integers(smallest, 9))
        slots = rng.choice(K, m, replace=False)
        near[i, slots] = _blob(rng, truth[i], m, 0.02)
    far = _random_points(rng, (n, K))
    ids = [f"q{i}_{i % 40}@N00.jpg" for i in range(n)]  # 40 "photographers"
    return Neighbours(ids=ids, near=near, far=far), truth


def twin_world(n: int, seed: int) -> tuple[Neighbours, np.ndarray]:
    """Two equal clusters, one at the truth, one a decoy 3000+ km away that the far
    ("dissimilar") neighbours surround: only the far neighbours tell them apart."""
    rng = np.random.default_rng(seed)
    truth = _random_points(rng, (n,))
    near = _random_points(rng, (n, K))
    far = np.empty((n, K, 2))
    for i in range(n):
        decoy = _random_points(rng, ())
        while distance_km(decoy, truth[i]) < 3000:
            decoy = _random_points(rng, ())
        slots = rng.choice(K, 8, replace=False)
        near[i, slots[:4]] = _blob(rng, truth[i], 4, 0.02)
        near[i, slots[4:]] = _blob(rng, decoy, 4, 0.02)
        far[i] = _blob(rng, decoy, K, 2.0)
    ids = [f"t{i}_{i % 40}@N00.jpg" for i in range(n)]
    return Neighbours(ids=ids, near=near, far=far), truth


def _acc(pred: np.ndarray, truth: np.ndarray, km: float) -> float:
    return float(np.mean(distance_km(pred, truth) <= km))


def test_registered_and_needs_fit():
    assert "best" in list_refiners()
    r = create_refiner("best")
    assert isinstance(r, BestRefiner) and r.requires_fit


def test_learns_to_beat_nearest_in_a_dense_world():
    nb, truth = dense_world(300, seed=1)
    tr, te = np.arange(300) < 200, np.arange(300) >= 200
    best = create_refiner("best").fit(nb.subset(tr), truth[tr])
    got = _acc(best.predict(nb.subset(te)), truth[te], 25)
    nearest = _acc(create_refiner("nearest").predict(nb.subset(te)), truth[te], 25)
    assert got >= 0.9 and got > nearest + 0.4


def test_learns_that_far_neighbours_mark_the_wrong_cluster():
    nb, truth = twin_world(300, seed=2)
    tr, te = np.arange(300) < 200, np.arange(300) >= 200
    best = BestRefiner().fit(nb.subset(tr), truth[tr])
    got = _acc(best.predict(nb.subset(te)), truth[te], 25)
    # the hand-set vote (no far weights) can only guess between the twins
    x = candidate_features(nb.subset(te))
    w0 = prior_weights(FeatureSpec(), best.thresholds_km, K)
    hand = nb.near[te][np.arange(te.sum()), np.argmax(x @ w0, axis=1)]
    assert _acc(hand, truth[te], 25) < 0.7
    assert got >= 0.95
    far_cols = [i for i, n in enumerate(FeatureSpec().names()) if n.startswith("far_")]
    far_w = best.coef_[far_cols]  # learned: far neighbours count against a candidate
    assert np.all(far_w <= 0) and far_w.sum() < 0


def test_shapes_ranking_and_probabilities():
    nb, truth = dense_world(120, seed=3, smallest=1)  # some queries have no cluster
    r = BestRefiner().fit(nb, truth)
    pred = r.predict(nb)
    assert pred.shape == (120, 2)
    ranking = r.rank(nb)
    assert ranking.candidates.shape == (120, K, 2) and ranking.scores.shape == (120, K)
    assert np.allclose(ranking.scores.sum(axis=1), 1.0)
    assert np.all(np.diff(ranking.scores, axis=1) <= 1e-12)
    np.testing.assert_array_equal(ranking.top1(), pred)
    # every candidate is one of the query's neighbours, each once
    for i in (0, 57, 119):
        assert sorted(map(tuple, ranking.candidates[i])) == sorted(map(tuple, nb.near[i]))
    # confidence that the answer is within 25 km: high where the pick is right, low elsewhere
    conf = mass_within(ranking, 25.0)
    assert conf.shape == (120, K) and np.all((conf > 0) & (conf <= 1 + 1e-9))
    hit = distance_km(pred, truth) <= 25
    assert 0 < hit.sum() < 120
    assert conf[hit, 0].mean() > conf[~hit, 0].mean() + 0.2


def test_deterministic():
    nb, truth = dense_world(150, seed=4)
    a, b = BestRefiner().fit(nb, truth), BestRefiner().fit(nb, truth)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert (a.sharpness_, a.l2_, a.temperature_) == (b.sharpness_, b.l2_, b.temperature_)
    np.testing.assert_array_equal(a.rank(nb).scores, b.rank(nb).scores)


def test_errors():
    nb, truth = dense_world(60, seed=5)
    with pytest.raises(InputError, match="not fitted"):
        BestRefiner().predict(nb)
    with pytest.raises(InputError, match="not fitted"):
        BestRefiner().save("unused.json")
    with pytest.raises(InputError, match="true positions"):
        BestRefiner().fit(nb, truth[:-1])
    r = BestRefiner(sharpness=2.0, l2=1e-3).fit(nb, truth)
    with pytest.raises(InputError, match="fitted on 20 near and 20 far"):
        r.predict(nb.truncate(10))


def test_save_load_roundtrip(tmp_path):
    nb, truth = dense_world(100, seed=6)
    r = BestRefiner().fit(nb, truth)
    path = tmp_path / "best.json"
    r.save(path)
    back = BestRefiner.load(path)
    np.testing.assert_array_equal(back.rank(nb).scores, r.rank(nb).scores)
    np.testing.assert_array_equal(back.predict(nb), r.predict(nb))
    d = json.loads(path.read_text())
    d["fitted"]["coef_"]["ndarray"] = d["fitted"]["coef_"]["ndarray"][:-1]
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="malformed"):
        BestRefiner.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(InputError, match="not a saved geolocus refiner"):
        BestRefiner.load(tmp_path / "other.json")
    with pytest.raises(InputError, match="not found"):
        BestRefiner.load(tmp_path / "missing.json")


def _write_neighbours(path, nb: Neighbours) -> None:
    cols = ["IMG_ID"]
    cols += [
        f"{kind}_{i}_{c}" for kind in ("near", "far") for i in range(K) for c in ("lat", "lon")
    ]
    rows = [",".join(cols)]
    for i, qid in enumerate(nb.ids):
        vals = np.concatenate([nb.near[i].ravel(), nb.far[i].ravel()])
        rows.append(qid + "," + ",".join(f"{v:.6f}" for v in vals))
    path.write_text("\n".join(rows) + "\n")


def write_world(folder, nb: Neighbours, truth: np.ndarray):
    """The neighbours CSV and the labels CSV of a generated world, for the CLI."""
    nfile, lfile = folder / "nb.csv", folder / "labels.csv"
    _write_neighbours(nfile, nb)
    lfile.write_text(
        "IMG_ID,LAT,LON\n"
        + "".join(f"{q},{t[0]:.6f},{t[1]:.6f}\n" for q, t in zip(nb.ids, truth, strict=True))
    )
    return nfile, lfile


def test_cli_fit_save_and_reuse(tmp_path, capsys):
    nb, truth = dense_world(80, seed=7)
    nfile, lfile = write_world(tmp_path, nb, truth)
    out1, out2, model = tmp_path / "p1.csv", tmp_path / "p2.csv", tmp_path / "m.json"
    base = ["refine", "--neighbours", str(nfile), "--method", "best"]
    assert main([*base, "--out", str(out1)]) == 2
    assert "give --fit and --labels" in capsys.readouterr().err
    fit = ["--fit", str(nfile), "--labels", str(lfile)]
    assert main([*base, "--out", str(out1), *fit, "--save-refiner", str(model)]) == 0
    assert main([*base, "--out", str(out2), "--refiner-file", str(model)]) == 0
    assert out1.read_text() == out2.read_text()
    pred = read_coords(out1).set_index("IMG_ID").loc[list(nb.ids), ["LAT", "LON"]].to_numpy()
    assert _acc(pred, truth, 25) >= 0.9
    kde = ["refine", "--neighbours", str(nfile), "--method", "kde", "--out", str(out2)]
    assert main([*kde, "--refiner-file", str(model)]) == 2
    assert "saved refiner is 'best', not 'kde'" in capsys.readouterr().err


@pytest.mark.slow
def test_cross_validated_best_beats_dualgeo_on_shared_neighbours(im2gps3k):
    nb = read_neighbours(im2gps3k / "g3_neighbours.csv")
    lab = read_coords(im2gps3k / "labels.csv").set_index("IMG_ID")
    truth = lab.loc[list(nb.ids), ["LAT", "LON"]].to_numpy()
    folds = grouped_folds(nb.ids, 5, group=photographer)

    def cv(name: str) -> list[float]:
        pred = cross_val_predict(lambda: create_refiner(name), nb, truth, folds)
        return score_errors(distance_km(pred, truth)).row()

    best, dual = cv("best"), cv("dualgeo")
    # 1 / 25 / 200 / 750 / 2500 km, in percent; measured 16.50/37.58/51.83/67.67/83.10
    # against 13.39/36.91/50.71/65.89/80.30
    assert best[1] >= dual[1] + 0.3
    assert best[2] >= dual[2] + 0.5
    assert best[0] >= dual[0] + 2.0 and best[4] >= dual[4] + 2.0


# -- photo text (OCR evidence) -----------------------------------------------------------


def _place(lat: float, lon: float, name: str = "somewhere") -> PlaceMatch:
    return PlaceMatch(name, "place", float(lat), float(lon), 100_000, "", 1.0)


def text_world(n: int, seed: int) -> tuple[Neighbours, np.ndarray, list]:
    """Two equal clusters of 4 neighbours at random ranks, the truth and a decoy 3000+ km
    away: the neighbours cannot tell them apart. 60 % of the photos name a place at the
    truth, 10 % one at the decoy (a misleading sign), the rest have no text."""
    rng = np.random.default_rng(seed)
    truth = _random_points(rng, (n,))
    near = _random_points(rng, (n, K))
    evidence: list = []
    for i in range(n):
        decoy = _random_points(rng, ())
        while distance_km(decoy, truth[i]) < 3000:
            decoy = _random_points(rng, ())
        slots = rng.choice(K, 8, replace=False)
        near[i, slots[:4]] = _blob(rng, truth[i], 4, 0.02)
        near[i, slots[4:]] = _blob(rng, decoy, 4, 0.02)
        u = rng.uniform()
        at = truth[i] if u < 0.6 else decoy if u < 0.7 else None
        evidence.append(
            None if at is None else TextEvidence(lines=("a sign",), places=(_place(*at),))
        )
    ids = [f"x{i}_{i % 40}@N00.jpg" for i in range(n)]
    return Neighbours(ids=ids, near=near, far=np.zeros((n, 0, 2))), truth, evidence


def test_text_features_of_evidence():
    near = np.array([[[37.98, 23.73], [48.86, 2.35], [38.5, 23.0]]])  # Athens, Paris, Greece
    ev = TextEvidence(
        lines=("ΑΘΗΝΑ",),
        script_countries=frozenset({"GR", "CY"}),
        language="el",
        language_countries=frozenset({"GR"}),
        named_countries=frozenset({"FR"}),
        places=(_place(37.97, 23.72, "athens"),),
    )
    x = text_features(near, [ev])
    col = dict(zip(text_feature_names(), range(x.shape[-1]), strict=True))
    assert x[0, :, col["txt_script"]].tolist() == [1, 0, 1]
    assert x[0, :, col["txt_lang"]].tolist() == [1, 0, 1]
    assert x[0, :, col["txt_lang_en"]].tolist() == [0, 0, 0]
    assert x[0, :, col["txt_country"]].tolist() == [0, 1, 0]
    assert x[0, :, col["txt_place_25km"]].tolist() == [1, 0, 0]
    assert x[0, :, col["txt_place_200km"]].tolist() == [1, 0, 1]
    assert not text_features(near, [None]).any() and not text_features(near, None).any()
    assert not text_features(near, [TextEvidence()]).any()  # no text: all zeros


def test_text_evidence_beats_neighbours_alone():
    nb, truth, ev = text_world(400, seed=11)
    folds = grouped_folds(nb.ids, 4, group=photographer)
    plain = cross_val_predict(lambda: BestRefiner(sharpness=2.0, l2=1e-3), nb, truth, folds)
    nbt = nb.with_evidence(ev)
    text = cross_val_predict(lambda: BestRefiner(sharpness=2.0, l2=1e-3), nbt, truth, folds)
    assert _acc(text, truth, 25) >= _acc(plain, truth, 25) + 0.2
    fitted = BestRefiner(sharpness=2.0, l2=1e-3).fit(nbt, truth)
    w = dict(zip(fitted.spec_.names(), fitted.coef_, strict=True))
    assert w["txt_place_25km"] > 0.5  # learned to trust a named place


def test_text_model_ranks_photos_without_text_as_before(tmp_path):
    nb, truth, ev = text_world(150, seed=12)
    plain = BestRefiner(sharpness=2.0, l2=1e-3).fit(nb, truth)
    assert not plain.spec_.text and len(plain.coef_) == len(FeatureSpec().names())
    text = BestRefiner(sharpness=2.0, l2=1e-3).fit(nb.with_evidence(ev), truth)
    assert text.spec_.text and text.text_l2_ in text.text_l2_grid
    none = np.array([e is None for e in ev])
    s_plain = plain.decision_function(nb)
    s_text = text.decision_function(nb.with_evidence(ev))
    np.testing.assert_allclose(s_text[none], s_plain[none], rtol=1e-9, atol=1e-9)
    assert not np.allclose(s_text[~none], s_plain[~none])
    # without evidence a text model ranks every query as a photo without text
    np.testing.assert_allclose(text.decision_function(nb), s_plain, rtol=1e-9, atol=1e-9)
    with pytest.raises(InputError, match="evidence"):
        BestRefiner(text=True).fit(nb, truth)
    path = tmp_path / "text.json"
    text.save(path)
    back = BestRefiner.load(path)
    assert back.spec_.text and back.text_l2_ == text.text_l2_
    np.testing.assert_allclose(back.decision_function(nb.with_evidence(ev)), s_text)
    # subsets keep each query's evidence
    sub = nb.with_evidence(ev).subset(np.arange(10, 20))
    assert list(sub.evidence) == ev[10:20]
