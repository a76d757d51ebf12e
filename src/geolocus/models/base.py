"""What every trainable geolocus model shares: config, the retrieval contract, saving.

A model consumes frozen backbone features — the global ``embedding`` ``(B, D)``
and, if it needs them, the patch ``tokens`` ``(B, N, C)`` — so an epoch on a CPU
costs only the heads. Every model exposes

- ``backbone``: the image-encoder name whose features it takes;
- ``retrieval_dim`` and ``embed_image(embedding, tokens)``: the vector stored in
  (and searched against) the retrieval database, L2-normalised;
- ``loss(batch) -> {"loss": ..., ...}`` for :func:`geolocus.train.fit`;
- ``gps_candidates(embedding, tokens, k)`` where it has a location head.

``save(path)`` writes the common format of :mod:`geolocus.modelfile`;
frozen parts rebuilt from a wheel (GeoCLIP's pretrained location encoder)
are left out of the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geolocus.errors import InputError
from geolocus.modelfile import model_type_of, write_model_file
from geolocus.models import load_model
from geolocus.models.gallery import GPSGallery

#: Ways to build the retrieval vector: the model's head alone, the backbone's raw
#: embedding alone, or both (each L2-normalised, concatenated, scaled by 1/√2).
RETRIEVAL_MODES = ("head", "head+raw", "raw")


@dataclass
class ModelConfig:
    """Base of the model configs: JSON round trip, unknown fields refused."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(
                f"unknown {cls.__name__} field(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**dict(d))

    def to_dict(self) -> dict:
        return asdict(self)


def retrieval_vector(head: torch.Tensor, raw: torch.Tensor, mode: str) -> torch.Tensor:
    """The retrieval-database vector of ``mode`` (see :data:`RETRIEVAL_MODES`), unit length.

    With ``head+raw`` each part is L2-normalised before concatenating, so the
    cosine similarity of two vectors is the mean of the two parts' cosines:
    neither part dominates because of its scale or dimension.
    """
    if mode == "head":
        return F.normalize(head, dim=-1)
    if mode == "raw":
        return F.normalize(raw.to(head.dtype), dim=-1)
    if mode == "head+raw":
        both = torch.cat([F.normalize(head, dim=-1), F.normalize(raw.to(head.dtype), dim=-1)], -1)
        return both * (0.5**0.5)
    raise InputError(f"retrieval must be one of {', '.join(RETRIEVAL_MODES)}, got {mode!r}")


def retrieval_dim(mode: str, head_dim: int, raw_dim: int) -> int:
    return {"head": head_dim, "raw": raw_dim, "head+raw": head_dim + raw_dim}[mode]


class GeoModel(nn.Module):
    """Base class of the trainable models (see the module docstring)."""

    #: Registry name, stored in files as ``geolocus.model``.
    model_type: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    #: Whether :meth:`embed_image` needs the backbone's patch tokens.
    needs_tokens: ClassVar[bool] = False
    #: Whether training batches need ``text_emb`` (TransGeoCLIP's text view).
    needs_text: ClassVar[bool] = False
    #: Config fields :meth:`prepare` sets from the data (e.g. a number of cells): a resumed
    #: run takes them from its checkpoint before building the model.
    fitted_fields: ClassVar[tuple[str, ...]] = ()
    config: Any

    # -- the retrieval contract -----------------------------------------------------------------

    @property
    def backbone(self) -> str:
        return str(self.config.backbone)

    @property
    def retrieval_dim(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_image(
        self, embedding: torch.Tensor, tokens: torch.Tensor | None = None
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def prepare(self, data: Any) -> None:
        """Fit whatever is fitted, not trained, before training (DualGeo: its codebook)."""

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.parameters())
        return p.device, p.dtype

    def _as_input(self, x: Any) -> torch.Tensor:
        dev, dt = self._device_dtype()
        t = x if torch.is_tensor(x) else torch.from_numpy(np.array(x, dtype=np.float32))
        return t.to(dev, dt)

    # -- a location head over a GPS gallery (optional) ------------------------------------------

    def gallery(self, coords: Any | None = None, **kwargs: Any):
        """A GPS gallery encoded with this model's location encoder (GeoCLIP's 100K default)."""
        enc = getattr(self, "location_encoder", None)
        if enc is None:
            raise InputError(f"{self.model_type} has no location encoder")
        if coords is None:
            return GPSGallery.geoclip(enc, **kwargs)
        return GPSGallery.build(enc, coords, **kwargs)

    # -- saving ---------------------------------------------------------------------------------

    def config_dict(self) -> dict:
        return self.config.to_dict()

    def rebuilt_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes left out of files because they are rebuilt on load."""
        return ()

    def saved_state(self) -> dict[str, torch.Tensor]:
        """The tensors a model file holds (the state dict minus rebuilt parts)."""
        skip = self.rebuilt_prefixes()
        return {
            k: v.detach() for k, v in self.state_dict().items() if not k.startswith(skip or ("\0",))
        }

    def restore_state(self, state: Mapping[str, torch.Tensor], source: str = "state") -> None:
        """Load :meth:`saved_state` output; anything else missing or extra is an error."""
        try:
            missing, unexpected = self.load_state_dict(dict(state), strict=False)
        except RuntimeError as e:  # shapes differ
            raise InputError(
                f"{source} does not fit its {self.model_type} config: {str(e).splitlines()[-1]}"
            ) from None
        skip = self.rebuilt_prefixes()
        missing = [k for k in missing if not (skip and k.startswith(skip))]
        if missing or unexpected:
            raise InputError(
                f"{source} does not fit its {self.model_type} config: "
                f"missing {missing[:5]}, extra {list(unexpected)[:5]}"
            )

    def save(self, path: str | os.PathLike[str], extra_meta: dict[str, str] | None = None) -> None:
        """Write the model in the common format (config in the metadata; ``extra_meta``:
        more string entries, e.g. ``geolocus.train`` with the training settings)."""
        write_model_file(path, self.saved_state(), self.model_type, self.config_dict(), extra_meta)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ModelConfig) -> GeoModel:
        cfg = config if isinstance(config, ModelConfig) else cls.config_class.from_dict(config)
        return cls(cfg)

    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: str = "cpu") -> GeoModel:
        """Rebuild a model of this type written by :meth:`save` (or a checkpoint), in eval
        mode (see :func:`geolocus.models.load_model`)."""
        found = model_type_of(path)
        if found != cls.model_type:
            raise InputError(f"{path} holds a {found!r} model, not {cls.model_type!r}")
        return load_model(path, map_location)
