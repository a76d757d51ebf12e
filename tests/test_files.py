"""geolocus.files: atomic outputs and the array cache."""

from __future__ import annotations

import errno
import tempfile

import numpy as np
import pytest

from geolocus.errors import InputError
from geolocus.files import atomic_write, cached_arrays, check_output_path, write_text_atomic


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    p = write_text_atomic(tmp_path / "out" / "a.txt", "old")
    assert p.read_text() == "old"
    with pytest.raises(RuntimeError), atomic_write(p) as fh:
        fh.write("half")
        raise RuntimeError("interrupted")
    assert p.read_text() == "old"
    assert [f.name for f in p.parent.iterdir()] == ["a.txt"]  # no temporary left behind


def test_cached_arrays_builds_once_and_rebuilds_a_corrupt_cache(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"a": np.arange(3), "b": np.ones((2, 2), np.float32)}

    path = tmp_path / "c.npz"
    first = cached_arrays(path, build)
    again = cached_arrays(path, build)
    assert len(calls) == 1 and path.is_file()
    assert set(again) == {"a", "b"} and np.array_equal(again["a"], first["a"])
    path.write_bytes(b"garbage")
    assert np.array_equal(cached_arrays(path, build)["b"], np.ones((2, 2)))
    assert len(calls) == 2
    # an unwritable cache only costs speed
    blocked = tmp_path / "file"
    blocked.write_text("x")
    assert np.array_equal(cached_arrays(blocked / "c.npz", build)["a"], np.arange(3))


def test_check_output_path_refuses_what_cannot_be_written_and_creates_nothing(
    tmp_path, monkeypatch
):
    with pytest.raises(InputError, match=r"--out .* is a folder; give a file path"):
        check_output_path(tmp_path, "--out")
    (tmp_path / "f.csv").write_text("x")
    with pytest.raises(InputError, match=r"f\.csv is not a folder"):
        check_output_path(tmp_path / "f.csv" / "sub" / "o.json")
    # missing parents are fine (made when the file is written), but the check makes none
    assert check_output_path(tmp_path / "a" / "b" / "o.json") == tmp_path / "a" / "b" / "o.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv"]
    # a folder where no file can be made (mode 000 for anyone but root; simulated)
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and str(dir) == str(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(InputError, match=r"cannot write --json .*o\.json: Permission denied"):
        check_output_path(tmp_path / "new" / "o.json", "--json")
    # the writers' own failures stay OSErrors (caches suppress them) but name the target
    with pytest.raises(PermissionError) as e, atomic_write(tmp_path / "o.json") as fh:
        fh.write("never")
    assert e.value.filename == str(tmp_path / "o.json")
    with pytest.raises(IsADirectoryError) as e, atomic_write(tmp_path) as fh:
        fh.write("never")
    assert e.value.filename == str(tmp_path) and "is a folder" in e.value.strerror
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv"]
