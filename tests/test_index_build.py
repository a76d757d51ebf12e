"""Building databases from folders: labels and EXIF, reports, resume, add, factories, CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakes import PLACES, ColourEncoder, bomb, photo
from geolocus.cli.main import main
from geolocus.errors import InputError
from geolocus.index import Database
from geolocus.index.build import (
    OLD_STAGING,
    SHARD_SIZE,
    Inputs,
    add_to_database,
    build_database,
    database_vectors,
    gather_inputs,
    inputs_source,
    read_report,
    shard_size_for,
)
from geolocus.index.check import check_database
from geolocus.index.executors import LocalExecutor
from geolocus.index.shards import STAGING
from geolocus.models.embedder import BackboneEmbedder


def _labels(path: Path, rows: list[tuple]) -> Path:
    path.write_text("IMG_ID,LAT,LON\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, Path]:
    """Six good photos (two in a sub-folder), one without a label, and bad files in the
    labels: a text file, a truncated JPEG, a bomb, and a row without a file."""
    img = tmp_path / "photos"
    rows = []
    for j, (name, (lat, lon, col)) in enumerate(PLACES.items()):
        sub = "sub/" if j < 2 else ""
        for i in range(2 if j < 2 else 1):
            p = photo(img / f"{sub}{name}{i}.jpg", col, seed=10 * j + i)
            rows.append((p.relative_to(img).as_posix(), lat, lon))
    photo(img / "unlabelled.jpg", (128, 128, 128))
    (img / "notes.txt").write_text("not a photo")
    good = (img / "paris0.jpg") if (img / "paris0.jpg").exists() else img / "sub" / "paris0.jpg"
    (img / "cut.jpg").write_bytes(good.read_bytes()[:300])
    bomb(img / "bomb.png")
    rows += [("notes.txt", 1, 1), ("cut.jpg", 2, 2), ("bomb.png", 3, 3), ("gone.jpg", 4, 4)]
    return img, _labels(tmp_path / "labels.csv", rows)


def _emb() -> BackboneEmbedder:
    return BackboneEmbedder(ColourEncoder())


def test_gather_from_labels_lists_every_problem(folder):
    img, labels = folder
    inp = gather_inputs(img, labels)
    assert inp.source == "labels" and len(inp) == 9  # 6 photos + 3 bad files named in labels
    assert "sub/paris0.jpg" in inp.ids and all(Path(p).is_absolute() for p in inp.paths)
    probs = {(p.id, p.problem) for p in inp.problems}
    assert probs == {("unlabelled.jpg", "no label"), ("gone.jpg", "missing file")}
    i = inp.ids.index("sub/tokyo1.jpg")
    assert tuple(inp.latlon[i]) == PLACES["tokyo"][:2]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("IMG_ID,LATITUDE\na.jpg,1\n", "no LON column"),
        ("IMG_ID,LAT,LON\na.jpg,north,2\n", "non-numeric"),
        ("IMG_ID,LAT,LON\na.jpg,95,2\n", "outside lat"),
        ("IMG_ID,LAT,LON\na.jpg,1,2\na.jpg,3,4\n", "duplicate"),
        ("", "empty"),
    ],
)
def test_bad_labels_file_is_a_clear_error(folder, tmp_path, text, match):
    img, _ = folder
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(InputError, match=match):
        gather_inputs(img, bad)


def test_exactly_one_source_of_positions(folder, tmp_path):
    img, labels = folder
    with pytest.raises(InputError, match="exactly one"):
        gather_inputs(img)
    with pytest.raises(InputError, match="exactly one"):
        gather_inputs(img, labels, exif=True)
    with pytest.raises(InputError, match="no such folder"):
        gather_inputs(tmp_path / "nope", labels)


def test_gather_from_exif(tmp_path):
    img = tmp_path / "exif"
    photo(img / "a.jpg", (200, 0, 0), exif_gps=(48.8566, 2.3522))
    photo(img / "b.jpg", (0, 0, 200), exif_gps=(-33.8688, 151.2093))
    photo(img / "none.jpg", (0, 200, 0))
    (img / "broken.jpg").write_text("garbage")
    inp = gather_inputs(img, exif=True, progress=False)
    assert inp.ids == ["a.jpg", "b.jpg"] and inp.source == "exif"
    np.testing.assert_allclose(inp.latlon, [[48.8566, 2.3522], [-33.8688, 151.2093]], atol=1e-4)
    assert {(p.id, p.problem) for p in inp.problems} == {
        ("none.jpg", "no EXIF GPS"),
        ("broken.jpg", "unreadable"),
    }


def test_build_skips_bad_files_and_reports_them(folder, tmp_path):
    img, labels = folder
    db_dir = tmp_path / "db"
    res = build_database(db_dir, inputs_source(gather_inputs(img, labels)), _emb(), progress=False)
    db = Database.open(db_dir)
    assert len(db) == res.added == 6
    assert set(db.ids) == {"sub/paris0.jpg", "sub/paris1.jpg", "sub/tokyo0.jpg", "sub/tokyo1.jpg",
                           "sydney0.jpg", "nairobi0.jpg"}  # fmt: skip
    report = read_report(db_dir)
    got = {(r["id"], r["problem"]) for r in report}
    assert got == {
        ("unlabelled.jpg", "no label"),
        ("gone.jpg", "missing file"),
        ("notes.txt", "unreadable"),
        ("cut.jpg", "unreadable"),
        ("bomb.png", "unreadable"),
    }
    assert all(r["stage"] == "build" for r in report)
    assert "too many pixels" in next(r["detail"] for r in report if r["id"] == "bomb.png")
    man = db.manifest
    assert man.model == "colour-test" and man.model_version == _emb().version and man.count == 6
    assert man.extra["embedder"]["backbone"] == "colour-test"
    assert not (db_dir / STAGING).exists()  # the staged shards are gone once saved
    where = {r["id"]: r["path"] for r in report}  # every problem names its file
    assert where["cut.jpg"] == str(img / "cut.jpg") and where["gone.jpg"] == str(img / "gone.jpg")
    assert "left out" in res.summary() and "report.csv" in res.summary()


def test_nothing_usable_is_an_error_with_a_report(tmp_path):
    img = tmp_path / "bad"
    img.mkdir()
    (img / "a.jpg").write_text("x")
    labels = _labels(tmp_path / "l.csv", [("a.jpg", 1, 1)])
    with pytest.raises(InputError, match="none of the photos could be used"):
        build_database(
            tmp_path / "db", inputs_source(gather_inputs(img, labels)), _emb(), progress=False
        )
    assert read_report(tmp_path / "db")[0]["id"] == "a.jpg"
    with pytest.raises(InputError, match="none of the photos has a position"):
        build_database(
            tmp_path / "db2",
            inputs_source(gather_inputs(img, _labels(tmp_path / "m.csv", [("b.jpg", 1, 1)]))),
            _emb(), progress=False,
        )  # fmt: skip


def test_interrupted_build_resumes_where_it_stopped(folder, tmp_path, monkeypatch):
    img, labels = folder
    inp = gather_inputs(img, labels)
    calls = {"n": 0, "stop": 3}
    orig = ColourEncoder.forward

    def forward(self, x):
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise KeyboardInterrupt
        return orig(self, x)

    monkeypatch.setattr(ColourEncoder, "forward", forward)
    db_dir = tmp_path / "db"
    # shards of 4 photos in id order, batches of 2: shard 0 holds 2 unreadable files and
    # makes 1 forward pass, shard 1 makes 2, shard 2 one: the 3rd pass is in shard 1
    src = inputs_source(inp, 4)

    def build(where: Path):
        return build_database(where, src, _emb(), LocalExecutor(_emb(), 2), progress=False)

    with pytest.raises(KeyboardInterrupt):
        build(db_dir)
    assert not Database.exists(db_dir) and len(list((db_dir / STAGING).glob("*.npz"))) == 1
    calls.update(n=0, stop=-1)
    res = build(db_dir)
    resumed = calls["n"]
    calls["n"] = 0
    build(tmp_path / "clean")
    assert (resumed, calls["n"]) == (3, 4)  # the finished shard was not redone
    a, b = Database.open(db_dir), Database.open(tmp_path / "clean")
    assert list(a.ids) == list(b.ids) and len(a) == 6
    np.testing.assert_array_equal(database_vectors(a), database_vectors(b))  # bit-identical
    assert {p.id for p in res.problems} == {p.id for p in inp.problems} | {
        "notes.txt",
        "cut.jpg",
        "bomb.png",
    }  # the staged shard's unreadable photos are still reported


def test_a_build_killed_with_sigkill_resumes_bit_identically(tmp_path):
    """kill -9 in the middle of a shard: the finished shards are kept, the rest redone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    img = tmp_path / "photos"
    rows = []
    for i in range(8):
        lat, lon, col = list(PLACES.values())[i % 4]
        photo(img / f"p{i}.jpg", col, seed=i)
        rows.append((f"p{i}.jpg", lat, lon))
    labels = _labels(tmp_path / "l.csv", rows)
    db_dir = tmp_path / "db"
    code = (
        "import sys, time\n"
        "from fakes import ColourEncoder\n"
        "from geolocus.index.build import build_database, gather_inputs, inputs_source\n"
        "from geolocus.index.executors import LocalExecutor\n"
        "from geolocus.models.embedder import BackboneEmbedder\n"
        "orig = ColourEncoder.forward\n"
        "ColourEncoder.forward = lambda s, x: time.sleep(0.3) or orig(s, x)\n"
        "e = BackboneEmbedder(ColourEncoder())\n"
        "src = inputs_source(gather_inputs(sys.argv[1], sys.argv[2]), 2)\n"
        "build_database(sys.argv[3], src, e, LocalExecutor(e, 1), progress=False)\n"
    )
    tests = str(Path(__file__).resolve().parent)
    src_dir = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src_dir, tests]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(img), str(labels), str(db_dir)], env=env
    )
    try:
        t0 = time.monotonic()
        while len(list((db_dir / STAGING).glob("*.npz"))) < 2 and time.monotonic() - t0 < 120:
            assert proc.poll() is None, "the build ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # no clean-up runs
    finally:
        proc.wait()
    staged = len(list((db_dir / STAGING).glob("*.npz")))
    assert 2 <= staged < 4 and not Database.exists(db_dir)
    encoder = ColourEncoder()
    res = build_database(db_dir, inputs_source(gather_inputs(img, labels), 2),
                         BackboneEmbedder(encoder), progress=False)  # fmt: skip
    assert encoder.seen == 2 * (4 - staged) and res.added == 8  # finished shards not redone
    clean = build_database(tmp_path / "clean", inputs_source(gather_inputs(img, labels), 2),
                           _emb(), progress=False)  # fmt: skip
    np.testing.assert_array_equal(res.database.vectors(), clean.database.vectors())
    assert list(res.database.ids) == list(clean.database.ids)


