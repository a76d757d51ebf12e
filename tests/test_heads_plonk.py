"""The ``plonk`` head: flow matching on the sphere (the geometry checked against known
fields), a tiny world fitted and answered, save/load, guidance, the CLI, bad configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geolocus.cli.main import main
from geolocus.errors import InputError
from geolocus.geo.sphere import distance_km, to_unit
from geolocus.models import create_model, load_model
from geolocus.models import plonk as plonk_module
from geolocus.models.plonk import (
    LOG_UNIFORM,
    Plonk,
    exp_map,
    geodesic_point_velocity,
    sphere_divergence,
    tangent,
    uniform_sphere,
)
from geolocus.train.data import TrainingSet
from geolocus.train.loop import TrainConfig, fit
from stage1_helpers import photo_set

pytestmark = pytest.mark.usefixtures("one_thread")

#: Three places far apart (Paris, Sydney, New York) and a far-away check point per place.
PLACES = np.array([[48.85, 2.35], [-33.87, 151.21], [40.71, -74.01]])
ONE_HOT = np.eye(3, dtype=np.float32)
SMALL = {
    "embed_dim": 3, "hidden": 64, "depth": 3, "steps": 16, "samples": 32, "guidance": 1.0,
    "grid_points": 800,
}  # fmt: skip


def _unit(y: torch.Tensor) -> torch.Tensor:
    return y / y.norm(dim=-1, keepdim=True)


def test_geodesic_point_and_velocity():
    """slerp stays on the sphere, starts at x0, ends at x1; its velocity is tangent, of
    length the angle, equal to the finite difference and to log_{x_t}(x1) / (1 − t)."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = (_unit(uniform_sphere(50, g).double()) for _ in range(2))
    t = torch.rand(50, 1, generator=g, dtype=torch.float64) * 0.9
    xt, u = geodesic_point_velocity(x0, x1, t)
    assert torch.allclose(xt.norm(dim=-1), torch.ones(50, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(geodesic_point_velocity(x0, x1, t * 0)[0], x0, atol=1e-12)
    assert torch.allclose(geodesic_point_velocity(x0, x1, t * 0 + 1)[0], x1, atol=1e-9)
    assert (u * xt).sum(-1).abs().max() < 1e-9
    theta = torch.arccos((x0 * x1).sum(-1))
    assert torch.allclose(u.norm(dim=-1), theta, atol=1e-9)
    h = 1e-6
    fd = geodesic_point_velocity(x0, x1, t + h)[0] - geodesic_point_velocity(x0, x1, t - h)[0]
    assert torch.allclose(u, fd / (2 * h), atol=1e-6)
    # log map: angle (1 − t) θ towards x1, divided by the time left
    w = tangent(xt, x1)
    log = w / w.norm(dim=-1, keepdim=True) * ((1 - t[:, 0]) * theta)[:, None]
    assert torch.allclose(u, log / (1 - t), atol=1e-8)
    # the exponential map walks the geodesic: from x_t along (1 − t) u lands on x1
    assert torch.allclose(exp_map(xt, (1 - t) * u), x1, atol=1e-9)


def test_divergence_of_known_fields():
    """A rotation's flow has divergence 0; ∇_S z = e_z − z x has div = Δ_S z = −2z. The
    extension matters: without normalising the input the ambient divergence is −4z."""
    x = _unit(uniform_sphere(200, torch.Generator().manual_seed(1)).double())
    a = torch.tensor([[0.0, -1.0, 2.0], [1.0, 0.0, -0.5], [-2.0, 0.5, 0.0]], dtype=torch.float64)
    v, div = sphere_divergence(lambda y: _unit(y) @ a.T, x)
    assert (v * x).sum(-1).abs().max() < 1e-12  # tangent
    assert div.abs().max() < 1e-12
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    _, div = sphere_divergence(lambda y: tangent(_unit(y), ez.expand_as(y)), x)
    assert torch.allclose(div, -2 * x[:, 2], atol=1e-10)
    _, naive = sphere_divergence(lambda y: ez - y[:, 2:] * y, x)
    assert torch.allclose(naive, -4 * x[:, 2], atol=1e-10)


def test_shapes_tangent_velocity_and_samples_on_the_sphere():
    torch.manual_seed(0)
    m = create_model("plonk", **SMALL).eval()
    for b in m.blocks:  # a non-trivial field (the last layers start at zero)
        torch.nn.init.normal_(b.mlp[-1].weight, std=0.1)
    x = uniform_sphere(64)
    cond = m.condition(torch.from_numpy(ONE_HOT)).repeat(22, 1)[:64]
    v = m.velocity(x, m.modulations(cond, torch.rand(64)))
    assert v.shape == (64, 3) and (v * x).sum(-1).abs().max() < 1e-5
    assert v.norm(dim=-1).max() > 1e-3
    dev: list[float] = []
    xs, logp = m.sample(
        ONE_HOT, on_step=lambda y: dev.append(float((y.norm(dim=-1) - 1).abs().max()))
    )
    assert xs.shape == (3, 32, 3) and logp.shape == (3, 32) and torch.isfinite(logp).all()
    assert len(dev) == SMALL["steps"] and max(dev) < 1e-5  # on the sphere at every step
    coords, probs = m.gps_candidates(ONE_HOT, k=4)
    assert coords.shape == (3, 4, 2) and probs.shape == (3, 4)
    assert np.all(probs >= 0) and np.all(probs.sum(1) <= 1 + 1e-9)
    coarse = create_model("plonk", **{**SMALL, "grid_points": 300})
    grid, dist = coarse.gps_distribution(ONE_HOT[:2])
    assert grid.shape == (300, 2) and dist.shape == (2, 300)
    assert np.allclose(dist.sum(1), 1.0)
    vec = m.embed_image(ONE_HOT)
    assert vec.shape == (3, m.retrieval_dim) and torch.allclose(vec.norm(dim=-1), torch.ones(3))
    out = m.train().loss({"image_emb": torch.from_numpy(ONE_HOT), "gps": torch.tensor(PLACES)})
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])


