"""The cell-classification heads: ``planet`` (adaptive cells), ``hybrid`` (cells + offset
regression) and ``pigeon`` (semantic geocells, haversine label smoothing, refinement)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geolocus.cli.main import main
from geolocus.errors import InputError, NotFittedError
from geolocus.geo import haversine_km
from geolocus.models import create_model, list_models, load_model
from geolocus.models.pigeon import haversine_smoothing
from geolocus.train.data import TrainingSet
from geolocus.train.loop import TrainConfig, fit
from stage1_helpers import PLACES, photo_set

pytestmark = pytest.mark.usefixtures("one_thread")

HEADS = ("planet", "hybrid", "pigeon")
#: Four well-separated places (Paris, New York, Tokyo, Sydney).
WORLD = np.array([[48.85, 2.35], [40.71, -74.0], [35.68, 139.69], [-33.87, 151.21]])
D = 16


def _data(n_per: int = 8, seed: int = 0, spread: float = 0.05) -> tuple[TrainingSet, np.ndarray]:
    """``n_per`` photos at each place (positions ~5 km apart), embeddings = the place's
    random vector + noise. Returns the set and each photo's place."""
    rng = np.random.default_rng(seed)
    place = np.repeat(np.arange(len(WORLD)), n_per)
    gps = WORLD[place] + rng.normal(0, spread, (len(place), 2))
    proto = np.random.default_rng(99).normal(0, 1, (len(WORLD), D))
    emb = (proto[place] + 0.1 * rng.normal(0, 1, (len(place), D))).astype(np.float32)
    return TrainingSet([f"p{i}" for i in range(len(place))], gps, emb), place