def test_a_folder_is_cut_into_shards_of_whole_batches():
    assert shard_size_for(1) == shard_size_for(256) == 32  # never below one batch
    assert shard_size_for(300) == 64 and shard_size_for(2000) == 256
    assert shard_size_for(8000) == shard_size_for(10**7) == SHARD_SIZE


def test_the_staging_area_of_an_older_version_is_removed_with_one_line(folder, tmp_path, capsys):
    img, labels = folder
    db_dir = tmp_path / "db"
    (db_dir / OLD_STAGING / "build" / ".partial").mkdir(parents=True)
    (db_dir / OLD_STAGING / "build" / ".partial" / "embeddings.npy").write_bytes(b"x" * 64)
    res = build_database(db_dir, inputs_source(gather_inputs(img, labels)), _emb(), progress=False)
    assert res.added == 6 and not (db_dir / OLD_STAGING).exists()
    err = [x for x in capsys.readouterr().err.splitlines() if OLD_STAGING in x]
    assert len(err) == 1 and err[0].startswith("geolocus: warning: removed ")
    assert "older geolocus" in err[0]


def test_rebuild_is_a_no_op_and_other_inputs_need_overwrite(folder, tmp_path, monkeypatch):
    img, labels = folder
    inp = gather_inputs(img, labels)
    db_dir = tmp_path / "db"
    build_database(db_dir, inputs_source(inp), _emb(), progress=False)
    calls = []
    orig = ColourEncoder.forward
    monkeypatch.setattr(ColourEncoder, "forward", lambda s, x: calls.append(1) or orig(s, x))
    again = build_database(db_dir, inputs_source(inp), _emb(), progress=False)
    assert again.up_to_date and not calls and "up to date" in again.summary()
    keep = [i for i, x in enumerate(inp.ids) if x.startswith("sub/")][:3]
    fewer = Inputs([inp.ids[i] for i in keep], [inp.paths[i] for i in keep], inp.latlon[keep],
                   "labels")  # fmt: skip
    with pytest.raises(InputError, match="--overwrite"):
        build_database(db_dir, inputs_source(fewer), _emb(), progress=False)
    res = build_database(db_dir, inputs_source(fewer), _emb(), progress=False, overwrite=True)
    assert len(Database.open(db_dir)) == 3 == res.added
    assert len(list(db_dir.glob("vectors-*.faiss"))) == 1  # the old generation is gone


