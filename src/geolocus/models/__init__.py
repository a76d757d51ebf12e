"""Trainable geo-localization models over frozen backbone features: GeoCLIP, DualGeo,
TransGeoCLIP and the cell classifiers PlaNet, OSV-5M's hybrid and PIGEON, all saved in
one file format (:mod:`geolocus.modelfile`).

>>> model = load_model("runs/dualgeo.safetensors")      # any geolocus model file, eval mode
>>> model.backbone                                     # e.g. "efficientnet-lite0"
>>> vec = model.embed_image(feats.embedding, feats.tokens)   # (B, model.retrieval_dim)
>>> coords, probs = model.gps_candidates(feats.embedding, feats.tokens, k=5)

``create_model(type, **config)`` builds an untrained one; ``list_models()`` names
the types. Importing this package does not import torch; the classes load on first use.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from geolocus.errors import InputError
from geolocus.registry import Registry

if TYPE_CHECKING:
    from geolocus.models.base import GeoModel

#: Model type (as stored in files) -> its class, imported on first use.
MODELS: Registry[GeoModel] = Registry("model type")
MODELS.register("geoclip", "geolocus.models.geoclip:GeoCLIP")
MODELS.register("dualgeo", "geolocus.models.dualgeo:DualGeo")
MODELS.register("transgeoclip", "geolocus.models.transgeoclip:TransGeoCLIP")
MODELS.register("planet", "geolocus.models.planet:PlaNet")
MODELS.register("hybrid", "geolocus.models.planet:Hybrid")
MODELS.register("pigeon", "geolocus.models.pigeon:Pigeon")
MODELS.register("plonk", "geolocus.models.plonk:Plonk")


def list_models() -> list[str]:
    """The model types :func:`create_model` and :func:`load_model` know."""
    return MODELS.names()


def model_class(model_type: str) -> type[GeoModel]:
    """The class of a model type (imported now)."""
    return MODELS.get(model_type)  # type: ignore[return-value]


def create_model(model_type: str, **config: Any) -> GeoModel:
    """A new (untrained) model of ``model_type`` from its config fields."""
    return model_class(model_type).from_config(config)


def load_model(path: str | os.PathLike[str], map_location: str = "cpu") -> GeoModel:
    """Open any geolocus model file (or training checkpoint), in eval mode.

    The model has ``backbone``, ``retrieval_dim``, ``embed_image(embedding,
    tokens)`` and, for models with a location head, ``gps_candidates(embedding,
    tokens, k)``. Raises :class:`~geolocus.errors.InputError` for a file that is
    not a geolocus model.
    """
    from geolocus.modelfile import META_CONFIG, META_MODEL, read_model_file

    meta, state = read_model_file(path, map_location)
    cls = model_class(meta[META_MODEL])
    try:
        model = cls.from_config(json.loads(meta[META_CONFIG]))
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    model.restore_state(state, str(path))
    return model.to(map_location).eval()


__all__ = ["MODELS", "create_model", "list_models", "load_model", "model_class"]