def _head(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = {"embed_dim": D, "hidden_dim": 32, "dropout": 0.0, "min_photos": 2, "max_photos": 8}
    return create_model(name, **{**cfg, **kw})


def _train(model, data: TrainingSet, epochs: int = 30, gamma: float = 0.87):
    cfg = TrainConfig(epochs=epochs, lr=3e-3, batch_size=16, gamma=gamma)
    return fit(model, data.batches(16), cfg, progress=False)


@pytest.fixture(scope="module")
def trained() -> dict:
    data, place = _data()
    out = {}
    for name in HEADS:
        m = _head(name)
        m.prepare(data)
        out[name] = (m, _train(m, data))
    return {"data": data, "place": place, "models": out}


def test_heads_are_registered():
    assert set(HEADS) <= set(list_models())


@pytest.mark.parametrize("name", HEADS)
def test_shapes_and_distribution(trained, name):
    m, _ = trained["models"][name]
    x = trained["data"].embeddings[:5]
    coords, probs = m.gps_candidates(x, k=3)
    assert coords.shape == (5, 3, 2) and probs.shape == (5, 3)
    assert np.all(np.diff(probs, axis=1) <= 0) and np.all(probs.sum(1) <= 1 + 1e-6)
    assert np.all(np.abs(coords[..., 0]) <= 90) and np.all(np.abs(coords[..., 1]) <= 180)
    where, p = m.gps_distribution(torch.from_numpy(x))
    assert where.shape == (m.config.n_cells, 2) and p.shape == (5, m.config.n_cells)
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    v = m.embed_image(x)
    assert v.shape == (5, m.retrieval_dim) and torch.allclose(v.norm(dim=1), torch.ones(5))
    big_k, _ = m.gps_candidates(x, k=10_000)
    assert big_k.shape[1] == m.config.n_cells  # k is capped at the number of cells
    with pytest.raises(InputError, match=r"\(B, 16\)"):
        m.gps_candidates(np.zeros((2, 7), np.float32))


@pytest.mark.parametrize("name", HEADS)
def test_loss_falls_and_the_tiny_set_is_overfitted(trained, name):
    m, res = trained["models"][name]
    first, last = res.history[0]["loss"], res.history[-1]["loss"]
    assert last < 0.7 * first, (first, last)
    data, place = trained["data"], trained["place"]
    coords, _ = m.gps_candidates(data.embeddings, k=1)
    err = haversine_km(coords[:, 0, 0], coords[:, 0, 1], WORLD[place, 0], WORLD[place, 1])
    assert np.median(err) < 25 and err.max() < 100, err


@pytest.mark.parametrize("name", HEADS)
def test_save_load_round_trip(trained, tmp_path, name):
    m, _ = trained["models"][name]
    m.save(tmp_path / f"{name}.safetensors")
    back = load_model(tmp_path / f"{name}.safetensors")
    assert back.model_type == name and back.config.n_cells == m.config.n_cells
    x = trained["data"].embeddings
    for a, b in zip(m.gps_candidates(x, k=3), back.gps_candidates(x, k=3), strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(m.gps_distribution(x)[1], back.gps_distribution(x)[1])


def test_unfitted_and_impossible_configs():
    m = _head("planet")
    with pytest.raises(NotFittedError, match="call prepare"):
        m.gps_candidates(np.zeros((1, D), np.float32))
    for name in HEADS:
        with pytest.raises(InputError, match="must not exceed"):
            _head(name, min_photos=9, max_photos=3)
    with pytest.raises(InputError, match="tau_km"):
        _head("pigeon", tau_km=0.0)


def test_hybrid_offsets_move_the_answer_inside_the_cell(trained):
    """With one big cell per place the centroid misses sub-places; the offsets find them."""
    rng = np.random.default_rng(3)
    sub = np.array([[0.0, -0.6], [0.0, 0.6]])  # two spots ~90 km apart in each place
    place = np.repeat(np.arange(4), 16)
    which = np.tile(np.repeat([0, 1], 8), 4)
    gps = WORLD[place] + sub[which] + rng.normal(0, 0.01, (64, 2))
    proto = np.random.default_rng(7).normal(0, 1, (8, D))
    emb = (proto[place * 2 + which] + 0.05 * rng.normal(0, 1, (64, D))).astype(np.float32)
    data = TrainingSet([str(i) for i in range(64)], gps, emb)
    m = _head("hybrid", min_photos=2, max_photos=64, start_level=3)
    m.prepare(data)
    assert m.config.n_cells == 4  # one cell per place: the spots are not split apart
    _train(m, data, epochs=60, gamma=0.98)
    coords, _ = m.gps_candidates(emb, k=1)
    err = haversine_km(coords[:, 0, 0], coords[:, 0, 1], gps[:, 0], gps[:, 1])
    centre = m.cell_centroids()[m.cells().assign(gps[:, 0], gps[:, 1])]
    err_centroid = haversine_km(centre[:, 0], centre[:, 1], gps[:, 0], gps[:, 1])
    assert np.median(err_centroid) > 40 and np.median(err) < 0.5 * np.median(err_centroid)


def test_haversine_label_smoothing_is_the_formula():
    gps = torch.tensor([[0.0, 0.0]])
    cent = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, -3.0]], dtype=torch.float64)
    d = haversine_km(0.0, 0.0, cent[:, 0].numpy(), cent[:, 1].numpy())  # 111, 222, 334 km
    want = np.exp(-(d - d.min()) / 65.0)
    want /= want.sum()
    got = haversine_smoothing(gps, cent, 65.0)[0].numpy()
    assert np.allclose(got, want, rtol=1e-9) and got[0] > got[1] > got[2]
    assert got[0] == pytest.approx(1 / (1 + np.exp(-111.195 / 65) + np.exp(-222.39 / 65)), 1e-4)


def _pigeon_with_prototypes(proto_gps: list[tuple[float, float]]):
    """A fitted pigeon head whose first cell (at Paris) has the given prototypes, each
    with the image's own embedding (cosine 1)."""
    data, _ = _data()
    m = _head("pigeon", prototypes=2)
    m.prepare(data)
    with torch.no_grad():
        m.classifier.weight.zero_()
        m.classifier.bias.zero_()
        m.classifier.bias[0] = 10.0  # cell 0 is the top cell
        m.centroids[0] = torch.tensor([48.85, 2.35], dtype=torch.float64)
        m.proto_count.zero_()
        x = torch.nn.functional.normalize(torch.ones(1, D), dim=-1)
        for j, g in enumerate(proto_gps):
            m.proto_gps[j] = torch.tensor(g, dtype=torch.float64)
            m.proto_emb[j] = x[0]
            m.proto_count[j] = 5
    return m, np.ones((1, D), np.float32)


