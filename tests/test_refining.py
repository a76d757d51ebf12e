"""Stage 2 on neighbour tables as library calls (what ``geolocus refine`` and ``geolocus
benchmark refine`` run), and the command-line options they share."""

from __future__ import annotations

import numpy as np
import pytest

from geolocus.cli.main import main
from geolocus.cli.options import refiner_names, refiner_option
from geolocus.errors import InputError, NotFittedError
from geolocus.pipeline.refining import (
    cross_validate_refiners,
    get_refiner,
    labelled_neighbours,
    refine_table,
)
from geolocus.refine import REFINERS, KDERefiner, list_refiners
from test_refine_best import _write_neighbours, dense_world


@pytest.fixture
def tables(tmp_path):
    nb, truth = dense_world(60, seed=12)
    nfile, lfile = tmp_path / "nb.csv", tmp_path / "labels.csv"
    _write_neighbours(nfile, nb)
    rows = [f"{q},{t[0]:.6f},{t[1]:.6f}\n" for q, t in zip(nb.ids, truth, strict=True)]
    lfile.write_text("IMG_ID,LAT,LON\n" + "".join(rows))
    short = tmp_path / "short.csv"
    short.write_text("IMG_ID,LAT,LON\n" + "".join(rows[:50]))
    return nfile, lfile, short


def test_labelled_neighbours_refuses_or_drops_unlabelled_queries(tables):
    nfile, lfile, short = tables
    nb, truth, missing = labelled_neighbours(nfile, lfile)
    assert len(nb) == 60 and truth.shape == (60, 2) and missing == 0
    with pytest.raises(InputError, match=r"10 queries of .* have no row in"):
        labelled_neighbours(nfile, short)
    nb, truth, missing = labelled_neighbours(nfile, short, drop_unlabelled=True)
    assert len(nb) == len(truth) == 50 and missing == 10


def test_get_refiner_fits_loads_or_refuses(tables, tmp_path):
    nfile, lfile, _ = tables
    assert not get_refiner("dualgeo").is_fitted()
    with pytest.raises(InputError, match="learns from data"):
        get_refiner("best")
    with pytest.raises(InputError, match="go together"):
        get_refiner("kde", fit=nfile)
    kde = get_refiner("kde", fit=nfile, labels=lfile)
    assert isinstance(kde, KDERefiner) and kde.is_fitted()
    kde.save(tmp_path / "kde.json")
    back = get_refiner("kde", refiner_file=tmp_path / "kde.json")
    assert back.bandwidth_km_ == kde.bandwidth_km_
    with pytest.raises(InputError, match="not both"):
        get_refiner("kde", fit=nfile, labels=lfile, refiner_file=tmp_path / "kde.json")
    with pytest.raises(InputError, match="learns nothing"):
        get_refiner("nearest", refiner_file=tmp_path / "kde.json")
    with pytest.raises(InputError, match="reads no photo text"):
        get_refiner("dualgeo", fit_images=tmp_path)


def test_refine_table_notes_what_it_did_not_use(tables, tmp_path):
    nfile = tables[0]
    done = refine_table(get_refiner("nearest"), nfile, images=tmp_path)
    assert done.positions.shape == (60, 2) and len(done.neighbours) == 60
    assert done.notes == ["this refiner was fitted without photos: --images is not used"]
    np.testing.assert_array_equal(done.positions, done.neighbours.near[:, 0])
    with pytest.raises(NotFittedError):
        refine_table(REFINERS.create("best"), nfile)


def test_cross_validate_refiners_rows(tables):
    nfile, lfile, _ = tables
    nb, truth, _ = labelled_neighbours(nfile, lfile)
    seen = []
    rows = cross_validate_refiners(
        nb, truth, ["nearest", "kde"], folds=3, compare=False, progress=seen.append
    )
    assert [r[0] for r in rows] == ["nearest", "kde", "oracle (best of 20)"] and seen == [
        "nearest",
        "kde",
    ]
    oracle = rows[-1][1]
    assert all(oracle.acc[t] >= s.acc[t] for _, s in rows[:-1] for t in oracle.acc)
    with pytest.raises(InputError, match="unknown refine method 'nope'"):
        cross_validate_refiners(nb, truth, ["nearest", "nope"])
    with pytest.raises(InputError, match="at least 100 labelled queries"):
        cross_validate_refiners(nb, truth, ["nearest"], folds=100)


def test_the_refiner_option_lists_the_registry():
    opt = refiner_option("--method")
    assert opt.default == "dualgeo" and all(n in opt.help for n in list_refiners())
    assert refiner_names(" nearest, best ,") == ["nearest", "best"]
    with pytest.raises(InputError, match="choose one of: nearest, dualgeo, kde, best"):
        refiner_names("nearest,nope")


def test_refine_model_flag_is_renamed(tables, tmp_path, capsys):
    nfile, lfile, _ = tables
    out, saved = tmp_path / "p.csv", tmp_path / "r.json"
    base = ["refine", "--neighbours", str(nfile), "--method", "kde", "--out", str(out)]
    assert (
        main([*base, "--fit", str(nfile), "--labels", str(lfile), "--save-refiner", str(saved)])
        == 0
    )
    assert main([*base, "--refiner-file", str(saved)]) == 0
    capsys.readouterr()
    assert main([*base, "--model", str(saved)]) == 2  # the old name is a usage error now
    err = capsys.readouterr().err
    assert "No such option: --model" in err and "Traceback" not in err
