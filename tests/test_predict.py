"""``geolocus predict`` end to end (real EfficientNet-Lite0, generated photos) and the
Python API over a database built by ``geolocus index build``."""

from __future__ import annotations

import csv
import io
import json
import socket
from pathlib import Path

import pytest

from fakes import PLACES, bomb, photo
from geolocus.cli.main import main


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """A lite0 database of the colour world (two photos per place)."""
    tmp = tmp_path_factory.mktemp("predict")
    img = tmp / "photos"
    rows = []
    for name, (lat, lon, col) in PLACES.items():
        for i in range(2):
            photo(img / f"{name}{i}.jpg", col, seed=i, size=(64, 48))
            rows.append(f"{name}{i}.jpg,{lat + 0.001 * i},{lon}\n")
    (tmp / "labels.csv").write_text("IMG_ID,LAT,LON\n" + "".join(rows))
    out = tmp / "db"
    argv = ["index", "build", "--images", str(img), "--labels", str(tmp / "labels.csv")]
    assert main([*argv, "--model", "efficientnet-lite0", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def queries(tmp_path_factory) -> dict[str, Path]:
    q = tmp_path_factory.mktemp("queries")
    out = {n: photo(q / f"{n}.jpg", c, seed=7, size=(64, 48)) for n, (_, _, c) in PLACES.items()}
    out["exif"] = photo(
        q / "exif.jpg", PLACES["tokyo"][2], seed=8, size=(64, 48), exif_gps=(35.0, 135.0)
    )
    bad = tmp_path_factory.mktemp("bad")
    out["text"] = bad / "text.jpg"
    out["text"].write_text("hello")
    out["bomb"] = bomb(bad / "bomb.png")
    return out


#: Small heads over EfficientNet-Lite0 features, GeoCLIP's location encoder untrained.
SMALL_LITE0 = {
    "backbone": "efficientnet-lite0",
    "embed_dim": 1280,
    "hidden_dim": 16,
    "dim": 16,
    "pretrained_location": False,
    "location_options": {"n_freq": 8, "hidden": 16},
    "queue_size": 0,
}


def _run(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.slow
def test_predict_table_from_a_list_file(db, queries, tmp_path, capsys):
    lst = tmp_path / "photos.txt"
    lst.write_text(f"# my photos\n{queries['paris']}\n\n{queries['exif']}\n")
    rc, out, err = _run(capsys, ["predict", str(lst), "--db", str(db), "--top-k", "3"])
    assert rc == 0 and err == ""
    assert "paris.jpg" in out and "confidence" in out and "± km" in out
    assert "photo's own EXIF GPS: 35.0000, 135.0000 (not used" in out
    assert out.count("\n  1 ") == 2  # one guess-1 row per photo
    assert all(f"\n  {r} " not in out for r in (4, 5))  # --top-k 3


@pytest.mark.slow
def test_predict_folder_to_json_csv_and_maps(db, queries, tmp_path, capsys):
    folder = str(queries["paris"].parent)
    argv = ["predict", folder, "--db", str(db), "-f", "json", "-o", str(tmp_path / "p.json")]
    rc, _, err = _run(capsys, [*argv, "--map", str(tmp_path / "m.html")])
    assert rc == 0 and "wrote 5 predictions" in err
    js = {Path(p["image"]).name: p for p in json.loads((tmp_path / "p.json").read_text())}
    assert set(js) == {f"{n}.jpg" for n in [*PLACES, "exif"]}
    g = js["sydney.jpg"]["guesses"]
    assert 1 <= len(g) <= 5 and all(0 < x["confidence"] <= 1 for x in g)
    assert all(x["place"] and x["country_code"] for x in g)
    assert len(js["sydney.jpg"]["neighbours"]["near"]) == 8  # k=20, but 8 photos in the db
    assert js["exif.jpg"]["exif_gps"] == pytest.approx([35.0, 135.0])
    assert js["exif.jpg"]["exif_error_km"] > 0 and js["paris.jpg"]["exif_gps"] is None
    maps = sorted(p.name for p in tmp_path.glob("m-*.html"))
    assert maps == [f"m-00{i}.html" for i in range(1, 6)]
    assert (tmp_path / "m-001.html").read_text().startswith("<!DOCTYPE html>")
    rc, out, _ = _run(capsys, ["predict", str(queries["tokyo"]), "--db", str(db), "-f", "csv"])
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and [r["rank"] for r in rows] == [str(i + 1) for i in range(len(rows))]


@pytest.mark.slow
def test_bad_photos_are_one_line_errors_and_exit_1(db, queries, tmp_path, capsys):
    argv = ["predict", str(queries["text"]), str(tmp_path / "missing.jpg"), str(queries["nairobi"])]
    rc, out, err = _run(capsys, [*argv, str(queries["bomb"]), "--db", str(db)])
    assert rc == 1
    lines = err.strip().splitlines()
    assert lines[-1] == "geolocus: 3 of 4 photos could not be geolocated"
    errors = [x for x in lines if x.startswith("geolocus: error:")]
    assert len(errors) == 3
    assert any("not an image" in e for e in errors) and any("no such file" in e for e in errors)
    assert any("too many pixels" in e for e in errors)
    assert "nairobi.jpg" in out and "text.jpg" not in out


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--model", "efficientnet-lite2"], "built with model 'efficientnet-lite0'"),
        (["--refine", "oracle"], "unknown refine method"),
        (["--format", "xml"], "unknown format"),
        (["--lmm", "http://127.0.0.1:9/v1"], "--lmm needs --lmm-model"),
        (["--objective", "softmax"], "method 'dualgeo' has no training objective"),
        (["--refine", "best", "--objective", "mse"], "unknown objective 'mse'"),
    ],
)
def test_usage_errors_exit_2(db, queries, capsys, extra, match):
    rc, _, err = _run(capsys, ["predict", str(queries["paris"]), "--db", str(db), *extra])
    assert rc == 2 and err.startswith("geolocus: error:") and match in err
    assert err.count("\n") == 1


def test_objective_is_checked_before_anything_loads(db, queries, tmp_path, capsys):
    """``--objective`` on predict, serve and geotag: a method without a choice of
    objectives, or predict without a database to fit on, is one line before any work."""
    rc, _, err = _run(
        capsys, ["predict", str(queries["paris"]), "--refine", "best", "--objective", "softmax"]
    )
    assert rc == 2 and "give --db" in err and err.count("\n") == 1
    rc, _, err = _run(capsys, ["serve", "--db", str(db), "--objective", "georanker"])
    assert rc == 2 and "has no training objective" in err and err.count("\n") == 1
    (tmp_path / "trip").mkdir()
    rc, _, err = _run(capsys, ["geotag", str(tmp_path / "trip"), "--objective", "softmax"])
    assert rc == 2 and "'collection' has no training objective" in err
    assert not (tmp_path / "trip" / ".geolocus").exists()


@pytest.mark.slow
def test_best_fitted_to_another_objective_is_cached_apart(db, queries, capsys):
    """``predict --refine best --objective georanker``: fitted to GeoRanker's loss on the
    database, cached in a file of its own beside the default objective's."""
    argv = ["predict", str(queries["paris"]), "--db", str(db), "--refine", "best", "-f", "json"]
    rc, out, _ = _run(capsys, [*argv, "--objective", "georanker"])
    assert rc == 0 and json.loads(out)[0]["guesses"]
    rc, _, _ = _run(capsys, argv)
    assert rc == 0
    saved = {
        p.name: json.loads(p.read_text())["state"]["params"]["objective"]
        for p in (db / "refiners").glob("best-*.json")
    }
    assert sorted(saved.values()) == ["georanker", "softmax"], saved


def test_missing_database_and_no_photos(tmp_path, queries, capsys):
    rc, _, err = _run(capsys, ["predict", str(queries["paris"]), "--db", str(tmp_path / "x")])
    assert rc == 2 and "no geolocus database" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(capsys, ["predict", str(tmp_path / "empty"), "--db", str(tmp_path)])
    assert rc == 2 and "no photos given" in err


@pytest.mark.slow
def test_unreachable_lmm_server(db, queries, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["predict", str(queries["paris"]), str(queries["tokyo"]), "--db", str(db)]
    argv += ["--lmm", f"http://127.0.0.1:{port}/v1", "--lmm-model", "qwen-vl"]
    rc, out, err = _run(capsys, argv)
    assert rc == 2 and "unreachable" in err and err.count("\n") == 1
    rc, out, err = _run(capsys, [*argv, "--lmm-fallback"])
    assert rc == 0 and err.count("geolocus: warning:") == 1 and "unreachable" in err
    assert "paris.jpg" in out and "tokyo.jpg" in out and "note: lmm failed" in out


@pytest.mark.slow
def test_python_api_and_best_refiner(db, queries):
    from geolocus import Geolocator, PlaceSettings

    geo = Geolocator.from_database(db, refine="best", places=PlaceSettings(top_k=2))
    assert (db / "refiners").is_dir()  # fitted by leave-one-out, cached beside the index
    preds = geo([queries["paris"], str(queries["text"])])
    assert preds[0].ok and len(preds[0].guesses) <= 2 and preds[1].error
    assert preds[0].top.place is not None and preds[0].top.uncertainty_km > 0
    assert json.loads(preds[0].to_json())["image"].endswith("paris.jpg")
    assert json.loads(json.dumps(preds[0].to_geojson()))["type"] == "FeatureCollection"
    assert geo.timing["forward"] > 0 and geo.timing["total"] >= geo.timing["forward"]


def _model_database(model_file: Path, queries: dict[str, Path], tmp_path: Path) -> Path:
    """``index build`` of the query photos (one per place) with a trained model file."""
    img = queries["paris"].parent
    (tmp_path / "l.csv").write_text(
        "IMG_ID,LAT,LON\n" + "".join(f"{n}.jpg,{la},{lo}\n" for n, (la, lo, _) in PLACES.items())
    )
    db = tmp_path / "db"
    argv = ["index", "build", "--images", str(img), "--labels", str(tmp_path / "l.csv")]
    assert main([*argv, "--model", str(model_file), "--out", str(db)]) == 0
    return db


@pytest.mark.slow
def test_model_file_database_adds_gallery_candidates(queries, tmp_path, capsys, monkeypatch):
    """A trained model file (a GeoCLIP head over lite0): its retrieval vectors fill the
    database and its location head adds GPS-gallery candidates to the answer."""
    import torch

    from geolocus.models.geoclip import GeoCLIP, GeoCLIPConfig

    monkeypatch.setenv("GEOLOCUS_CACHE", str(tmp_path / "cache"))  # the encoded gallery
    torch.manual_seed(0)
    cfg = GeoCLIPConfig(**SMALL_LITE0)
    model_file = tmp_path / "geoclip-lite0.safetensors"
    GeoCLIP(cfg).save(model_file)
    db = _model_database(model_file, queries, tmp_path)
    capsys.readouterr()
    assert main(["index", "info", str(db)]) == 0
    info = capsys.readouterr().out
    assert "location head     yes" in info and "dim               16" in info
    rc, out, _ = _run(capsys, ["predict", str(queries["paris"]), "--db", str(db), "-f", "json"])
    sources = {g["source"] for g in json.loads(out)[0]["guesses"]}
    assert rc == 0 and any("gallery" in s for s in sources)
    GeoCLIP(cfg).save(model_file)  # other weights at the same path: the database refuses them
    rc, _, err = _run(capsys, ["predict", str(queries["paris"]), "--db", str(db)])
    assert rc == 2 and "another version" in err


def _dualgeo_file(path: Path) -> None:
    import torch

    from geolocus.models.dualgeo import DualGeo, DualGeoConfig

    torch.manual_seed(0)
    m = DualGeo(DualGeoConfig(**SMALL_LITE0, token_dim=1280, classes=4, width=16, heads=2))
    m.prepare(torch.randn(20, 49, 1280))  # a codebook over lite0-sized tokens
    m.save(path)


def _transgeoclip_file(path: Path) -> None:
    import torch

    from geolocus.models.transgeoclip import TransGeoCLIP, TransGeoCLIPConfig

    torch.manual_seed(0)
    cfg = {"n_freq": 8, "d_model": 8, "layers": 1, "heads": 2, "anchors": 16}
    TransGeoCLIP(
        TransGeoCLIPConfig(
            backbone="efficientnet-lite0", embed_dim=1280, dim=16, location_options=cfg
        )
    ).save(path)


@pytest.mark.slow
@pytest.mark.parametrize("make", [_dualgeo_file, _transgeoclip_file])
def test_dualgeo_and_transgeoclip_files_serve_a_database(
    make, queries, tmp_path, capsys, monkeypatch
):
    """The contract between ``geolocus train`` and the pipeline: DualGeo takes the patch
    tokens (fused ⊕ raw: 16 + 1280 dims), TransGeoCLIP encodes the gallery with its own
    trained location encoder; both answer with gallery candidates beside the neighbours."""
    monkeypatch.setenv("GEOLOCUS_CACHE", str(tmp_path / "cache"))
    model_file = tmp_path / "m.safetensors"
    make(model_file)
    db = _model_database(model_file, queries, tmp_path)
    capsys.readouterr()
    from geolocus.models import load_model

    dim = load_model(model_file).retrieval_dim
    assert main(["index", "info", str(db)]) == 0
    assert f"dim               {dim}" in capsys.readouterr().out
    rc, out, _ = _run(capsys, ["predict", str(queries["tokyo"]), "--db", str(db), "-f", "json"])
    guesses = json.loads(out)[0]["guesses"]
    assert rc == 0 and guesses
    assert any("gallery" in g["source"] for g in guesses)
    # the photo itself is in the database: its own vector is its nearest neighbour
    near = json.loads(out)[0]["neighbours"]["near"]
    assert near[0]["id"] == "tokyo.jpg" and near[0]["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_model_file_answers_alone_without_a_database(queries, tmp_path, capsys, monkeypatch):
    """``predict PHOTO --model FILE`` without --db: a head with a location output answers
    from its own places (here GeoCLIP's gallery), with the heat layer of its distribution."""
    import torch

    from geolocus.models.geoclip import GeoCLIP, GeoCLIPConfig

    monkeypatch.setenv("GEOLOCUS_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model_file = tmp_path / "geoclip-lite0.safetensors"
    GeoCLIP(GeoCLIPConfig(**SMALL_LITE0)).save(model_file)
    argv = ["predict", str(queries["paris"]), "--model", str(model_file), "-f", "json"]
    rc, out, err = _run(capsys, [*argv, "--heatmap", "--top-k", "3"])
    assert rc == 0, err
    answer = json.loads(out)[0]
    assert len(answer["guesses"]) == 3 and all("gallery" in g["source"] for g in answer["guesses"])
    probs = [g["confidence"] for g in answer["guesses"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert len(answer["heatmap"]["probability"]) == 100_000  # every gallery location
    # the same answer from the Python API
    from geolocus.pipeline import Geolocator

    geo = Geolocator.from_model(model_file, warmup=False)
    top = geo.predict([queries["paris"]])[0].top
    assert (top.lat, top.lon) == pytest.approx(
        (answer["guesses"][0]["lat"], answer["guesses"][0]["lon"]), abs=1e-6
    )


def test_model_file_alone_bad_inputs(queries, tmp_path, capsys):
    """A model without a location output, a missing file, and --world beside --model."""
    photo_ = str(queries["paris"])
    rc, _, err = _run(capsys, ["predict", photo_, "--model", str(tmp_path / "none.safetensors")])
    assert rc == 2 and "model file not found" in err and "Traceback" not in err
    rc, _, err = _run(capsys, ["predict", photo_, "--model", "efficientnet-lite0"])
    assert rc == 2 and "no location output" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _run(capsys, ["predict", photo_, "--model", "x.safetensors", "--world", "geoclip"])
    assert rc == 2 and "give one" in err
    (tmp_path / "bad.safetensors").write_text("hi")  # not a model file
    rc, _, err = _run(capsys, ["predict", photo_, "--model", str(tmp_path / "bad.safetensors")])
    assert rc == 2 and "not a safetensors file" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "dir.safetensors").mkdir()  # a folder where the file is expected
    rc, _, err = _run(capsys, ["predict", photo_, "--model", str(tmp_path / "dir.safetensors")])
    assert rc == 2 and "model file not found" in err