def test_density_integrates_to_one():
    """The likelihood ODE is right in sign and units: exp(log p) of a non-trivial field
    sums to ≈ 1 over an equal-area grid (the Euler error shrinks with the steps)."""
    torch.manual_seed(0)
    m = create_model("plonk", **{**SMALL, "steps": 32, "grid_points": 2000}).eval()
    for b in m.blocks:
        torch.nn.init.normal_(b.mlp[-1].weight, std=0.1)
    grid = m.grid()
    logp = m.log_density(ONE_HOT[:1], grid, guidance=1.0)
    assert logp.max() - logp.min() > 1.0  # far from uniform
    mass = float(logp.exp().sum() * 4 * math.pi / len(grid))
    assert mass == pytest.approx(1.0, abs=0.05)


@pytest.fixture(scope="module")
def fitted() -> tuple[Plonk, list[dict[str, float]]]:
    """3 places, 32 photos each (scattered ~5 km), the image feature a one-hot of the place."""
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(3), 32)
    gps = PLACES[rows] + rng.normal(0, 0.05, (len(rows), 2))
    data = TrainingSet(ids=[str(i) for i in rows], gps=gps, embeddings=ONE_HOT[rows])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Plonk.from_config(SMALL)
    cfg = TrainConfig(epochs=150, batch_size=96, lr=1e-2, weight_decay=0.0, gamma=0.99, seed=0)
    res = fit(model, data.batches(96), cfg, progress=False)
    return model.eval(), res.history  # type: ignore[return-value]


def test_tiny_world_is_fitted(fitted):
    model, history = fitted
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]  # the loss falls
    coords, probs = model.gps_candidates(ONE_HOT, k=3)
    km = distance_km(coords[:, 0], PLACES)
    assert np.all(km < 500), km  # the most likely sample is at the right place (of 3, >5,000 km
    assert np.all(probs[:, 0] > 0.15)  # apart), with a share of the samples around it
    xs, _ = model.sample(ONE_HOT)
    near = distance_km(np.stack(_latlon(xs), -1), PLACES[:, None, :]) < 1000
    assert near.mean() > 0.7  # samples concentrate near the right place
    nll_true = model.nll(ONE_HOT, PLACES)
    nll_far = model.nll(ONE_HOT, PLACES[[1, 2, 0]])
    assert np.all(nll_true < -LOG_UNIFORM) and np.all(nll_true + 5 < nll_far), (nll_true, nll_far)
    _, dist = model.gps_distribution(ONE_HOT)
    grid = model.grid()
    for i in range(3):  # the heat layer is hottest near the place
        assert distance_km(grid[dist[i].argmax()], PLACES[i]) < 1000


