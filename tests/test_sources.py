"""Sources at scale: WebDataset tar shards and tables, sharded staging, executors, the CLI."""

from __future__ import annotations

import builtins
import errno
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fakes import (
    PLACES,
    ColourEncoder,
    always_dying_colour_embedder,
    colour_embedder,
    dying_colour_embedder,
    photo,
)
from geolocus.cli.main import main
from geolocus.data.sources import read_shard, table_source, tar_source
from geolocus.errors import InputError
from geolocus.index import Database
from geolocus.index.build import (
    add_to_database,
    build_database,
    gather_inputs,
    inputs_source,
    read_report,
)
from geolocus.index.executors import PoolExecutor, RayExecutor, make_executor
from geolocus.index.shards import STAGING
from geolocus.models.embedder import BackboneEmbedder

COLOURS = [c for _, _, c in PLACES.values()]
COORDS = [(la, lo) for la, lo, _ in PLACES.values()]


def _jpeg(colour, seed: int) -> bytes:
    buf = io.BytesIO()
    p = photo(Path("/tmp") / f"_src_{seed}.jpg", colour, seed=seed)
    buf.write(p.read_bytes())
    p.unlink()
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _shard(path: Path, samples: list[tuple[str, bytes | None, object]]) -> Path:
    """A tar of samples (key, image bytes or None, JSON object / raw text / None)."""
    with tarfile.open(path, "w") as tar:
        for key, img, meta in samples:
            if img is not None:
                _add(tar, f"{key}.jpg", img)
            if meta is not None:
                text = meta if isinstance(meta, str) else json.dumps(meta)
                _add(tar, f"{key}.json", text.encode())
    return path


