"""``geolocus benchmark im2gps3k`` on a small generated stand-in for IM2GPS3k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fakes import PLACES, ColourEncoder, photo
from geolocus.cli.main import main
from geolocus.data.im2gps3k import photographer
from geolocus.eval.folds import grouped_folds
from geolocus.models.embedder import BackboneEmbedder
from geolocus.pipeline import benchmark as bm


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """IM2GPS3k's layout: images/ named ..._<owner>.jpg, labels.csv with extra columns.
    Each photographer shot one place; every place has photographers in several folds."""
    root = tmp_path_factory.mktemp("im2gps3k")
    rows = []
    for j, (name, (lat, lon, col)) in enumerate(PLACES.items()):
        for o in range(3):
            for i in range(2):
                fid = f"{1000 + 100 * j + 10 * o + i}_abc_{j}{o}_{name}{o}@N00.jpg"
                photo(root / "images" / fid, col, seed=10 * o + i, size=(48, 40))
                rows.append(f"{fid},{lat + 0.001 * i},{lon},urban\n")
    (root / "labels.csv").write_text("IMG_ID,LAT,LON,S3_Label\n" + "".join(rows))
    return root


def _emb() -> BackboneEmbedder:
    return BackboneEmbedder(ColourEncoder())


def test_cv3_predicts_every_photo_once_from_other_photographers(data, tmp_path):
    ids = [line.split(",")[0] for line in (data / "labels.csv").read_text().splitlines()[1:]]
    folds = grouped_folds(ids, 3, group=photographer)
    assert all(len({folds[i] for i, x in enumerate(ids) if photographer(x) == p}) == 1
               for p in {photographer(x) for x in ids})  # fmt: skip
    res = bm.cross_validate(
        refiners=["nearest", "dualgeo", "best"],
        data=data,
        cache=tmp_path / "cache",
        k=4,
        k_far=2,
        progress=False,
        embedder=_emb(),
    )
    assert res.n_queries == 24 and sum(res.n_database) == 2 * 24
    # colour = place: a photo is placed right exactly when its place has photos from
    # photographers of the other folds (grouping can leave a place out of a database)
    place = [x.split("_")[-1][:-9] for x in ids]
    known = [
        any(place[j] == place[i] and folds[j] != folds[i] for j in range(24)) for i in range(24)
    ]
    assert 0 < sum(known) < 24
    for m in ("nearest", "dualgeo", "best"):
        s = res.scores[m]
        assert s.n == 24 and s.n_missing == 0
        assert s.acc["25"] == pytest.approx(100.0 * np.mean(known))
    js = json.loads(json.dumps(res.to_json()))
    assert js["protocol"] == "cv3" and set(js["scores"]) == {"nearest", "dualgeo", "best"}
    table = res.table()
    assert "DualGeo (published)" in table and "nearest" in table


def test_cached_features_reuse_a_store_with_tokens(data, tmp_path, monkeypatch):
    from geolocus.encoders.features import cache_dir, extract_features

    emb = _emb()
    _, ids, paths, _ = bm.labelled_photos(data)
    extract_features(
        emb.encoder, paths, cache_dir(tmp_path, emb.encoder, "im2gps3k"), ids=ids,
        tokens="full", progress=False,
    )  # fmt: skip
    monkeypatch.setattr(ColourEncoder, "forward", lambda s, x: pytest.fail("recomputed"))
    store = bm.cached_features(emb, paths, ids, tmp_path, progress=False)
    assert len(store) == 24 and store.tokens is not None


def test_holdout_builds_on_disk_and_predicts_from_files(data, tmp_path):
    res, preds, truth = bm.holdout(
        refine="dualgeo",
        data=data,
        db_dir=tmp_path / "db",
        test_fold=2,
        sample=5,
        k=4,
        k_far=2,
        progress=False,
        embedder=_emb(),
    )
    assert res.n_queries == len(preds) == len(truth) == 5
    assert (tmp_path / "db" / "manifest.json").is_file() and res.extra["built"]
    from geolocus.index import Database

    db_places = {x.split("_")[-1][:-9] for x in Database.open(tmp_path / "db").ids}
    known = [Path(p.image).name.split("_")[-1][:-9] in db_places for p in preds]
    assert res.scores["dualgeo"].acc["25"] == pytest.approx(100.0 * np.mean(known))
    text = bm.examples_table(preds[:2], truth[:2])
    assert "true place" in text and len(text.splitlines()) == 4
    html = bm.write_truth_map(preds[0], truth[0], tmp_path / "m.html").read_text()
    assert "true location shown" in html
    again, _, _ = bm.holdout(
        refine="dualgeo", data=data, db_dir=tmp_path / "db", test_fold=2, sample=5,
        progress=False, embedder=_emb(),
    )  # fmt: skip
    assert not again.extra["built"]  # the database was up to date


@pytest.mark.slow
def test_cli_cv3_and_holdout_with_lite0(data, tmp_path, capsys):
    out = tmp_path / "cv.json"
    argv = ["benchmark", "im2gps3k", "--protocol", "cv3", "--model", "efficientnet-lite0"]
    argv += ["--refine", "nearest,kde", "--data", str(data), "--cache", str(tmp_path / "c")]
    assert main([*argv, "--json", str(out), "--markdown"]) == 0
    cap = capsys.readouterr().out
    assert "| nearest |" in cap and "constant-guess floor" in cap
    js = json.loads(out.read_text())
    assert js["model"] == "efficientnet-lite0" and js["n_queries"] == 24
    assert set(js["scores"]) == {"nearest", "kde"}
    assert any(p.name.startswith("efficientnet-lite0-im2gps3k") for p in (tmp_path / "c").iterdir())
    argv = ["benchmark", "im2gps3k", "--protocol", "holdout", "--model", "efficientnet-lite0"]
    argv += ["--data", str(data), "--db", str(tmp_path / "db"), "--sample", "4", "--show", "2"]
    assert main([*argv, "--map", str(tmp_path / "demo.html")]) == 0
    cap = capsys.readouterr().out
    assert "guess 1" in cap and "true place" in cap and "holdout" in cap
    assert (tmp_path / "demo.html").is_file()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--protocol", "cv10"], "unknown protocol"),
        (["--protocol", "holdout", "--refine", "nearest,kde"], "one refiner"),
        (["--refine", "magic"], "unknown refine method"),
    ],
)
def test_cli_errors(data, tmp_path, capsys, extra, match):
    argv = ["benchmark", "im2gps3k", "--data", str(data), "--cache", str(tmp_path)]
    assert main(argv + extra) == 2
    assert match in capsys.readouterr().err


def test_cli_without_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEOLOCUS_DATA", raising=False)
    assert main(["benchmark", "im2gps3k", "--data", str(tmp_path / "none")]) == 2
    assert "IM2GPS3k not found" in capsys.readouterr().err
    assert np.isfinite(list(bm.CONSTANT_FLOOR.values())).all()
