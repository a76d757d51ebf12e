"""Every registered refiner follows the estimator convention: settings untouched by ``fit``,
learned state in ``name_`` attributes, saved and restored by the base class alone."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from geolocus.cli.main import main
from geolocus.errors import GeolocusError, InputError, NotFittedError
from geolocus.refine import Refiner, create_refiner, list_refiners
from test_refine_best import dense_world


@pytest.fixture(scope="module")
def world():
    return dense_world(90, seed=11)


@pytest.mark.parametrize("name", list_refiners())
def test_fit_never_changes_the_settings(world, name):
    nb, truth = world
    r = create_refiner(name)
    before = copy.deepcopy(r.get_params())
    assert not r.is_fitted()
    r.fit(nb, truth)
    assert r.get_params() == before
    assert r.is_fitted() == r.learns  # a refiner that learns shows it in `name_` attributes


@pytest.mark.parametrize("name", list_refiners())
def test_predict_before_fit(world, name):
    nb, _ = world
    r = create_refiner(name)
    if r.requires_fit:
        with pytest.raises(NotFittedError, match=f"refiner '{name}' is not fitted"):
            r.predict(nb)
        with pytest.raises(NotFittedError):
            r.save("never-written.json")
    else:
        assert r.predict(nb).shape == (len(nb), 2)


@pytest.mark.parametrize("name", list_refiners())
def test_a_clone_has_the_settings_and_nothing_learned(world, name):
    nb, truth = world
    r = create_refiner(name).fit(nb, truth)
    c = r.clone()
    assert type(c) is type(r) and c is not r
    assert c.get_params() == r.get_params() and not c.is_fitted()
    best = create_refiner("best", objective="georanker").clone()
    assert best.get_params()["objective"] == "georanker"


def test_not_fitted_is_a_one_line_user_error():
    assert issubclass(NotFittedError, GeolocusError) and issubclass(NotFittedError, InputError)


@pytest.mark.parametrize("name", list_refiners())
def test_save_and_load_give_identical_predictions(world, tmp_path, name):
    nb, truth = world
    train, test = nb.subset(slice(0, 60)), nb.subset(slice(60, None))
    r = create_refiner(name).fit(train, truth[:60])
    path = tmp_path / f"{name}.json"
    r.save(path)
    for back in (Refiner.load(path), type(r).load(path)):
        assert type(back) is type(r)
        assert back.get_params() == r.get_params()
        assert set(back.fitted_attributes()) == set(r.fitted_attributes())
        np.testing.assert_array_equal(back.rank(test).scores, r.rank(test).scores)
        np.testing.assert_array_equal(back.predict(test), r.predict(test))
    assert json.loads(path.read_text())["refiner"] == name


def test_kde_learns_its_bandwidth_without_forgetting_the_setting(world):
    nb, truth = world
    r = create_refiner("kde", bandwidth_km=800.0, bandwidths_km=(1.0, 2.0))
    r.fit(nb, truth)
    assert r.bandwidth_km == 800.0 and r.bandwidth_km_ in (1.0, 2.0)


def test_a_file_of_another_refiner_or_kind_is_refused(world, tmp_path):
    nb, truth = world
    path = tmp_path / "kde.json"
    create_refiner("kde").fit(nb, truth).save(path)
    with pytest.raises(InputError, match="saved refiner is 'kde', not 'best'"):
        type(create_refiner("best")).load(path)
    state = json.loads(path.read_text())
    state["fitted"]["__class__"] = 1
    (tmp_path / "evil.json").write_text(json.dumps(state))
    with pytest.raises(InputError, match="malformed"):
        Refiner.load(tmp_path / "evil.json")
    state = json.loads(path.read_text())
    state["params"]["bandwidth_km"] = {"dataclass": "Popen", "fields": {"dict": {}}}
    (tmp_path / "evil2.json").write_text(json.dumps(state))
    with pytest.raises(InputError, match="unknown saved type 'Popen'"):
        Refiner.load(tmp_path / "evil2.json")
    state = json.loads(path.read_text())
    state["fitted"]["bandwidth_km_"] = {"ndarray": [1.0], "dtype": "object"}
    (tmp_path / "evil3.json").write_text(json.dumps(state))
    with pytest.raises(InputError, match="must be numeric"):
        Refiner.load(tmp_path / "evil3.json")


def test_cli_refiner_file_that_is_not_one(tmp_path, capsys):
    nbf = tmp_path / "nb.csv"
    nbf.write_text("IMG_ID,near_0_lat,near_0_lon\nq,1,2\n")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "geolocus-refiner", "version": 1}')
    rc = main(["refine", "--neighbours", str(nbf), "--method", "best", "--out",
               str(tmp_path / "o.csv"), "--refiner-file", str(bad)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "geolocus: error: saved refiner has version 1, this geolocus reads version 2"
    ]
    assert not (tmp_path / "o.csv").exists()
