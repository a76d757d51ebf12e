"""Damaged databases are named, not half-read; `index info --check` verifies a whole one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geolocus.cli.main import main
from geolocus.errors import InputError
from geolocus.index import Database
from geolocus.index.check import check_database


def _db(path: Path, n: int = 30, dim: int = 8, factory: str = "Flat") -> Database:
    rng = np.random.default_rng(0)
    db = Database.create(path, dim=dim, model="test-model", factory=factory)
    ll = np.column_stack([rng.uniform(-80, 80, n), rng.uniform(-170, 170, n)])
    db.add(rng.normal(size=(n, dim)), [f"p{i}.jpg" for i in range(n)], ll)
    db.save()
    return db


def _damage(f: Path, how: str) -> None:
    b = bytearray(f.read_bytes())
    if how == "truncate":
        b = b[: len(b) // 2]
    else:  # one byte in the middle, as a bad disk or a stray write would
        b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("name", ["vectors-1.faiss", "meta-1.parquet", "manifest.json"])
def test_damaged_file_is_named_by_info_predict_and_open(tmp_path, capsys, name, how):
    db = _db(tmp_path / "db").path
    _damage(db / name, how)
    want = f"geolocus: error: database {db} is damaged: {name} "
    for argv in (["index", "info", str(db)], ["predict", "--db", str(db), str(tmp_path / "x.jpg")]):
        assert main(argv) == 2
        assert _one_line(capsys).startswith(want)
    with pytest.raises(InputError, match=f"is damaged: {name}"):
        Database.open(db)


@pytest.mark.parametrize("how", ["truncate", "flip-header"])
@pytest.mark.parametrize("name", ["vectors-1.faiss", "meta-1.parquet"])
def test_damage_found_without_recorded_checksums(tmp_path, capsys, name, how):
    """A database saved before sizes and checksums were recorded: the readers' errors."""
    db = _db(tmp_path / "db").path
    man = json.loads((db / "manifest.json").read_text())
    del man["files"]
    (db / "manifest.json").write_text(json.dumps(man))
    b = bytearray((db / name).read_bytes())
    if how == "truncate":
        b = b[: len(b) // 2]
    else:
        b[4:40] = bytes(x ^ 0xFF for x in b[4:40])
    (db / name).write_bytes(bytes(b))
    assert main(["index", "info", str(db)]) == 2
    assert _one_line(capsys).startswith(f"geolocus: error: database {db} is damaged: {name} ")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[1, 2]", "not a geolocus database manifest"),
        ('{"model": "m", "dim": "eight"}', "'dim' of the wrong type"),
        ('{"model": "m", "dim": 8, "colour": 1}', "not a geolocus database manifest"),
        ('{"model": "m", "dim": 8, "count": -1}', "negative"),
    ],
)
def test_garbage_manifest(tmp_path, capsys, text, match):
    db = _db(tmp_path / "db").path
    (db / "manifest.json").write_text(text)
    assert main(["index", "info", str(db)]) == 2
    line = _one_line(capsys)
    assert f"database {db} is damaged: manifest.json" in line and match in line


def test_missing_generation_file(tmp_path, capsys):
    db = _db(tmp_path / "db").path
    (db / "meta-1.parquet").unlink()
    assert main(["index", "info", str(db)]) == 2
    assert "is damaged: meta-1.parquet is missing" in _one_line(capsys)


def test_check_passes_a_sound_database(tmp_path, capsys):
    db = _db(tmp_path / "db").path
    assert main(["index", "info", str(db), "--check"]) == 0
    out = capsys.readouterr().out
    for what in ("SHA-256 as written", "30 vectors of dimension 8", "ids: 30 unique",
                 "coordinates:", "30 read back", f"database {db} is sound"):  # fmt: skip
        assert what in out
    assert main(["index", "info", str(db), "--check", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["check"]["sound"] and got["count"] == 30 and len(got["check"]["checked"]) >= 6


def _tamper(db: Database, vectors=None, meta=None) -> Path:
    """Save contents that Database.add would refuse (what a broken writer could leave)."""
    if vectors is not None:
        db.index.reset()
        db.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    if meta is not None:
        db.meta = meta
    db.save()
    return db.path


def test_check_finds_zero_vectors_with_correct_ids(tmp_path, capsys):
    db = _db(tmp_path / "db")
    v = db.vectors()
    v[[3, 17]] = 0.0  # what the two concurrent builds left: right ids, rows of zeros
    path = _tamper(db, vectors=v)
    assert main(["index", "info", str(path)]) == 0  # opens and searches without complaint
    capsys.readouterr()
    assert main(["index", "info", str(path), "--check"]) == 2
    line = _one_line(capsys)
    assert "is damaged: vectors-2.faiss holds 2 all-zero vectors (ids p3.jpg, p17.jpg)" in line


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m.assign(id=["p0.jpg"] * 2 + list(m["id"][2:])), "repeats 1 ids: p0.jpg"),
        (lambda m: m.assign(lat=[95.0, *list(m["lat"][1:])]), "invalid coordinates"),
        (lambda m: m.assign(id=[" ", *list(m["id"][1:])]), "1 empty ids"),
    ],
)
def test_check_finds_bad_metadata(tmp_path, capsys, change, match):
    db = _db(tmp_path / "db")
    path = _tamper(db, meta=change(db.meta.copy()))
    assert main(["index", "info", str(path), "--check"]) == 2
    line = _one_line(capsys)
    assert "is damaged: meta-2.parquet" in line and match in line


def test_check_finds_vectors_not_of_unit_length_and_non_finite(tmp_path):
    db = _db(tmp_path / "db")
    v = db.vectors()
    v[5] *= 3
    _tamper(db, vectors=v)
    with pytest.raises(InputError, match="1 vectors not of unit length"):
        check_database(db.path, say=lambda s: None)
    v[5] = np.nan
    _tamper(db, vectors=v)
    with pytest.raises(InputError, match="1 non-finite vectors"):
        check_database(db.path, say=lambda s: None)


def test_check_reads_vectors_in_chunks_and_approximate_indexes(tmp_path):
    db = _db(tmp_path / "db", n=300, dim=16, factory="IVF4,SQ8")
    lines: list[str] = []
    check_database(db.path, say=lines.append, chunk=7)
    assert any("300 read back" in s and "unit length" not in s for s in lines)


def test_check_says_when_an_index_cannot_return_its_vectors(tmp_path, monkeypatch):
    db = _db(tmp_path / "db")

    def no_vectors(self, rows=None):
        raise InputError("the FAISS index 'X' cannot return its vectors (not implemented)")

    monkeypatch.setattr(Database, "vectors", no_vectors)
    lines: list[str] = []
    check_database(db.path, say=lines.append)
    assert any(s.startswith("vectors: not checked: the FAISS index") for s in lines)
    assert lines[-1].endswith("is sound")


def test_check_finds_an_unreadable_report(tmp_path, capsys):
    db = _db(tmp_path / "db").path
    (db / "report.csv").write_bytes(b"stage,id\n\xff\xfe\n")
    assert main(["index", "info", str(db), "--check"]) == 2
    assert "is damaged: report.csv cannot be read" in _one_line(capsys)


def test_parquet_without_its_columns(tmp_path, capsys):
    db = _db(tmp_path / "db")
    path = _tamper(db, meta=pd.DataFrame({"x": range(30)}))
    assert main(["index", "info", str(path)]) == 2
    assert "meta-2.parquet has no column id, lat, lon" in _one_line(capsys)