def test_add_appends_skips_known_and_refuses_other_models(folder, tmp_path):
    img, labels = folder
    db_dir = tmp_path / "db"
    build_database(db_dir, inputs_source(gather_inputs(img, labels)), _emb(), progress=False)
    more = tmp_path / "more"
    photo(more / "sydney0.jpg", PLACES["sydney"][2], seed=1)  # same id as one in the database
    photo(more / "cairo.jpg", (150, 100, 50), seed=2)
    photo(more / "nolabel.jpg", (150, 100, 50), seed=3)
    lab = _labels(
        tmp_path / "more.csv", [("sydney0.jpg", -33.8, 151.2), ("cairo.jpg", 30.04, 31.24)]
    )
    res = add_to_database(db_dir, inputs_source(gather_inputs(more, lab)), _emb(), progress=False)
    assert res.added == 1 and len(Database.open(db_dir)) == 7 and "cairo.jpg" in res.database
    problems = {(r["stage"], r["id"], r["problem"]) for r in read_report(db_dir)}
    assert ("add", "sydney0.jpg", "already in database") in problems
    assert ("add", "nolabel.jpg", "no label") in problems
    assert ("build", "gone.jpg", "missing file") in problems  # the build's rows are kept
    other = ColourEncoder()
    other.weights_id = "v2"
    with pytest.raises(InputError, match="another version"):
        add_to_database(db_dir, inputs_source(gather_inputs(more, lab)), BackboneEmbedder(other))


