"""The semantic view: segment photos into classes that mean the same in every photo.

- :class:`PseudoSegmenter` (offline default): a fixed k-means codebook over a
  backbone's L2-normalised patch tokens (:class:`TokenCodebook`), fitted on
  training photos; each patch gets its nearest codebook entry.
- :class:`SegFormerSegmenter`: a hub scene parser (SegFormer-B0 on ADE20K,
  150 classes) for users with the weights.

``create_segmenter(name, ...)`` builds one by name. Importing this package
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

import geolocus.segment.catalog  # noqa: F401  (registers the SegFormer weights)
from geolocus.registry import Registry
from geolocus.segment.catalog import SEGFORMER_ADE

_LAZY = {
    "Segmenter": "geolocus.segment.base",
    "TokenCodebook": "geolocus.segment.codebook",
    "PseudoSegmenter": "geolocus.segment.codebook",
    "SegFormerSegmenter": "geolocus.segment.segformer",
    "colorize": "geolocus.segment.viz",
    "overlay": "geolocus.segment.viz",
    "palette": "geolocus.segment.viz",
}

#: Segmenters by name, each built by its class's ``create`` (imported on first use).
SEGMENTERS: Registry[Any] = Registry("segmenter")
SEGMENTERS.register("codebook", "geolocus.segment.codebook:PseudoSegmenter.create")
SEGMENTERS.register(SEGFORMER_ADE, "geolocus.segment.segformer:SegFormerSegmenter.create")

__all__ = [*_LAZY, "SEGMENTERS", "create_segmenter", "list_segmenters"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_segmenters() -> list[str]:
    return SEGMENTERS.names()


def create_segmenter(name: str = "codebook", **kwargs: Any):
    """A segmenter by name.

    ``codebook``: ``codebook=`` a :class:`TokenCodebook` or the path of a file
    holding one (a codebook file or a DualGeo model), ``encoder=`` an image
    encoder or its name (default: the backbone the codebook was fitted on).
    ``segformer-b0-ade``: ``weights=`` a local model folder, ``pretrained=False``
    for random weights (tests), other keywords go to its config.
    """
    return SEGMENTERS.create(name, **kwargs)
