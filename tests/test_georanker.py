"""GeoRanker's multi-order ranking loss as ``best``'s training objective: the loss on known
orders and a value worked out by hand, its gradient, fitting with it, the CLI option and
its errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from geolocus.cli.main import main
from geolocus.data import read_coords
from geolocus.errors import InputError
from geolocus.pipeline.refining import cross_validate_refiners, new_refiner
from geolocus.refine import BestRefiner
from geolocus.refine.features import FeatureSpec
from geolocus.refine.georanker import MultiOrderLoss, multi_order_loss
from geolocus.refine.learned import fit_weights
from test_refine_best import _acc, dense_world, twin_world, write_world


def _numeric_grad(f, s: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(s)
    for i in np.ndindex(s.shape):
        up, down = s.copy(), s.copy()
        up[i] += eps
        down[i] -= eps
        g[i] = (f(up) - f(down)) / (2 * eps)
    return g


# -- the loss ------------------------------------------------------------------------------


def test_scores_in_distance_order_cost_less_than_reversed():
    rng = np.random.default_rng(0)
    d = rng.uniform(0, 5000, (50, 20))
    aligned = -d / 100.0  # the closer, the higher
    for top in (None, 1, 5):
        good, _ = multi_order_loss(aligned, d, top=top)
        bad, _ = multi_order_loss(-aligned, d, top=top)
        flat, _ = multi_order_loss(np.zeros_like(d), d, top=top)
        assert good < flat < bad
    # each order on its own prefers the right order too
    for w in ((1.0, 0.0), (0.0, 1.0)):
        assert multi_order_loss(aligned, d, w)[0] < multi_order_loss(-aligned, d, w)[0]


def test_three_candidates_by_hand():
    # candidates 0, 1, 2 score 2, 1, 0 and lie 10, 35, 20 km from the truth
    s = np.array([[2.0, 1.0, 0.0]])
    d = np.array([[10.0, 35.0, 20.0]])
    e = math.exp
    # first order: closest first is 0, 2, 1, whose scores are 2, 0, 1; mean of 3 positions
    first = ((math.log(e(2) + e(0) + e(1)) - 2) + (math.log(e(0) + e(1)) - 0) + 0.0) / 3
    # second order: pairs (closer, farther) with their gaps: (0,1) 25 km, (2,1) 15 km,
    # (0,2) 10 km; largest gap first, their score gaps are 1, -1, 2
    second = ((math.log(e(1) + e(-1) + e(2)) - 1) + (math.log(e(-1) + e(2)) + 1) + 0.0) / 3
    value, _ = multi_order_loss(s, d)
    assert value == pytest.approx(0.7 * first + 0.3 * second, rel=1e-12)
    assert value == pytest.approx(0.841296, abs=1e-6)
    # other weights, and top=1: only the closest's position, only the pairs it is in
    assert multi_order_loss(s, d, (1.0, 0.0))[0] == pytest.approx(first, rel=1e-12)
    top1 = 0.5 * (math.log(e(2) + e(0) + e(1)) - 2) + 0.5 * (
        # pairs (0,1) gap 25 -> 1 and (0,2) gap 10 -> 2, mean of 2 positions
        ((math.log(e(1) + e(2)) - 1) + 0.0) / 2
    )
    assert multi_order_loss(s, d, (0.5, 0.5), top=1)[0] == pytest.approx(top1, rel=1e-12)


@pytest.mark.parametrize("top", [None, 2])
def test_gradient_matches_finite_differences(top):
    rng = np.random.default_rng(1)
    s = rng.normal(0, 2, (5, 7))
    d = rng.uniform(0, 3000, (5, 7))
    d[1, 5:] = np.inf  # a query with two missing candidates
    d[2, 3] = d[2, 4]  # a tie

    def f(x: np.ndarray) -> float:
        return multi_order_loss(x, d, top=top)[0]

    _, grad = multi_order_loss(s, d, top=top)
    np.testing.assert_allclose(grad, _numeric_grad(f, s), atol=1e-7)
    assert np.all(grad[1, 5:] == 0)  # missing candidates take no part


def test_scores_far_apart_stay_finite():
    s = np.array([[0.0, -800.0, -1600.0, 5.0, -2000.0]])  # exp would underflow
    d = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    value, grad = multi_order_loss(s, d)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    num = _numeric_grad(lambda x: multi_order_loss(x, d)[0], s, eps=1e-4)
    np.testing.assert_allclose(grad, num, atol=1e-5)


def test_bad_settings():
    d = np.ones((2, 3))
    with pytest.raises(InputError, match="order weights"):
        MultiOrderLoss(d, (0.0, 0.0))
    with pytest.raises(InputError, match="order weights"):
        MultiOrderLoss(d, (-1.0, 1.0))
    with pytest.raises(InputError, match="order weights"):
        MultiOrderLoss(d, ("a", 1.0))  # type: ignore[arg-type]
    for top in (0, 1.5, True):
        with pytest.raises(InputError, match="top positions"):
            MultiOrderLoss(d, top=top)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown objective 'nope'"):
        BestRefiner(objective="nope").fit(*dense_world(20, seed=0))


# -- fitting -------------------------------------------------------------------------------


def test_fit_weights_finds_the_telltale_feature():
    """Feature 2 marks the candidate closest to the truth; the others are noise."""
    rng = np.random.default_rng(2)
    n, c, f = 300, 10, 5
    d = rng.uniform(0, 5000, (n, c))
    x = rng.normal(0, 1, (n, c, f))
    x[..., 2] = 0.0
    x[np.arange(n), d.argmin(axis=1), 2] = 1.0
    w = fit_weights(x, np.zeros((n, c)), np.zeros(f), 1.0, 1e-4, loss=MultiOrderLoss(d))
    assert w[2] > 5 * np.abs(np.delete(w, 2)).max()
    assert np.mean(np.argmax(x @ w, axis=1) == d.argmin(axis=1)) == 1.0


def test_best_with_georanker_learns_what_marks_the_truth():
    # only the far neighbours tell the true cluster from the decoy
    nb, truth = twin_world(240, seed=2)
    tr, te = np.arange(240) < 160, np.arange(240) >= 160
    r = BestRefiner(objective="georanker", sharpness=2.0, l2=1e-3).fit(nb.subset(tr), truth[tr])
    assert _acc(r.predict(nb.subset(te)), truth[te], 25) >= 0.95
    far = [i for i, n in enumerate(FeatureSpec().names()) if n.startswith("far_")]
    assert r.coef_[far].sum() < 0
    soft = BestRefiner(sharpness=2.0, l2=1e-3).fit(nb.subset(tr), truth[tr])
    assert not np.allclose(soft.coef_, r.coef_)  # the objective is really another one
    ranking = r.rank(nb.subset(te))
    assert np.allclose(ranking.scores.sum(axis=1), 1.0)


def test_objective_is_saved_and_chosen_by_name(tmp_path):
    nb, truth = dense_world(80, seed=3)
    r = new_refiner("best", "georanker")
    assert isinstance(r, BestRefiner) and r.objective == "georanker"
    r.sharpness, r.l2 = 2.0, 1e-3
    r.fit(nb, truth)
    r.save(tmp_path / "g.json")
    back = BestRefiner.load(tmp_path / "g.json")
    assert back.objective == "georanker" and back.order_weights == (0.7, 0.3)
    np.testing.assert_array_equal(back.rank(nb).scores, r.rank(nb).scores)
    with pytest.raises(InputError, match="unknown objective 'nope' for method 'best'"):
        new_refiner("best", "nope")
    with pytest.raises(InputError, match="method 'kde' has no training objective"):
        new_refiner("kde", "georanker")


def test_cross_validation_gives_a_row_per_objective():
    nb, truth = dense_world(40, seed=4)
    rows = cross_validate_refiners(
        nb, truth, ["nearest", "best"], 2, False, False, objectives=["softmax", "georanker"]
    )
    assert [label for label, _ in rows] == ["nearest", "best", "best (georanker objective)"]
    with pytest.raises(InputError, match="no training objective"):
        cross_validate_refiners(nb, truth, ["nearest"], 2, objectives=["georanker"])


# -- the command line ----------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    nb, truth = dense_world(80, seed=7)
    nfile, lfile = write_world(tmp_path, nb, truth)
    return nb, truth, nfile, lfile


def test_cli_refine_with_the_georanker_objective(files, tmp_path, capsys):
    nb, truth, nfile, lfile = files
    out, out2, model = tmp_path / "p.csv", tmp_path / "p2.csv", tmp_path / "m.json"
    base = ["refine", "--neighbours", str(nfile), "--method", "best"]
    fit = ["--fit", str(nfile), "--labels", str(lfile)]
    args = [*base, "--objective", "georanker", "--out", str(out), *fit]
    assert main([*args, "--save-refiner", str(model)]) == 0
    pred = read_coords(out).set_index("IMG_ID").loc[list(nb.ids), ["LAT", "LON"]].to_numpy()
    assert _acc(pred, truth, 25) >= 0.9
    assert json.loads(model.read_text())["params"]["objective"] == "georanker"
    reuse = [*base, "--out", str(out2), "--refiner-file", str(model)]
    assert main([*reuse, "--objective", "georanker"]) == 0
    assert out2.read_text() == out.read_text()
    capsys.readouterr()
    out2.unlink()
    assert main([*reuse, "--objective", "softmax"]) == 2
    err = capsys.readouterr().err
    assert "was fitted with objective 'georanker', not 'softmax'" in err
    assert not out2.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "best", "--objective", "nope"], "unknown objective 'nope' for method 'best'"),
        (["--method", "kde", "--objective", "georanker"], "method 'kde' has no training objective"),
        (["--method", "nearest", "--objective", "softmax"], "method 'nearest' has no training"),
    ],
)
def test_cli_refine_bad_objective(files, tmp_path, capsys, args, message):
    _, _, nfile, lfile = files
    out = tmp_path / "p.csv"
    cmd = ["refine", "--neighbours", str(nfile), "--out", str(out), *args]
    assert main([*cmd, "--fit", str(nfile), "--labels", str(lfile)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("geolocus: error: ") and message in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "best", "--objective", "nope"], "unknown objective 'nope'"),
        (["--methods", "nearest,kde", "--objective", "georanker"], "no training objective"),
        (["--methods", "best", "--objective", ","], "--objective needs a name"),
    ],
)
def test_cli_benchmark_bad_objective(files, capsys, args, message):
    _, _, nfile, lfile = files
    cmd = ["benchmark", "refine", "--neighbours", str(nfile), "--labels", str(lfile), *args]
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_cli_benchmark_rows_per_objective(files, capsys):
    _, _, nfile, lfile = files
    cmd = ["benchmark", "refine", "--neighbours", str(nfile), "--labels", str(lfile)]
    opts = ["--methods", "nearest,best", "--objective", "georanker", "--folds", "2"]
    assert main([*cmd, *opts, "--markdown", "--no-compare", "--no-oracle"]) == 0
    table = capsys.readouterr().out
    assert "| best (georanker objective) |" in table and "| nearest |" in table
    assert "| best |" not in table