@pytest.mark.parametrize("factory", ["IVF2,Flat", "HNSW8,Flat"])
def test_other_faiss_factories(folder, tmp_path, factory):
    img, labels = folder
    res = build_database(
        tmp_path / "db",
        inputs_source(gather_inputs(img, labels)),
        _emb(),
        factory=factory,
        progress=False,
    )
    db = Database.open(tmp_path / "db")
    assert db.manifest.factory == factory and len(db) == 6
    v = database_vectors(db)
    nb = db.search(v, k=1, nprobe=2 if factory.startswith("IVF") else None)
    assert list(nb.near_ids[:, 0]) == list(db.ids)  # each photo finds itself
    assert res.added == 6


def test_invalid_factory_fails_before_any_forward_pass(folder, tmp_path, monkeypatch):
    img, labels = folder
    monkeypatch.setattr(ColourEncoder, "forward", lambda s, x: pytest.fail("forward ran"))
    with pytest.raises(InputError, match="invalid FAISS factory"):
        build_database(
            tmp_path / "db",
            inputs_source(gather_inputs(img, labels)),
            _emb(),
            factory="Bogus9",
            progress=False,
        )


# ---------------------------------------------------------------- the CLI (real lite0)


@pytest.mark.slow
def test_cli_build_info_add(folder, tmp_path, capsys):
    img, labels = folder
    db_dir = tmp_path / "db"
    argv = ["index", "build", "--images", str(img), "--labels", str(labels)]
    argv += ["--model", "efficientnet-lite0", "--out", str(db_dir), "--batch-size", "4"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "added 6 photos" in out and "skipped bomb.png (unreadable)" in err
    assert main(argv) == 0 and "up to date" in capsys.readouterr().out
    assert main(["index", "info", str(db_dir)]) == 0
    info = capsys.readouterr().out
    assert "efficientnet-lite0" in info and "count" in info and "skipped photos    5" in info
    assert main(["index", "info", str(db_dir), "--json"]) == 0
    man = json.loads(capsys.readouterr().out)
    assert man["count"] == 6 and man["dim"] == 1280 and man["report"]["skipped"] == 5
    more = tmp_path / "more"
    photo(more / "x.jpg", (10, 200, 200), exif_gps=(40.0, -3.0))
    photo(more / "y.jpg", (10, 200, 200))
    add = ["index", "add", "--db", str(db_dir), "--images", str(more), "--exif"]
    assert main(add) == 0
    assert "added 1 photos (7 in all)" in capsys.readouterr().out
    assert main(add) == 0  # the same add again
    out, err = capsys.readouterr()
    assert "nothing new to add (7 photos in all)" in out and "error" not in err
    assert main(["index", "info", str(db_dir), "--check"]) == 0
    assert f"database {db_dir} is sound" in capsys.readouterr().out
    assert Database.open(db_dir).meta.set_index("id").loc["x.jpg", "source"] == "exif"
    with open(db_dir / "report.csv", newline="") as fh:
        assert ("add", "y.jpg", "no EXIF GPS") in {
            (r["stage"], r["id"], r["problem"]) for r in csv.DictReader(fh)
        }


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--model", "no-such-model"], "unknown model"),
        (["--factory", "IVF9999,Flat"], "must be trained on at least 9999"),
        (["--labels", "missing.csv"], "labels file not found"),
    ],
)
def test_cli_build_errors_are_one_line(folder, tmp_path, capsys, monkeypatch, extra, match):
    img, labels = folder
    monkeypatch.chdir(tmp_path)
    argv = ["index", "build", "--images", str(img), "--out", str(tmp_path / "db")]
    if "--labels" not in extra:
        argv += ["--labels", str(labels)]
    if "--model" not in extra:
        argv += ["--model", "efficientnet-lite0"]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("geolocus: error:") and match in err[-1]