def _good(prefix: str, n: int, seed: int = 0) -> list[tuple[str, bytes | None, object]]:
    out: list[tuple[str, bytes | None, object]] = []
    for i in range(n):
        j = (i + seed) % 4
        la, lo = COORDS[j]
        meta = {"lat": la, "lon": lo} if i % 2 else {"latitude": la, "longitude": lo}
        out.append((f"{prefix}/{i:04d}", _jpeg(COLOURS[j], seed * 100 + i), meta))
    return out


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Three shards: a good one; one with a corrupt image, a bad JSON, an invalid and a
    missing position and a repeated key; one with no positions at all."""
    d = tmp_path / "data"
    d.mkdir()
    _shard(d / "shard-000.tar", _good("a", 6))
    bad = _good("b", 4, seed=1)
    bad += [
        ("b/corrupt", b"\xff\xd8\xff garbage", {"lat": 1, "lon": 2}),
        ("b/badjson", _jpeg(COLOURS[0], 77), "{not json"),
        ("b/invalid", _jpeg(COLOURS[1], 78), {"lat": 123.0, "lon": 5}),
        ("b/nopos", _jpeg(COLOURS[2], 79), None),
        ("b/0001", _jpeg(COLOURS[3], 80), {"lat": 0, "lon": 0}),  # repeated key
    ]
    _shard(d / "shard-001.tar", bad)
    _shard(d / "shard-002.tar", [(k, img, None) for k, img, _ in _good("c", 3, seed=2)])
    return d


def _emb() -> BackboneEmbedder:
    return BackboneEmbedder(ColourEncoder())


def test_tar_shards_stream_records_and_report_problems(shards):
    src = tar_source(str(shards / "shard-*.tar"))
    assert [s.name for s in src.shards] == ["shard-000.tar", "shard-001.tar", "shard-002.tar"]
    problems = []
    recs = [r for s in src.shards for r in read_shard(s, problems.append)]
    assert [r.id for r in recs][:6] == [f"a/{i:04d}" for i in range(6)]
    assert {r.id for r in recs} >= {"b/0000", "b/0001", "b/corrupt"}  # decoded later
    assert (recs[0].lat, recs[0].lon) == COORDS[0]
    got = {(p.shard, p.key, p.problem) for p in problems}
    assert got == {
        ("shard-001.tar", "b/badjson", "corrupt member"),
        ("shard-001.tar", "b/invalid", "invalid position"),
        ("shard-001.tar", "b/nopos", "no position"),
        ("shard-001.tar", "b/0001", "repeated key"),
        ("shard-002.tar", "", "shard without positions"),
    }


def test_a_truncated_tar_keeps_what_came_before(tmp_path):
    p = _shard(tmp_path / "s.tar", _good("k", 4))
    with tarfile.open(p) as t:
        third = t.getmember("k/0002.jpg")
    p.write_bytes(p.read_bytes()[: third.offset_data + 100])  # cut inside the third image
    problems = []
    recs = list(read_shard(tar_source(str(p)).shards[0], problems.append))
    assert [r.id for r in recs] == ["k/0000", "k/0001"] and len(problems) == 1
    assert problems[0].problem == "corrupt shard" and problems[0].key == "k/0002"
    assert problems[-1].shard == "s.tar"


def test_no_shards_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no tar shards match"):
        tar_source(str(tmp_path / "none-*.tar"))


def test_build_from_tar_shards(shards, tmp_path):
    db_dir = tmp_path / "db"
    res = build_database(db_dir, tar_source(str(shards / "*.tar")), _emb(), progress=False)
    db = Database.open(db_dir)
    assert len(db) == 10 == res.added  # 6 + 4 good ones of shard 1
    assert "b/corrupt" not in db and "a/0003" in db
    rep = {(r["id"], r["path"], r["problem"]) for r in read_report(db_dir)}
    assert ("b/corrupt", "shard-001.tar", "unreadable") in rep
    assert ("", "shard-002.tar", "shard without positions") in rep
    assert db.meta.set_index("id").loc["a/0000", "source"] == "shards"
    assert not (db_dir / STAGING).exists()
    nb = db.search(db.vectors()[:1], k=1)
    assert nb.near_ids[0, 0] == db.ids[0]
    again = build_database(db_dir, tar_source(str(shards / "*.tar")), _emb(), progress=False)
    assert again.up_to_date


def _table_photos(tmp_path: Path, n: int = 8) -> tuple[list[str], list[bytes], list]:
    (tmp_path / "img").mkdir(exist_ok=True)
    rel, data, pos = [], [], []
    for i in range(n):
        p = photo(tmp_path / "img" / f"p{i}.jpg", COLOURS[i % 4], seed=i)
        rel.append(f"img/p{i}.jpg")
        data.append(p.read_bytes())
        pos.append(COORDS[i % 4])
    return rel, data, pos


@pytest.mark.parametrize("form", ["parquet-paths", "parquet-bytes", "csv-paths"])
def test_build_from_a_table(tmp_path, form):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rel, data, pos = _table_photos(tmp_path)
    lat = [p[0] for p in pos]
    lon = [p[1] for p in pos]
    lat[5] = 999.0  # an invalid position
    if form == "csv-paths":
        t = tmp_path / "photos.csv"
        pd.DataFrame({"image": rel, "latitude": lat, "longitude": lon}).to_csv(t, index=False)
    else:
        col = data if form == "parquet-bytes" else rel
        t = tmp_path / "photos.parquet"
        table = pa.table({"image": col, "lat": lat, "lon": lon, "key": [f"k{i}" for i in range(8)]})
        pq.write_table(table, t, row_group_size=3)
    src = table_source(t, shard_size=3, id_column="key" if "bytes" in form else None)
    assert [s.size for s in src.shards] == [3, 3, 2] and src.photos == 8
    res = build_database(tmp_path / "db", src, _emb(), progress=False)
    db = Database.open(tmp_path / "db")
    want = [f"k{i}" for i in range(8)] if "bytes" in form else rel
    assert list(db.ids) == [w for i, w in enumerate(want) if i != 5] and res.added == 7
    assert [(p.id, p.problem) for p in res.problems] == [(want[5], "invalid position")]
    np.testing.assert_allclose(db.coords[0], COORDS[0])


def test_table_without_position_columns_is_one_error(tmp_path):
    t = tmp_path / "t.csv"
    t.write_text("image,x\na.jpg,1\n")
    with pytest.raises(InputError, match="no lat column"):
        table_source(t)


def test_a_folder_gives_the_same_database_whatever_its_shard_size(tmp_path):
    img = tmp_path / "photos"
    rows = []
    for i in range(7):
        photo(img / f"p{i}.jpg", COLOURS[i % 4], seed=i)
        rows.append(f"p{i}.jpg,{COORDS[i % 4][0]},{COORDS[i % 4][1]}\n")
    (tmp_path / "l.csv").write_text("IMG_ID,LAT,LON\n" + "".join(rows))
    inp = gather_inputs(img, tmp_path / "l.csv")
    build_database(tmp_path / "one", inputs_source(inp), _emb(), progress=False)
    assert len(inputs_source(inp).shards) == 1 and len(inputs_source(inp, 3).shards) == 3
    res = build_database(tmp_path / "three", inputs_source(inp, 3), _emb(), progress=False)
    a, b = Database.open(tmp_path / "one"), Database.open(tmp_path / "three")
    assert list(a.ids) == list(b.ids) and res.timing["forward_s"] > 0
    np.testing.assert_array_equal(a.vectors(), b.vectors())
    # the same folder is the same input, however it is cut: up to date
    assert build_database(
        tmp_path / "one", inputs_source(inp, 2), _emb(), progress=False
    ).up_to_date


def test_an_interrupted_build_redoes_only_the_unfinished_shard(shards, tmp_path, monkeypatch):
    src = tar_source(str(shards / "*.tar"))
    orig = ColourEncoder.forward
    seen: list[int] = []

    def forward(self, x):
        seen.append(len(x))
        if len(seen) == 5:  # shard 0 is 3 batches of 2: this is shard 1's second batch
            raise KeyboardInterrupt
        return orig(self, x)

    monkeypatch.setattr(ColourEncoder, "forward", forward)
    db_dir = tmp_path / "db"
    ex = make_executor(_emb(), colour_embedder, batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        build_database(db_dir, src, _emb(), ex, progress=False)
    staged = list((db_dir / STAGING).glob("*.npz"))
    assert len(staged) == 1 and staged[0].name.startswith("shard-000")
    assert not Database.exists(db_dir)
    seen.clear()
    seen.append(-99)  # no more interruptions
    build_database(db_dir, src, _emb(), ex, progress=False)
    # shard 0 (6 photos) not redone; shard 1 (4 decodable photos) redone whole
    assert seen[1:] == [2, 2]
    assert len(Database.open(db_dir)) == 10


def test_a_full_disk_keeps_the_good_staged_file(shards, tmp_path, monkeypatch):
    from geolocus.index import shards as shards_mod

    spec = tar_source(str(shards / "shard-000.tar")).shards[0]
    version = _emb().version
    out = shards_mod.embed_shard(_emb(), spec)
    good = shards_mod.shard_file(tmp_path / "staging", spec, version)
    shards_mod.save_shard(good, out, version)
    before = good.read_bytes()
    again = shards_mod.load_shard(good, version)
    assert again is not None and again.ids == out.ids

    def full(fh, **arrays):
        fh.write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards_mod.np, "savez", full)
    with pytest.raises(OSError, match="No space"):
        shards_mod.save_shard(good, out, version)
    assert good.read_bytes() == before and list(good.parent.iterdir()) == [good]
    good.write_bytes(before[:-50])  # a truncated file is not a finished shard
    assert shards_mod.load_shard(good, version) is None


def test_ray_missing_is_one_line(shards, tmp_path, monkeypatch, capsys):
    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    argv = ["index", "build", "--shards", str(shards / "*.tar"), "--out", str(tmp_path / "db")]
    argv += ["--model", "efficientnet-lite0", "--ray"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["geolocus: error: --ray needs Ray, which is not installed: "
                   "pip install 'geolocus[ray]'"]  # fmt: skip
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--shards", "nowhere/*.tar"], "no tar shards match"),
        (["--table", "missing.parquet"], "table not found"),
        (["--images", "."], "give exactly one source of positions"),
        ([], "give one input"),
        (["--shards", "x", "--table", "y"], "give one input"),
        (["--shards", "x", "--workers", "0"], "--workers must be at least 1"),
        (["--shards", "x", "--exif"], "go with --images"),
        (["--table", "x.csv", "--shard-size", "0"], "--shard-size must be at least 1"),
    ],
)
def test_cli_source_errors_are_one_line(tmp_path, capsys, monkeypatch, extra, match):
    monkeypatch.chdir(tmp_path)
    argv = ["index", "build", "--out", str(tmp_path / "db"), "--model", "efficientnet-lite0"]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geolocus: error:") and match in err[0], err


def _same(a: Database, b: Database) -> None:
    assert list(a.ids) == list(b.ids)
    np.testing.assert_allclose(a.coords, b.coords)
    np.testing.assert_allclose(a.vectors(), b.vectors(), atol=2e-3)  # float16 rounding


@pytest.mark.slow
def test_a_process_pool_gives_the_same_database(shards, tmp_path):
    src = tar_source(str(shards / "*.tar"))
    build_database(tmp_path / "one", src, _emb(), progress=False)
    pool = PoolExecutor(colour_embedder, workers=2, batch_size=4)
    build_database(tmp_path / "pool", src, _emb(), pool, progress=False)
    _same(Database.open(tmp_path / "one"), Database.open(tmp_path / "pool"))


@pytest.mark.slow
def test_ray_gives_the_same_database_even_when_a_worker_dies(shards, tmp_path):
    pytest.importorskip("ray")
    src = tar_source(str(shards / "*.tar"))
    build_database(tmp_path / "one", src, _emb(), progress=False)
    marker = tmp_path / "died"
    from functools import partial

    ray_ex = RayExecutor(partial(dying_colour_embedder, str(marker)), workers=2, batch_size=4)
    build_database(tmp_path / "ray", src, _emb(), ray_ex, progress=False)
    assert marker.is_file()  # a worker did die in the middle of a shard
    _same(Database.open(tmp_path / "one"), Database.open(tmp_path / "ray"))


@pytest.mark.slow
def test_cli_builds_from_shards_alike_with_one_process_and_a_pool(shards, tmp_path, capsys):
    base = ["index", "build", "--shards", str(shards / "*.tar"), "--model", "efficientnet-lite0"]
    assert main([*base, "--out", str(tmp_path / "one"), "--batch-size", "4"]) == 0
    out, err = capsys.readouterr()
    assert "added 10 photos" in out and "skipped b/corrupt (unreadable)" in err
    assert main([*base, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert "added 10 photos" in capsys.readouterr().out
    _same(Database.open(tmp_path / "one"), Database.open(tmp_path / "two"))
    assert main(["index", "info", str(tmp_path / "two"), "--check"]) == 0
    assert main([*base, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert "up to date" in capsys.readouterr().out
    add = ["index", "add", "--db", str(tmp_path / "two"), "--shards", str(shards / "*.tar")]
    assert main([*add, "--workers", "2"]) == 0  # the same photos again, in a pool
    out, err = capsys.readouterr()
    assert "nothing new to add (10 photos in all)" in out and "error" not in err


def test_keys_repeated_across_shards_and_an_index_trained_across_shards(shards, tmp_path):
    _shard(shards / "shard-003.tar", _good("a", 2, seed=3))  # a/0000, a/0001 again
    src = tar_source(str(shards / "*.tar"))
    res = build_database(tmp_path / "db", src, _emb(), factory="IVF2,Flat", progress=False)
    db = Database.open(tmp_path / "db")
    assert len(db) == 10 and db.manifest.factory == "IVF2,Flat"
    rep = [(p.id, p.path, p.problem) for p in res.problems if p.problem == "repeated key"]
    assert sorted(rep) == [
        ("a/0000", "shard-003.tar", "repeated key"),
        ("a/0001", "shard-003.tar", "repeated key"),
        ("b/0001", "shard-001.tar", "repeated key"),
    ]
    # the first kept: a/0000's vector is shard 0's (colour 0), not shard 3's (colour 3)
    row = list(db.ids).index("a/0000")
    np.testing.assert_allclose(db.coords[row], COORDS[0])


def test_one_photo_shards_train_an_ivf_index_together(tmp_path):
    img = tmp_path / "photos"
    rows = []
    for i in range(3):
        photo(img / f"p{i}.jpg", COLOURS[i], seed=i)
        rows.append(f"p{i}.jpg,{COORDS[i][0]},{COORDS[i][1]}\n")
    (tmp_path / "l.csv").write_text("IMG_ID,LAT,LON\n" + "".join(rows))
    src = inputs_source(gather_inputs(img, tmp_path / "l.csv"), shard_size=1)
    build_database(tmp_path / "db", src, _emb(), factory="IVF2,Flat", progress=False)
    assert list(Database.open(tmp_path / "db").ids) == ["p0.jpg", "p1.jpg", "p2.jpg"]
    with pytest.raises(InputError, match="must be trained on at least 4"):
        build_database(tmp_path / "db4", src, _emb(), factory="IVF4,Flat", progress=False)


def test_shards_staged_with_another_model_are_not_reused(shards, tmp_path, monkeypatch):
    src = tar_source(str(shards / "shard-000.tar"))
    db_dir = tmp_path / "db"
    monkeypatch.setattr("geolocus.index.build.write_from_shards", _stop)
    with pytest.raises(KeyboardInterrupt):
        build_database(db_dir, src, _emb(), progress=False)
    monkeypatch.undo()
    assert len(list((db_dir / STAGING).glob("*.npz"))) == 1
    other = ColourEncoder("colour-v2")
    calls = []
    orig = ColourEncoder.forward
    monkeypatch.setattr(ColourEncoder, "forward", lambda s, x: calls.append(1) or orig(s, x))
    build_database(db_dir, src, BackboneEmbedder(other), progress=False)
    assert calls and Database.open(db_dir).manifest.model_version == BackboneEmbedder(other).version


def _stop(*a, **k):
    raise KeyboardInterrupt


@pytest.mark.slow
def test_a_shard_that_kills_every_ray_worker_ends_with_one_error(shards, tmp_path):
    pytest.importorskip("ray")
    src = tar_source(str(shards / "shard-000.tar"))
    ray_ex = RayExecutor(always_dying_colour_embedder, workers=1, retries=0)
    with pytest.raises(InputError, match=r"its Ray worker died in each of 1 attempts"):
        build_database(tmp_path / "db", src, _emb(), ray_ex, progress=False)
    assert list((tmp_path / "db" / STAGING).glob("*.npz")) == []


def test_add_from_shards_and_from_a_table(shards, tmp_path):
    db_dir = tmp_path / "db"
    build_database(db_dir, tar_source(str(shards / "shard-000.tar")), _emb(), progress=False)
    res = add_to_database(db_dir, tar_source(str(shards / "*.tar")), _emb(), progress=False)
    assert res.added == 4 and len(Database.open(db_dir)) == 10  # shard 1's good ones
    rep = {(r["stage"], r["id"], r["problem"]) for r in read_report(db_dir)}
    assert ("add", "a/0000", "already in database") in rep
    assert ("add", "b/corrupt", "unreadable") in rep and not (db_dir / STAGING).exists()
    again = add_to_database(db_dir, tar_source(str(shards / "*.tar")), _emb(), progress=False)
    assert again.added == 0 and "nothing new to add (10 photos in all)" in again.summary()
    rel, _, pos = _table_photos(tmp_path, 5)
    t = tmp_path / "more.csv"
    pd.DataFrame({"image": rel, "lat": [p[0] for p in pos], "lon": [p[1] for p in pos]}).to_csv(
        t, index=False
    )
    res = add_to_database(db_dir, table_source(t, shard_size=2), _emb(), progress=False)
    db = Database.open(db_dir)
    assert res.added == 5 and len(db) == 15 and "img/p4.jpg" in db
    assert db.meta.set_index("id").loc["img/p4.jpg", "source"] == "table"


def test_add_to_a_compressed_database_encodes_with_its_quantisers(tmp_path):
    from geolocus.index import compressed as cp

    emb = BackboneEmbedder(ColourEncoder(grid=4))  # 48-d
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, emb.dim)).astype(np.float32)
    db = Database.create(tmp_path / "db", dim=emb.dim, model=emb.name,
                         model_version=emb.version, auto_threshold=1000)  # fmt: skip
    db.add(x, [f"r{i}" for i in range(len(x))], np.zeros((len(x), 2)))
    db.save()
    assert db.is_compressed
    nlist = cp.nlist_of(Database.open(tmp_path / "db").index)
    img = tmp_path / "photos"
    for i in range(3):
        photo(img / f"p{i}.jpg", COLOURS[i], seed=i)
    (tmp_path / "l.csv").write_text(
        "IMG_ID,LAT,LON\n" + "".join(f"p{i}.jpg,{COORDS[i][0]},{COORDS[i][1]}\n" for i in range(3))
    )
    res = add_to_database(tmp_path / "db", inputs_source(gather_inputs(img, tmp_path / "l.csv")),
                          emb, progress=False)  # fmt: skip
    again = Database.open(tmp_path / "db")
    assert res.added == 3 and len(again) == 1503 and again.is_compressed
    assert cp.nlist_of(again.index) == nlist and again.manifest.search["trained_at_count"] == 1500
    v = again.vectors(np.arange(1500, 1503))
    assert list(again.search(v, k=1).near_ids[:, 0]) == ["p0.jpg", "p1.jpg", "p2.jpg"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ([], "give one input"),
        (["--shards", "x", "--table", "y"], "give one input"),
        (["--images", "."], "give exactly one source of positions"),
        (["--shards", "x", "--labels", "l.csv"], "go with --images"),
        (["--shards", "x", "--workers", "0"], "--workers must be at least 1"),
        (["--table", "x.csv", "--shard-size", "0"], "--shard-size must be at least 1"),
        (["--shards", "nowhere/*.tar"], "no tar shards match"),
    ],
)
def test_cli_add_input_errors_are_one_line(shards, tmp_path, capsys, monkeypatch, extra, match):
    db_dir = tmp_path / "db"
    build_database(db_dir, tar_source(str(shards / "shard-000.tar")), _emb(), progress=False)
    monkeypatch.chdir(tmp_path)
    assert main(["index", "add", "--db", str(db_dir), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geolocus: error:") and match in err[0], err
    assert len(Database.open(db_dir)) == 6 and not (db_dir / STAGING).exists()