def test_pigeon_refinement_moves_to_a_prototype_but_never_beyond_1000_km():
    near, far = (48.0, 4.0), (40.4, -3.7)  # ~150 km and ~1050 km from Paris
    m, x = _pigeon_with_prototypes([near])
    top = m.gps_candidates(x, k=1)[0][0, 0]
    assert top == pytest.approx(near)
    m, x = _pigeon_with_prototypes([far])
    top = m.gps_candidates(x, k=1)[0][0, 0]
    assert top == pytest.approx((48.85, 2.35))  # cancelled: the top cell's centroid
    m.config.max_refine_km = 2000.0
    assert m.gps_candidates(x, k=1)[0][0, 0] == pytest.approx(far)


def test_refinement_never_moves_far_on_random_heads():
    data, _ = _data(n_per=16, spread=3.0)
    m = _head("pigeon", prototypes=3, max_photos=16)
    m.prepare(data)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (64, D)).astype(np.float32)
    coords, _ = m.gps_candidates(x, k=5)
    top, _, _ = m.top_cells(x, 5)
    cent = m.cell_centroids()[top]
    moved = haversine_km(coords[..., 0], coords[..., 1], cent[..., 0], cent[..., 1])
    assert moved.max() <= 1000.0
    assert (moved[:, 1:] > 0).any()  # prototypes do move answers


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Generated photos of three places, their labels and a shared feature cache."""
    from geolocus.encoders.image import get_spec

    if get_spec("efficientnet-lite0").locate() is None:
        pytest.skip("efficientnet-lite0 weights not installed")
    root = tmp_path_factory.mktemp("cellphotos")
    img_dir, labels = photo_set(root / "data", per_place=4)
    return img_dir, labels, root / "cache"


@pytest.mark.parametrize(
    "name", ["planet", pytest.param("hybrid", marks=pytest.mark.slow),
             pytest.param("pigeon", marks=pytest.mark.slow)]
)  # fmt: skip
def test_train_then_predict_through_the_cli(photos, tmp_path, capsys, name):
    """``geolocus train`` (resumed once) then ``geolocus predict PHOTO --model FILE``."""
    img_dir, labels, cache = photos
    out = tmp_path / f"{name}.safetensors"
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
[model]
type = "{name}"
backbone = "efficientnet-lite0"
hidden_dim = 32
min_photos = 1
max_photos = 4
[data]
labels = "{labels}"
images = "{img_dir}"
cache = "{cache}"
[train]
epochs = 30
batch_size = 6
lr = 3e-3
[output]
path = "{out}"
""")
    assert main(["train", str(cfg), "-q"]) == 0
    assert main(["train", str(cfg), "-q", "--resume", "--set", "epochs=31"]) == 0
    capsys.readouterr()
    photo = next(p for p in sorted(img_dir.iterdir()) if p.name.startswith("p1_"))  # Tokyo
    assert main(["predict", str(photo), "--model", str(out), "-f", "json", "--top-k", "2"]) == 0
    answer = json.loads(capsys.readouterr().out)[0]
    g = answer["guesses"]
    assert len(g) == 2 and g[0]["confidence"] >= g[1]["confidence"]
    assert haversine_km(g[0]["lat"], g[0]["lon"], *PLACES[1]) < 50
    # impossible values: one line, exit 2, no traceback
    assert main(["train", str(cfg), "-q", "--set", "model.min_photos=9"]) == 2
    err = capsys.readouterr().err
    assert "must not exceed" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_configs_build_their_heads():
    from geolocus.train.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in HEADS:
        cfg = load_config(root / f"{name}.toml")
        m = dict(cfg["model"])
        assert m.pop("type") == name
        create_model(name, **m)