def _latlon(xs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    from geolocus.geo.sphere import from_unit

    return from_unit(xs.double().numpy())


def test_deterministic_and_save_load_round_trip(fitted, tmp_path, monkeypatch):
    model, _ = fitted
    c1, p1 = model.gps_candidates(ONE_HOT, k=3)
    c2, p2 = model.gps_candidates(ONE_HOT, k=3)
    assert np.array_equal(c1, c2) and np.array_equal(p1, p2)
    c_one, _ = model.gps_candidates(ONE_HOT[1:2], k=3)  # an answer does not depend on its batch
    assert np.allclose(c_one[0], c1[1])
    nll = model.nll(ONE_HOT, PLACES)
    monkeypatch.setattr(plonk_module, "MAX_ROWS", 40)  # one photo at a time
    c4, p4 = model.gps_candidates(ONE_HOT, k=3)
    assert np.allclose(c4, c1, atol=1e-4) and np.array_equal(p4, p1)
    assert np.allclose(model.nll(ONE_HOT, PLACES), nll, atol=1e-4)
    monkeypatch.undo()
    path = tmp_path / "plonk.safetensors"
    model.save(path)
    back = load_model(path)
    assert isinstance(back, Plonk) and back.config == model.config
    c3, p3 = back.gps_candidates(ONE_HOT, k=3)
    assert np.array_equal(c1, c3) and np.array_equal(p1, p3)
    assert np.array_equal(model.nll(ONE_HOT, PLACES), back.nll(ONE_HOT, PLACES))


def test_guidance(fitted):
    """w = 0 is the unconditional field: every photo gets the same samples (same seed);
    w > 0 follows the photo."""
    model, _ = fitted
    x_u, _ = model.sample(ONE_HOT, guidance=0.0)
    assert torch.equal(x_u[0], x_u[1]) and torch.equal(x_u[1], x_u[2])
    x_g, _ = model.sample(ONE_HOT, guidance=2.0)
    assert not torch.allclose(x_g[0], x_g[1])
    for w in (1.0, 2.0):  # each photo's most likely sample is nearest its own place
        xs, logp = model.sample(ONE_HOT, guidance=w)
        best = np.stack(_latlon(xs[torch.arange(3), logp.argmax(1)]), -1)
        km = distance_km(best[:, None, :], PLACES[None, :, :])
        assert np.array_equal(km.argmin(1), [0, 1, 2]) and np.all(km.min(1) < 1000), (w, km)
    with pytest.raises(InputError, match="guidance"):
        model.sample(ONE_HOT, guidance=-1.0)


def test_bad_calls(fitted):
    model, _ = fitted
    with pytest.raises(InputError, match="invalid positions"):
        model.nll(ONE_HOT[:1], [[95.0, 0.0]])
    with pytest.raises(InputError, match="k must be"):
        model.gps_candidates(ONE_HOT, k=0)
    with pytest.raises(InputError, match=r"must be \(B, 3\)"):
        model.gps_candidates(np.ones((2, 5), np.float32))


@pytest.mark.parametrize(
    ("field", "value", "msg"),
    [
        ("expansion", 0, "expansion must be a positive integer"),
        ("time_dim", 2.5, "time_dim must be a positive integer"),
        ("cond_drop", 1.0, "cond_drop must be in"),
        ("guidance", -1, "guidance must be"),
        ("guidance", '"x"', "guidance must be a number"),
        ("merge_km", 0, "merge_km must be positive"),
        ("retrieval", '"nope"', "retrieval must be one of"),
    ],
)
def test_bad_config_is_one_line(tmp_path, capsys, field, value, msg):
    img_dir, labels = tmp_path / "images", tmp_path / "labels.csv"
    img_dir.mkdir()
    labels.write_text("IMG_ID,LAT,LON\na.jpg,1,2\n")
    cfg = _config(tmp_path, img_dir, labels, f"{field} = {value}")
    rc = main(["train", str(cfg), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("geolocus: error:")
    assert not (tmp_path / "plonk.safetensors").exists()


def _config(tmp_path: Path, images: Path, labels: Path, extra: str = "") -> Path:
    cfg = tmp_path / "plonk.toml"
    cfg.write_text(
        f"""
[model]
type = "plonk"
backbone = "efficientnet-lite0"
hidden = 32
depth = 2
steps = 8
samples = 16
grid_points = 200
{extra}
[data]
labels = "{labels}"
images = "{images}"
cache = "{tmp_path / "cache"}"
[train]
epochs = 3
batch_size = 6
lr = 1e-3
[output]
path = "{tmp_path / "plonk.safetensors"}"
"""
    )
    return cfg


@pytest.mark.slow
def test_train_then_predict_through_the_cli(tmp_path, capsys, monkeypatch):
    """`geolocus train` on generated photos (EfficientNet-Lite0 features), then
    `geolocus predict PHOTO --model FILE`: the file answers alone, with its heat layer."""
    from geolocus.encoders.image import get_spec

    if get_spec("efficientnet-lite0").locate() is None:
        pytest.skip("efficientnet-lite0 weights not installed")
    monkeypatch.setenv("GEOLOCUS_CACHE", str(tmp_path / "user-cache"))
    img_dir, labels = photo_set(tmp_path / "data", per_place=3)
    cfg = _config(tmp_path, img_dir, labels)
    assert main(["train", str(cfg), "-q"]) == 0
    out = tmp_path / "plonk.safetensors"
    assert isinstance(load_model(out), Plonk)
    capsys.readouterr()
    photo_ = str(next(iter(sorted(img_dir.iterdir()))))
    argv = ["predict", photo_, "--model", str(out), "-f", "json", "--heatmap", "--top-k", "3"]
    assert main(argv) == 0
    answer = json.loads(capsys.readouterr().out)[0]
    guesses = answer["guesses"]
    assert len(guesses) == 3
    probs = [g["confidence"] for g in guesses]
    assert 0 < sum(probs) <= 1 + 1e-6 and probs[0] > 0
    assert len(answer["heatmap"]["probability"]) == 200  # the model's grid
    assert main(argv) == 0  # deterministic: the same answer again
    again = json.loads(capsys.readouterr().out)[0]["guesses"]
    assert [(g["lat"], g["lon"]) for g in again] == [(g["lat"], g["lon"]) for g in guesses]
    assert np.isfinite(to_unit(guesses[0]["lat"], guesses[0]["lon"])).all()
