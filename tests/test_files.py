"""geolocus.files: atomic outputs and the array cache."""

from __future__ import annotations

import numpy as np
import pytest

from geolocus.files import atomic_write, cached_arrays, write_text_atomic


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