def test_cli_add_and_info_need_a_database(tmp_path, capsys):
    assert main(["index", "info", str(tmp_path)]) == 2
    assert "no geolocus database" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    assert main(["index", "add", "--db", str(tmp_path / "x"), "--images", str(tmp_path)]) == 2


# ------------------------------------------------- adding again, failing, interrupting


def _more(tmp_path: Path, good: int = 1, bad: int = 1) -> tuple[Path, Path]:
    more = tmp_path / "more"
    rows = []
    for i in range(good):
        photo(more / f"new{i}.jpg", (150, 100 + 20 * i, 50), seed=20 + i)
        rows.append((f"new{i}.jpg", 30.0 + i, 31.0))
    for i in range(bad):
        (more / f"broken{i}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (more / f"broken{i}.jpg").write_text("not a photo")
        rows.append((f"broken{i}.jpg", 10.0, 10.0))
    return more, _labels(tmp_path / "more.csv", rows)


def test_the_same_add_twice_says_nothing_new(folder, tmp_path, capsys):
    img, labels = folder
    db_dir = tmp_path / "db"
    build_database(db_dir, inputs_source(gather_inputs(img, labels)), _emb(), progress=False)
    more, lab = _more(tmp_path)
    first = add_to_database(db_dir, inputs_source(gather_inputs(more, lab)), _emb(), progress=True)
    assert first.added == 1 and "failed.csv" not in capsys.readouterr().err  # a deleted file
    again = add_to_database(db_dir, inputs_source(gather_inputs(more, lab)), _emb(), progress=False)
    assert again.added == 0 and len(Database.open(db_dir)) == 7
    assert again.summary().startswith(f"{db_dir}: nothing new to add (7 photos in all)")
    assert "1 already in database, 1 unreadable" in again.summary()
    assert (db_dir / "report.csv").is_file() and not (db_dir / STAGING).exists()
    rows = [(r["stage"], r["id"], r["problem"]) for r in read_report(db_dir)]
    assert rows.count(("add", "broken0.jpg", "unreadable")) == 1  # reported once, not per run
    assert rows.count(("add", "new0.jpg", "already in database")) == 1


def test_a_failed_add_leaves_no_staging_area(folder, tmp_path):
    img, labels = folder
    db_dir = tmp_path / "db"
    build_database(db_dir, inputs_source(gather_inputs(img, labels)), _emb(), progress=False)
    more, lab = _more(tmp_path, good=0, bad=2)
    with pytest.raises(InputError, match="none of the photos could be used"):
        add_to_database(db_dir, inputs_source(gather_inputs(more, lab)), _emb(), progress=False)
    assert not (db_dir / STAGING).exists() and len(Database.open(db_dir)) == 6
    assert {r["id"] for r in read_report(db_dir) if r["stage"] == "add"} == {
        "broken0.jpg",
        "broken1.jpg",
    }


def test_an_interrupted_add_keeps_its_progress_and_resumes(folder, tmp_path, monkeypatch):
    img, labels = folder
    db_dir = tmp_path / "db"
    build_database(db_dir, inputs_source(gather_inputs(img, labels)), _emb(), progress=False)
    more, lab = _more(tmp_path, good=3, bad=0)
    orig = ColourEncoder.forward
    calls = {"n": 0}

    def forward(self, x):
        calls["n"] += 1
        if calls["n"] == 2:  # in the second shard: as if Ctrl-C was pressed
            raise KeyboardInterrupt
        return orig(self, x)

    monkeypatch.setattr(ColourEncoder, "forward", forward)
    with pytest.raises(KeyboardInterrupt):
        add_to_database(db_dir, inputs_source(gather_inputs(more, lab), 1), _emb(), progress=False)
    assert len(list((db_dir / STAGING).glob("*.npz"))) == 1  # the first shard is kept
    assert len(Database.open(db_dir)) == 6
    said: list[str] = []
    check_database(db_dir, say=said.append)  # sound, and says there is work to resume
    assert any(".staging holds an unfinished build or add" in x for x in said)
    calls["n"] = -10  # no more interruptions
    res = add_to_database(
        db_dir, inputs_source(gather_inputs(more, lab), 1), _emb(), progress=False
    )
    assert res.added == 3 and not (db_dir / STAGING).exists()
    assert calls["n"] == -8  # two shards embedded: the staged one was not redone


def test_a_damaged_database_is_never_up_to_date(folder, tmp_path):
    img, labels = folder
    inp = gather_inputs(img, labels)
    db_dir = tmp_path / "db"
    build_database(db_dir, inputs_source(inp), _emb(), progress=False)
    faiss_file = next(db_dir.glob("vectors-*.faiss"))
    faiss_file.write_bytes(faiss_file.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"is damaged: vectors-1\.faiss .*--overwrite"):
        build_database(db_dir, inputs_source(inp), _emb(), progress=False)
    res = build_database(db_dir, inputs_source(inp), _emb(), progress=False, overwrite=True)
    assert res.added == 6 and not res.up_to_date
    assert sorted(p.name for p in db_dir.glob("vectors-*")) == ["vectors-2.faiss"]
    check_database(db_dir, say=lambda s: None)


def test_rows_of_zeros_are_never_up_to_date(folder, tmp_path):
    """The damage two concurrent builds once left (right ids, zero vectors) is found by the
    next build of the same inputs, and --overwrite repairs it."""
    img, labels = folder
    inp = gather_inputs(img, labels)
    db_dir = tmp_path / "db"
    build_database(db_dir, inputs_source(inp), _emb(), progress=False)
    db = Database.open(db_dir)
    v = db.vectors()
    v[2] = 0.0
    db.index.reset()
    db.index.add(v)
    db.save()  # the build key stays: only the vectors are wrong
    with pytest.raises(InputError, match=r"holds 1 all-zero vectors .*--overwrite"):
        build_database(db_dir, inputs_source(inp), _emb(), progress=False)
    res = build_database(db_dir, inputs_source(inp), _emb(), progress=False, overwrite=True)
    assert not res.up_to_date and res.added == 6
    assert build_database(db_dir, inputs_source(inp), _emb(), progress=False).up_to_date
    check_database(db_dir, say=lambda s: None)
