"""CSV tables: what users feed the CLI, good and bad."""

from __future__ import annotations

import numpy as np
import pytest

from geolocus.data import read_coords, read_neighbours, write_coords
from geolocus.errors import InputError


def test_case_insensitive_columns_and_aliases(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("img_id,Latitude,lng,extra\na.jpg,1.5,-2.5,x\nb.jpg, 3 ,4,y\n")
    df = read_coords(p)
    assert list(df.columns) == ["IMG_ID", "LAT", "LON"]
    assert df.LAT.tolist() == [1.5, 3.0] and df.LON.tolist() == [-2.5, 4.0]


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "empty"),
        ("IMG_ID,LAT\na,1\n", "no LON column"),
        ("IMG_ID,LAT,LON\na,north,2\n", "non-numeric.*line 2"),
        ("IMG_ID,LAT,LON\na,1,2\na,3,4\n", "duplicate"),
        ("IMG_ID,LAT,LON\na,95,2\n", "invalid"),
        ("IMG_ID,LAT,LON\na,1,2,3,4\n", "not a valid CSV"),
        ("IMG_ID,LAT,LON\n,1,2\n", "empty IMG_ID"),
    ],
)
def test_bad_tables_give_one_line_errors(tmp_path, content, match):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(InputError, match=match) as e:
        read_coords(p)
    assert "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_coords(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="directory"):
        read_coords(tmp_path)


def test_binary_file_is_rejected(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    with pytest.raises(InputError):
        read_coords(p)


def test_write_then_read_round_trip_is_atomic(tmp_path):
    p = tmp_path / "sub" / "out.csv"
    write_coords(p, ["a", "b"], np.array([[1.25, 2.5], [-3.0, 179.999999]]))
    df = read_coords(p)
    assert df.IMG_ID.tolist() == ["a", "b"]
    np.testing.assert_allclose(df[["LAT", "LON"]].to_numpy(), [[1.25, 2.5], [-3.0, 179.999999]])
    assert [f.name for f in p.parent.iterdir()] == ["out.csv"]  # no temporary left behind


def _neighbours_csv(path, rows=2, k=3, kf=2, scores=False):
    cols = ["IMG_ID"]
    cols += [f"near_{i}_{c}" for i in range(k) for c in ("lat", "lon")]
    cols += [f"far_{i}_{c}" for i in range(kf) for c in ("lat", "lon")]
    if scores:
        cols += [f"near_{i}_score" for i in range(k)]
    lines = [",".join(cols)]
    for r in range(rows):
        vals = [f"q{r}"] + [str(float(r + i)) for i in range(len(cols) - 1)]
        lines.append(",".join(vals))
    path.write_text("\n".join(lines) + "\n")


def test_read_neighbours_shapes(tmp_path):
    p = tmp_path / "n.csv"
    _neighbours_csv(p, scores=True)
    nb = read_neighbours(p)
    assert nb.near.shape == (2, 3, 2) and nb.far.shape == (2, 2, 2)
    assert nb.near_scores.shape == (2, 3) and nb.far_scores is None
    assert nb.near[1, 0].tolist() == [1.0, 2.0]


def test_read_neighbours_errors(tmp_path):
    p = tmp_path / "n.csv"
    p.write_text("IMG_ID,near_0_lat,near_0_lon,near_2_lat,near_2_lon\nq,1,2,3,4\n")
    with pytest.raises(InputError, match="ranks"):
        read_neighbours(p)
    p.write_text("IMG_ID,a,b\nq,1,2\n")
    with pytest.raises(InputError, match="no near"):
        read_neighbours(p)


def test_read_shared_neighbours(im2gps3k):
    nb = read_neighbours(im2gps3k / "g3_neighbours.csv")
    assert len(nb) == 1964 and nb.near.shape[1:] == (20, 2) and nb.far.shape[1:] == (20, 2)


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    p = tmp_path / "out.csv"
    write_coords(p, ["a"], np.array([[1.0, 2.0]]))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
