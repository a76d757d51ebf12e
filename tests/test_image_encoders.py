"""Image backbones: one interface, offline weights, hub models from configs, `geolocus models`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from geolocus.cli.main import main
from geolocus.encoders.image import (
    DEFAULT_ENCODER,
    create_encoder,
    get_spec,
    list_encoders,
)
from geolocus.encoders.image.base import TF_LITE_MEAN, TF_LITE_STD, Preprocessing
from geolocus.errors import ModelUnavailableError

torch.set_num_threads(2)


def _photos(n: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a = rng.integers(0, 255, (180 + 20 * i, 260, 3), dtype=np.uint8)
        a[:, :100] = (30 * i, 120, 200)  # some structure, different per photo
        out.append(Image.fromarray(a))
    return out


def _need(name: str) -> None:
    if get_spec(name).locate() is None:
        pytest.skip(f"weights of {name} not installed")


def test_registry_lists_offline_and_hub() -> None:
    names = list_encoders()
    for n in ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "vit-s14-focus"]:
        assert n in list_encoders(offline=True)
    for n in ["clip-vit-l14", "streetclip", "dinov2-small", "dinov2-base", "dinov2-large"]:
        assert n in names and n not in list_encoders(offline=True)
    assert DEFAULT_ENCODER in list_encoders(offline=True)
    with pytest.raises(ModelUnavailableError, match="unknown image encoder"):
        create_encoder("resnet-9000")


def test_preprocessing_crops_centre_and_normalises() -> None:
    prep = Preprocessing(size=32, resize=40, mean=TF_LITE_MEAN, std=TF_LITE_STD)
    grey = Image.new("RGB", (120, 60), (127, 127, 127))
    x = prep([grey, Image.new("L", (50, 90), 255)])
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.zeros(1), atol=1e-6)  # (127 - 127) / 128
    assert torch.allclose(x[1], torch.full((1,), 128 / 128), atol=1e-6)
    # a wide photo: left third red, right third blue; the centre crop keeps the middle
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, :100] = (255, 0, 0)
    a[:, 200:] = (0, 0, 255)
    a[:, 100:200] = (0, 255, 0)
    y = Preprocessing(size=32, resize=32, mean=(0, 0, 0), std=(1, 1, 1))([Image.fromarray(a)])
    assert y[0, 1].mean() > 0.95 and y[0, 0].mean() < 0.05


@pytest.mark.slow
def test_efficientnet_lite0_interface_and_fused_equals_reference() -> None:
    _need("efficientnet-lite0")
    from efficientnet_lite_pytorch import EfficientNet

    enc = create_encoder("efficientnet-lite0")
    assert (enc.dim, enc.token_dim, enc.image_size) == (1280, 1280, 224)
    x = enc.preprocess(_photos())
    assert x.shape == (2, 3, 224, 224)
    f = enc.encode(_photos())
    assert f.embedding.shape == (2, 1280) and f.tokens.shape == (2, 49, 1280) and f.grid == (7, 7)
    assert torch.allclose(f.embedding, f.tokens.mean(1), atol=1e-5)
    # the fused inference network computes what the reference network does
    ref = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(get_spec("efficientnet-lite0").locate(), weights_only=True)
    ref.load_state_dict(state)
    ref.eval()
    with torch.no_grad():
        fmap = ref.extract_features(x)
    assert torch.allclose(f.tokens, fmap.flatten(2).transpose(1, 2), atol=1e-3)
    assert f.embedding.std(0).mean() > 0  # different photos, different embeddings
    assert enc.weights_id.startswith("sha256:") and not enc.training


def test_efficientnet_gem_and_random_weights() -> None:
    enc = create_encoder("efficientnet-lite0", pretrained=False, gem_p=3.0)
    f = enc.encode(_photos(1))
    g = f.tokens.clamp_min(1e-6).pow(3).mean(1).pow(1 / 3)
    assert torch.allclose(f.embedding, g, rtol=1e-4, atol=1e-5)
    assert enc.fingerprint()["pooling"] == "gem3"
    assert enc.weights_id.startswith("random-")
    other = create_encoder("efficientnet-lite0", pretrained=False)
    assert other.weights_id != enc.weights_id  # random weights are never a cache hit


def test_efficientnet_multilayer_pooling() -> None:
    enc = create_encoder("efficientnet-lite0", pretrained=False, stages=(6, 7))
    assert enc.dim == 1280 + 192 + 320 and enc.fingerprint()["pooling"] == "avg+stages6,7"
    f = enc.encode(_photos(2))
    parts = torch.split(f.embedding, [1280, 192, 320], dim=1)
    for p in parts:  # each part L2-normalised, so each weighs the same in a cosine
        assert torch.allclose(p.norm(dim=1), torch.ones(2), atol=1e-4)
    assert torch.allclose(parts[0], torch.nn.functional.normalize(f.tokens.mean(1)), atol=1e-5)
    with pytest.raises(ValueError, match="stages"):
        create_encoder("efficientnet-lite0", pretrained=False, stages=(8,))


def test_efficientnet_bad_weights_file(tmp_path) -> None:
    p = tmp_path / "w.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1)}, p)
    with pytest.raises(ModelUnavailableError, match="does not fit"):
        create_encoder("efficientnet-lite0", weights=p)
    with pytest.raises(ModelUnavailableError, match="not found"):
        create_encoder("efficientnet-lite0", weights=tmp_path / "none.pth")


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "size", "grid"), [("lite1", 240, 8), ("lite2", 260, 9)])
def test_efficientnet_variant_sizes(variant: str, size: int, grid: int) -> None:
    enc = create_encoder(f"efficientnet-{variant}", pretrained=False)
    f = enc.encode(_photos(1))
    assert enc.image_size == size and f.grid == (grid, grid) and f.tokens.shape[1] == grid * grid


@pytest.mark.slow
def test_vit_s14_focus_onnx() -> None:
    _need("vit-s14-focus")
    pytest.importorskip("onnx")
    enc = create_encoder("vit-s14-focus", pooling="cls+mean")
    f = enc.encode(_photos())
    assert (enc.dim, enc.token_dim) == (768, 384)
    assert f.embedding.shape == (2, 768) and f.tokens.shape == (2, 256, 384) and f.grid == (16, 16)
    assert torch.allclose(f.embedding[:, 384:], f.tokens.mean(1), atol=1e-5)
    assert torch.isfinite(f.tokens).all() and f.embedding.std(0).mean() > 0
    with pytest.raises(ModelUnavailableError, match="no random-weight form"):
        create_encoder("vit-s14-focus", pretrained=False)


_TINY_CLIP = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    projection_dim=16, image_size=56,
)  # fmt: skip
_TINY_DINO = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)


@pytest.mark.slow  # the first use of transformers' CLIP takes seconds to import
@pytest.mark.parametrize(
    ("name", "cfg", "dim", "grid"),
    [
        ("clip-vit-l14", _TINY_CLIP, 16, 4),
        ("streetclip", {**_TINY_CLIP, "image_size": 84}, 16, 6),
        ("dinov2-small", _TINY_DINO, 32, 16),
        ("dinov2-large", _TINY_DINO, 32, 16),
    ],
)
def test_hub_backbones_from_config(name: str, cfg: dict, dim: int, grid: int) -> None:
    pytest.importorskip("transformers")
    enc = create_encoder(name, pretrained=False, **cfg)
    f = enc.encode(_photos())
    assert enc.dim == dim and f.embedding.shape == (2, dim)
    assert f.tokens.shape == (2, grid * grid, 32) and f.grid == (grid, grid)
    assert enc.weights_id.startswith("random-")


def test_hub_configs_match_published_architectures() -> None:
    pytest.importorskip("transformers")
    from geolocus.encoders.image.hub import CONFIGS

    family, clip = CONFIGS["clip-vit-l14"]
    assert family == "clip"
    assert (clip["hidden_size"], clip["num_hidden_layers"], clip["projection_dim"]) == (
        1024,
        24,
        768,
    )
    assert CONFIGS["streetclip"][1]["image_size"] == 336
    assert [CONFIGS[f"dinov2-{s}"][1]["hidden_size"] for s in ("small", "base", "large")] == [
        384,
        768,
        1024,
    ]


def test_hub_offline_without_weights_says_how(tmp_path, monkeypatch) -> None:
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("GEOLOCUS_WEIGHTS_DIR", str(tmp_path / "w"))
    with pytest.raises(ModelUnavailableError, match=r"GEOLOCUS_WEIGHTS_DIR/clip-vit-l14") as e:
        create_encoder("clip-vit-l14")
    assert "\n" not in str(e.value)
    # the hint names only what exists: the variable the locator reads, a real command
    from geolocus.cli.main import app
    from geolocus.weights import WEIGHTS_DIR_ENV

    assert "--weights" not in str(e.value) and f"export {WEIGHTS_DIR_ENV}=" in str(e.value)
    names = {c.name for c in app.registered_commands}
    assert "'geolocus models'" in str(e.value) and "models" in names


def test_hub_loads_from_weights_dir(tmp_path, monkeypatch) -> None:
    pytest.importorskip("transformers")
    src = create_encoder("dinov2-small", pretrained=False, **_TINY_DINO)
    src.model.save_pretrained(tmp_path / "dinov2-small")
    monkeypatch.setenv("GEOLOCUS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = create_encoder("dinov2-small")
    x = enc.preprocess(_photos())
    with torch.no_grad():
        assert torch.allclose(enc(x).embedding, src(x).embedding, atol=1e-5)
    assert enc.weights_id.startswith("dir-sha256:")
    also = create_encoder("dinov2-small", weights=tmp_path / "dinov2-small")
    assert also.weights_id == enc.weights_id
    with pytest.raises(ModelUnavailableError, match=r"no config\.json"):
        create_encoder("dinov2-small", weights=tmp_path)


def test_models_command(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for n in ["efficientnet-lite0", "vit-s14-focus", "clip-vit-l14", "dinov2-large"]:
        assert n in out
    assert "present on this machine" in out
    assert "trainable models" in out and "dualgeo, transgeoclip" in out
    assert main(["models", "--kind", "image-encoder", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["kind"] for r in rows} == {"image-encoder"}
    hub = next(r for r in rows if r["name"] == "streetclip")
    assert hub["source"] == "hub:geolocal/StreetCLIP" and hub["license"]
    assert main(["models", "--kind", "nonsense"]) == 2
