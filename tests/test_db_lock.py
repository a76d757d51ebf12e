"""One writer per database: the lock, a second writer, --wait, stale locks, unwritable folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from geolocus.cli.main import main
from geolocus.errors import DatabaseBusyError, InputError
from geolocus.index import Database
from geolocus.index.build import build_database, gather_inputs, inputs_source
from geolocus.index.lock import LOCK, database_lock, holder
from geolocus.index.shards import STAGING
from geolocus.models.embedder import BackboneEmbedder
from test_pipeline import ColourEncoder, photo

SRC = str(Path(__file__).resolve().parents[1] / "src")
TESTS = str(Path(__file__).resolve().parent)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, TESTS]), OMP_NUM_THREADS="1")
    env.pop("GEOLOCUS_DATA", None)
    return env


def _holder_process(db: Path, seconds: float) -> subprocess.Popen:
    """Another process that holds the database's lock for ``seconds``, then exits."""
    code = (
        "import sys, time\n"
        "from geolocus.index.lock import database_lock\n"
        "with database_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(float(sys.argv[2]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(db), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _photos(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    img = tmp_path / "photos"
    rows = []
    for i in range(n):
        photo(img / f"p{i:02d}.jpg", ((40 * i) % 256, 200 - 20 * i, 90), seed=i)
        rows.append(f"p{i:02d}.jpg,{-50 + (7 * i) % 100},{-170 + (29 * i) % 340}\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("IMG_ID,LAT,LON\n" + "".join(rows))
    return img, labels


def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    img, labels = _photos(tmp_path)
    db = tmp_path / "db"
    other = _holder_process(db, 30)
    try:
        t0 = time.perf_counter()
        with pytest.raises(DatabaseBusyError) as e:
            build_database(
                db, inputs_source(gather_inputs(img, labels)), BackboneEmbedder(ColourEncoder())
            )
        assert time.perf_counter() - t0 < 2
        msg = str(e.value)
        assert f"database {db} is being written by process {other.pid}" in msg
        assert f"{other.pid} (python" in msg and " -c " in msg  # the holder's command
        assert "since 20" in msg and msg.endswith("wait for it or pass --wait")
        assert holder(db)["pid"] == other.pid
        assert not Database.exists(db) and not (db / STAGING).exists()
    finally:
        other.kill()
        other.wait()


def test_a_killed_holder_never_blocks_and_its_stale_lock_text_is_ignored(tmp_path):
    img, labels = _photos(tmp_path)
    db = tmp_path / "db"
    other = _holder_process(db, 60)
    os.kill(other.pid, signal.SIGKILL)  # as a crash would: no clean-up runs
    other.wait()
    assert json.loads((db / LOCK).read_text())["pid"] == other.pid  # the text stays...
    assert holder(db) is None  # ...but nobody holds the lock
    src = inputs_source(gather_inputs(img, labels))
    res = build_database(db, src, BackboneEmbedder(ColourEncoder()), progress=False)
    assert res.added == 6 and (db / LOCK).read_text() == ""  # released: nobody named


def test_wait_blocks_until_the_holder_lets_go(tmp_path, capsys):
    db = tmp_path / "db"
    other = _holder_process(db, 1.5)
    t0 = time.perf_counter()
    with database_lock(db, wait=True):
        waited = time.perf_counter() - t0
        assert json.loads((db / LOCK).read_text())["pid"] == os.getpid()
    other.wait()
    assert waited > 0.5
    err = capsys.readouterr().err
    assert f"is being written by process {other.pid}" in err and "waiting for it" in err


def test_lock_is_reentrant_and_a_failure_in_a_new_folder_leaves_nothing(tmp_path):
    db = tmp_path / "new"
    with pytest.raises(RuntimeError), database_lock(db):
        with database_lock(db):  # the same process again (CLI -> build -> save)
            assert holder(db) is not None
        raise RuntimeError("the work failed")
    assert not db.exists()


def test_a_save_never_overwrites_what_another_process_saved(tmp_path):
    rng = np.random.default_rng(0)
    x, ll = rng.normal(size=(4, 8)), np.zeros((4, 2))
    db = Database.create(tmp_path / "db", dim=8, model="t")
    db.add(x[:2], ["a", "b"], ll[:2])
    db.save()
    mine, theirs = Database.open(db.path), Database.open(db.path)
    theirs.add(x[2:3], ["c"], ll[2:3])
    theirs.save()
    mine.add(x[3:], ["d"], ll[3:])
    with pytest.raises(InputError, match="changed by another process"):
        mine.save()
    assert list(Database.open(db.path).ids) == ["a", "b", "c"]


@pytest.mark.parametrize("where", ["proc", "file", "under-file", "mode-000"])
def test_unwritable_database_folder_is_one_line(tmp_path, capsys, where):
    img, labels = _photos(tmp_path, 2)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = {
        "proc": Path("/proc/geolocus-db"),
        "file": blocker,
        "under-file": blocker / "db",
        "mode-000": tmp_path / "locked" / "db",
    }[where]
    if where == "mode-000":
        if os.geteuid() == 0:
            pytest.skip("running as root: mode 000 does not stop root writing")
        out.parent.mkdir(mode=0)
    argv = ["index", "build", "--images", str(img), "--labels", str(labels)]
    rc = main([*argv, "--model", "efficientnet-lite0", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("geolocus: error:") and str(out) in err[0]
    assert "not a database folder" in err[0] or "cannot write the database folder" in err[0]
    assert blocker.read_text() == "x"


@pytest.mark.slow
def test_two_real_builds_at_once(tmp_path):
    """Two `geolocus index build` processes on one folder: the second fails at once naming
    the first; with --wait it finds the database done; the result is sound, no zero row."""
    img, labels = _photos(tmp_path, 40)
    db = tmp_path / "db"
    argv = [sys.executable, "-m", "geolocus.cli.main", "index", "build", "--images", str(img)]
    argv += ["--labels", str(labels), "--model", "efficientnet-lite0", "--out", str(db)]
    first = subprocess.Popen(
        [*argv, "--batch-size", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    try:
        deadline = time.time() + 60
        while holder(db) is None and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert holder(db)["pid"] == first.pid
        second = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=120)
        assert first.poll() is None, (
            first.communicate()
        )  # failed while the first still works, not after it
        err = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(err) == 1, second.stderr
        assert err[0].startswith(f"geolocus: error: database {db} is being written by process ")
        assert f"process {first.pid} (geolocus index build" in err[0]
        waiting = subprocess.run(
            [*argv, "--wait"], capture_output=True, text=True, env=_env(), timeout=300
        )
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert waiting.returncode == 0 and "up to date (40 photos" in waiting.stdout, waiting.stderr
    assert f"written by process {first.pid}" in waiting.stderr  # it said whom it waited for
    assert main(["index", "info", str(db), "--check"]) == 0
    vec = Database.open(db).vectors()
    assert vec.shape == (40, 1280) and (np.abs(vec).max(axis=1) > 0).all()


def test_readers_never_see_a_save_half_done(tmp_path):
    """Another process saves generation after generation; every open meanwhile succeeds
    and sees matching counts (old files vanish only after the manifest moved on)."""
    db = Database.create(tmp_path / "db", dim=8, model="t")
    db.add(np.eye(8)[:2], ["a", "b"], np.zeros((2, 2)))
    db.save()
    code = (
        "import sys, numpy as np\n"
        "from geolocus.index import Database\n"
        "for i in range(40):\n"
        "    db = Database.open(sys.argv[1])\n"
        "    db.add(np.ones((1, 8)) + i, [f'x{i}'], np.zeros((1, 2)))\n"
        "    db.save()\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(db.path)], env=_env())
    seen = set()
    while writer.poll() is None:
        got = Database.open(db.path)
        assert len(got) == len(got.meta) == got.manifest.count
        seen.add(got.manifest.generation)
    assert writer.wait() == 0 and len(Database.open(db.path)) == 42
    assert len(seen) > 3  # it did read while the writer worked


def test_check_names_a_writer_at_work(tmp_path):
    from geolocus.index.check import check_database

    db = Database.create(tmp_path / "db", dim=8, model="t")
    db.add(np.eye(8)[:3], ["a", "b", "c"], np.zeros((3, 2)))
    db.save()
    other = _holder_process(db.path, 30)
    try:
        lines: list[str] = []
        check_database(db.path, say=lines.append)
        assert lines[0].startswith(f"note: database {db.path} is being written by process ")
        assert str(other.pid) in lines[0] and lines[-1].endswith("is sound")
    finally:
        other.kill()
        other.wait()
