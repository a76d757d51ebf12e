"""Bad input as a new user (or an attacker) gives it: every failure is one line
``geolocus: error: …`` with exit status 1 or 2, never a traceback, and what was
already done is not lost."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
from pathlib import Path

import pytest

import test_predict
from geolocus.cli.main import main
from test_pipeline import PLACES, photo

# fixtures: a lite0 database of the colour world, and photos to ask it about (and bad ones)
db = test_predict.db
queries = test_predict.queries


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err and "Traceback" not in cap.out
    return rc, cap.out, cap.err


def _one_error(err: str) -> str:
    """The only line of ``err``, which must be a geolocus error."""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("geolocus: error: "), err
    return lines[0]


def _errors(err: str) -> list[str]:
    return [x for x in err.splitlines() if x.startswith("geolocus: error: ")]


def _lock_folders_named_locked(monkeypatch) -> None:
    """Folders named ``locked`` cannot be listed (simulated: root reads through mode 000)."""
    real = os.scandir

    def scandir(path):
        if isinstance(path, (str, os.PathLike)) and Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.fixture
def tables(tmp_path: Path) -> dict[str, Path]:
    """Good and bad CSVs: neighbours, labels, predictions."""
    t = {
        "nb": "IMG_ID,near_0_lat,near_0_lon,near_1_lat,near_1_lon\nx,10,5,11,6\ny,1,1,2,2\n",
        "labels": "IMG_ID,LAT,LON\nx,10,5\ny,1,1\n",
        "header_only": "IMG_ID,LAT,LON\n",
        "nb_header_only": "IMG_ID,near_0_lat,near_0_lon\n",
        "no_columns": "a,b\n1,2\n",
        "nan": "IMG_ID,LAT,LON\nx,NaN,5\ny,1,1\n",
        "huge": "IMG_ID,LAT,LON\nx,1e308,5\ny,1,1\n",
        "overflow": "IMG_ID,LAT,LON\nx,1e400,5\ny,1,1\n",
        "empty": "",
    }
    out = {}
    for name, text in t.items():
        out[name] = tmp_path / f"{name}.csv"
        out[name].write_text(text)
    out["garbage"] = tmp_path / "garbage.csv"
    out["garbage"].write_bytes(bytes(range(256)) * 8)
    out["dir"] = tmp_path / "a-folder"
    out["dir"].mkdir()
    return out


# -- tables -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("header_only", "has a header but no rows"),
        ("no_columns", "has no IMG_ID column"),
        ("nan", "non-numeric"),
        ("huge", "outside lat"),
        ("overflow", "not finite"),
        ("empty", "is empty"),
        ("garbage", "not a valid CSV"),
        ("dir", "is a directory"),
        ("missing", "not found"),
    ],
)
def test_evaluate_bad_tables(tables, capsys, bad, match):
    path = tables.get(bad, tables["dir"] / "missing.csv")
    rc, _, err = _run(capsys, ["evaluate", "--pred", str(path), "--truth", str(tables["labels"])])
    assert rc == 2 and match in _one_error(err)
    rc, _, err = _run(capsys, ["evaluate", "--pred", str(tables["labels"]), "--truth", str(path)])
    assert rc == 2 and match in _one_error(err)


def test_refine_neighbours_with_a_header_and_no_rows(tables, tmp_path, capsys):
    out = tmp_path / "p.csv"
    argv = ["refine", "--out", str(out), "--method", "kde"]
    rc, _, err = _run(capsys, [*argv, "--neighbours", str(tables["nb_header_only"])])
    assert rc == 2 and "no rows" in _one_error(err)
    fit = ["--fit", str(tables["nb_header_only"]), "--labels", str(tables["labels"])]
    rc, _, err = _run(capsys, [*argv, "--neighbours", str(tables["nb"]), *fit])
    assert rc == 2 and "no rows" in _one_error(err) and "nb_header_only" in err
    fit = ["--fit", str(tables["nb"]), "--labels", str(tables["dir"] / "nope.csv")]
    rc, _, err = _run(capsys, [*argv, "--neighbours", str(tables["nb"]), *fit])
    assert rc == 2 and "labels file not found" in _one_error(err)
    for bad in ("garbage", "no_columns", "labels"):  # labels: no near_<i> columns
        rc, _, err = _run(capsys, [*argv, "--neighbours", str(tables[bad])])
        assert rc == 2 and _one_error(err)
    assert not out.exists()
    rc, _, _ = _run(capsys, [*argv, "--neighbours", str(tables["nb"])])
    assert rc == 0 and out.read_text().startswith("IMG_ID,LAT,LON\n")


# -- output paths -----------------------------------------------------------------------------


def test_outputs_that_are_folders_are_refused_before_any_work(
    tables, tmp_path, capsys, db, queries
):
    d = str(tables["dir"])
    ev = ["evaluate", "--pred", str(tables["labels"]), "--truth", str(tables["labels"])]
    rc, out, err = _run(capsys, [*ev, "--json", d])
    assert rc == 2 and "--json" in _one_error(err) and "is a folder" in err and out == ""
    rf = ["refine", "--neighbours", str(tables["nb"]), "--method", "nearest"]
    rc, _, err = _run(capsys, [*rf, "--out", d])
    assert rc == 2 and "--out" in _one_error(err) and "is a folder" in err
    pr = ["predict", str(queries["paris"]), "--db", str(db)]
    for opt in ("--out", "--map"):
        rc, out, err = _run(capsys, [*pr, opt, d])
        assert rc == 2 and opt in _one_error(err) and "is a folder" in err and out == ""
    rc, _, err = _run(capsys, ["geotag", str(tmp_path), "--out", d])
    assert rc == 2 and "is a folder" in _one_error(err)
    assert not (tmp_path / ".geolocus").exists()  # refused before the database was built
    assert list(tables["dir"].iterdir()) == []


@pytest.mark.parametrize(
    "where",
    ["/proc/x.json", "/sys/x.json", "FILE/x.json"],
    ids=["proc", "read-only-sys", "under-a-file"],
)
def test_outputs_that_cannot_be_written(tables, capsys, where):
    if where.startswith("FILE"):
        where = where.replace("FILE", str(tables["labels"]))
    else:
        probe = Path(where).parent
        if not probe.is_dir():
            pytest.skip(f"no {probe} here")
        try:  # /sys is read-only in containers; where it is writable this case says nothing
            (probe / ".geolocus-test").touch()
        except OSError:
            pass
        else:
            (probe / ".geolocus-test").unlink()
            pytest.skip(f"{probe} is writable here")
    ev = ["evaluate", "--pred", str(tables["labels"]), "--truth", str(tables["labels"])]
    rc, out, err = _run(capsys, [*ev, "--json", where])
    line = _one_error(err)
    assert rc == 2 and where in line and out == ""


def test_missing_parent_folders_are_made_only_for_the_path_named(tables, tmp_path, capsys):
    ev = ["evaluate", "--pred", str(tables["labels"]), "--truth", str(tables["labels"])]
    target = tmp_path / "new" / "deeper" / "s.json"
    # a command that fails creates nothing, not even the folders
    bad = ["evaluate", "--pred", str(tables["nan"]), "--truth", str(tables["labels"])]
    rc, _, _ = _run(capsys, [*bad, "--json", str(target)])
    assert rc == 2 and not (tmp_path / "new").exists()
    before = {p for p in tmp_path.rglob("*")}
    rc, _, _ = _run(capsys, [*ev, "--json", str(target)])
    assert rc == 0 and json.loads(target.read_text())["n"] == 2
    made = {p for p in tmp_path.rglob("*")} - before
    assert made == {tmp_path / "new", tmp_path / "new" / "deeper", target}


# -- the last resort --------------------------------------------------------------------------


def test_system_errors_and_bugs_are_one_line(tables, capsys, monkeypatch):
    import geolocus.eval

    ev = ["evaluate", "--pred", str(tables["labels"]), "--truth", str(tables["labels"])]

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/s.json")

    monkeypatch.setattr(geolocus.eval, "evaluate", full_disk)
    rc, _, err = _run(capsys, ev)
    assert rc == 2 and _one_error(err) == "geolocus: error: /data/s.json: No space left on device"

    def bug(*a, **k):
        raise KeyError("LAT_pred")

    monkeypatch.setattr(geolocus.eval, "evaluate", bug)
    monkeypatch.delenv("GEOLOCUS_DEBUG", raising=False)
    rc, _, err = _run(capsys, ev)
    line = _one_error(err)
    assert rc == 1 and line.startswith("geolocus: error: internal error: KeyError: 'LAT_pred'")
    assert "GEOLOCUS_DEBUG=1" in line
    monkeypatch.setenv("GEOLOCUS_DEBUG", "1")
    assert main(ev) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "in bug" in err and err.rstrip().endswith("the traceback)")


# -- predict ----------------------------------------------------------------------------------


def test_predict_goes_on_past_bad_photos_and_bad_corners_of_folders(
    db,
    queries,
    tmp_path,
    capsys,
    monkeypatch,
):
    d = tmp_path / "d"
    for name in ("paris", "tokyo"):
        (d / "sub").mkdir(parents=True, exist_ok=True)
        shutil.copy(queries[name], d / ("sub" if name == "tokyo" else "") / f"{name}.jpg")
    (d / "loop.jpg").symlink_to("loop.jpg")
    (d / "sub" / "up").symlink_to("..")
    (d / "locked").mkdir()
    (d / "locked" / "x.jpg").write_bytes(b"never read")
    os.mkfifo(tmp_path / "fifo.jpg")  # read directly it would block predict for ever
    _lock_folders_named_locked(monkeypatch)
    argv = ["predict", str(d), str(tmp_path / "fifo.jpg"), str(tmp_path / "missing.jpg")]
    rc, out, err = _run(capsys, [*argv, str(queries["nairobi"]), "--db", str(db), "-f", "csv"])
    assert rc == 1
    errors = _errors(err)
    assert len(errors) == 5  # one line for each bad thing, nothing else is an error
    assert any("loop.jpg: skipped (Too many levels of symbolic links)" in e for e in errors)
    assert any(
        e.endswith("up: skipped (a link to a folder already listed (a loop?); not followed)")
        for e in errors
    )
    assert any("locked: skipped (cannot list: Permission denied)" in e for e in errors)
    assert any("fifo.jpg: not a regular file" in e for e in errors)
    assert any("missing.jpg: no such file" in e for e in errors)
    rows = list(csv.DictReader(io.StringIO(out)))
    answered = {Path(r["image"]).name for r in rows if r["rank"] == "1"}
    assert answered == {"paris.jpg", "tokyo.jpg", "nairobi.jpg"}  # the good ones went on


def test_predict_says_how_guesses_are_ordered(db, queries, capsys):
    rc, out, _ = _run(capsys, ["predict", str(queries["paris"]), "--db", str(db)])
    assert rc == 0 and out.startswith("guess 1 is the answer;") and "not by confidence" in out
    rc, out, _ = _run(capsys, ["predict", str(queries["paris"]), "--db", str(db), "-f", "json"])
    guesses = json.loads(out)[0]["guesses"]
    assert rc == 0 and [g["rank"] for g in guesses] == list(range(1, len(guesses) + 1))


def test_predict_keeps_the_answers_when_out_cannot_be_written(
    db, queries, tmp_path, capsys, monkeypatch
):
    import geolocus.files

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(geolocus.files, "write_text_atomic", full_disk)
    out_file = tmp_path / "answers.json"
    argv = ["predict", str(queries["paris"]), "--db", str(db), "-f", "json", "-o", str(out_file)]
    rc, out, err = _run(capsys, argv)
    assert rc == 2 and "No space left on device" in _one_error(err) and "stdout" in err
    assert Path(json.loads(out)[0]["image"]).name == "paris.jpg"  # the answers are not lost


def test_predict_csv_goes_straight_into_evaluate(db, queries, tmp_path, capsys):
    pred = tmp_path / "answers.csv"
    photos = [str(queries[n]) for n in PLACES] + [str(queries["text"])]  # one unreadable
    rc, _, _ = _run(capsys, ["predict", *photos, "--db", str(db), "-f", "csv", "-o", str(pred)])
    assert rc == 1
    truth = tmp_path / "truth.csv"
    rows = [f"{n}.jpg,{lat},{lon}" for n, (lat, lon, _) in PLACES.items()] + ["text.jpg,0,1"]
    truth.write_text("IMG_ID,LAT,LON\n" + "\n".join(rows) + "\n")
    js = tmp_path / "scores.json"
    argv = ["evaluate", "--pred", str(pred), "--truth", str(truth), "--json", str(js)]
    rc, _, err = _run(capsys, argv)
    assert rc == 0, err
    scores = json.loads(js.read_text())
    # ids were paths (queries/paris.jpg): matched by their ending; the failed photo is a miss
    assert scores["n"] == 5 and scores["n_missing"] == 1
    assert scores["acc"]["25"] == pytest.approx(80.0)  # the colour world: rank 1 is right


# -- geotag -----------------------------------------------------------------------------------


def test_geotag_uses_a_photo_linked_from_outside_and_skips_loops(tmp_path, capsys):
    coll = tmp_path / "trip"
    for j, (name, (lat, lon, col)) in enumerate(PLACES.items()):
        for i in range(2):
            photo(coll / f"{name}_{i}.jpg", col, seed=10 * j + i, exif_gps=(lat, lon))
    outside = photo(tmp_path / "elsewhere" / "DSC_0001.jpg", PLACES["tokyo"][2], seed=99)
    (coll / "camera").mkdir()
    (coll / "camera" / "DSC_0001.jpg").symlink_to(outside)
    (coll / "camera" / "back").symlink_to("..")
    (coll / "self.jpg").symlink_to("self.jpg")
    out = tmp_path / "tags.csv"
    rc, _, err = _run(capsys, ["geotag", str(coll), "--out", str(out), "--no-check", "--xmp"])
    assert rc == 0, err
    warnings = [x for x in err.splitlines() if x.startswith("geolocus: warning:")]
    assert len(warnings) == 2 and any("back: skipped" in w for w in warnings)
    with open(out, newline="") as fh:
        rows = {r["IMG_ID"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"camera/DSC_0001.jpg"}  # by its place in the collection
    assert "Tokyo" in rows["camera/DSC_0001.jpg"]["PLACE"]
    # the sidecar goes beside the link, inside the collection; nothing outside is touched
    assert (coll / "camera" / "DSC_0001.jpg.xmp").is_file()
    assert sorted(p.name for p in outside.parent.iterdir()) == ["DSC_0001.jpg"]


# -- usage, and what a new user tries ---------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["nosuch"], "No such command 'nosuch'. (see 'geolocus -h')"),
        (["evaluate", "--pred", "p.csv"], "Missing option '--truth'. (see 'geolocus evaluate -h')"),
        (["predict", "x.jpg", "--db", "db", "--top-k", "0"], "Invalid value for '--top-k'"),
        (["benchmark", "refine", "--neighbours", "n", "--labels", "l", "--folds", "0"], "--folds"),
        (["benchmark", "im2gps3k", "--sample", "-5"], "--sample"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, match):
    rc, out, err = _run(capsys, argv)
    assert rc == 2 and match in _one_error(err) and out == ""


def test_compare_with_an_unknown_benchmark_is_refused(tables, capsys):
    ev = ["evaluate", "--pred", str(tables["labels"]), "--truth", str(tables["labels"])]
    rc, _, err = _run(capsys, [*ev, "--compare", "--benchmark", "im2gps99"])
    assert rc == 2 and "no published results for 'im2gps99'; known: im2gps3k" in _one_error(err)


def test_an_empty_photo_argument_does_not_mean_the_current_folder(
    db, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a folder with a photo, which "" must not pick up
    photo(tmp_path / "here.jpg", PLACES["paris"][2])
    rc, out, err = _run(capsys, ["predict", "", "--db", str(db)])
    assert rc == 2 and "an empty photo path" in _one_error(err) and out == ""


def test_index_build_skips_loops_and_an_unlistable_subfolder(tmp_path, capsys, monkeypatch):
    img = tmp_path / "photos"
    rows = []
    for name, (lat, lon, col) in PLACES.items():
        sub = "locked" if name == "nairobi" else "ok"
        photo(img / sub / f"{name}.jpg", col)
        if sub == "ok":  # a labelled photo is looked up by its path, listed or not
            rows.append(f"{sub}/{name}.jpg,{lat},{lon}\n")
    (tmp_path / "labels.csv").write_text("IMG_ID,LAT,LON\n" + "".join(rows))
    (img / "ok" / "loop.jpg").symlink_to("loop.jpg")
    (img / "ok" / "up").symlink_to("..")
    _lock_folders_named_locked(monkeypatch)
    argv = ["index", "build", "--images", str(img), "--labels", str(tmp_path / "labels.csv")]
    rc, _, err = _run(capsys, [*argv, "--out", str(tmp_path / "db")])
    assert rc == 0, err
    warned = [x for x in err.splitlines() if x.startswith("geolocus: warning:")]
    assert len(warned) == 3
    assert any("locked: skipped (cannot list: Permission denied)" in w for w in warned)
    assert any("loop.jpg: skipped" in w for w in warned) and any("up: skipped" in w for w in warned)
    from geolocus.index.database import Database

    assert len(Database.open(tmp_path / "db")) == 3  # the rest was indexed
