"""Embedders: photos to the vectors a retrieval database stores and searches.

An embedder pairs an image backbone with what turns its features into a
retrieval vector, and says who it is (``name``, ``version``) so a database
built with one is never searched with another. Three kinds, one interface:

- a backbone name (``efficientnet-lite0``): the backbone's global embedding;
- ``geoclip``: CLIP ViT-L/14 with GeoCLIP's published image head — vectors in
  GeoCLIP's location space, plus GPS candidates from its 100K gallery;
- a model file written by ``geolocus train`` (GeoCLIP, DualGeo, TransGeoCLIP; see
  :func:`geolocus.models.load_model`): the model's retrieval embedding of the
  backbone features it was trained on, plus GPS candidates where the model has
  a location head.

>>> emb = create_embedder("efficientnet-lite0")
>>> vectors = emb.embed([load_image("photo.jpg")])        # (1, 1280) float32

``embed_features`` takes the backbone's outputs instead of photos, so that a
feature cache (:func:`geolocus.encoders.features.extract_features`) and a live
forward pass give the same vectors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

import numpy as np

from geolocus.encoders.features import pool_tokens
from geolocus.encoders.image import DEFAULT_ENCODER, create_encoder, list_encoders
from geolocus.encoders.location.pretrained import IMAGE_HEAD
from geolocus.errors import InputError, ModelUnavailableError
from geolocus.weights import require

if TYPE_CHECKING:
    import torch
    from numpy.typing import NDArray
    from PIL import Image

    from geolocus.encoders.features import TokensMode
    from geolocus.encoders.image.base import ImageEncoder, ImageFeatures

#: A backbone's outputs as given to :meth:`Embedder.embed_features`: a tensor or an array.
ArrayOrTensor = Union["torch.Tensor", "NDArray[Any]"]
#: Photos as :meth:`Embedder.embed` takes them: Pillow images, or a preprocessed pixel tensor.
Photos = Union[Sequence["Image.Image"], "torch.Tensor"]

#: The spec of GeoCLIP's published model (CLIP ViT-L/14 + GeoCLIP's image head and gallery).
GEOCLIP = "geoclip"


@runtime_checkable
class Embedder(Protocol):
    """What the index builder, the benchmark and the geolocator need from a model: every
    attribute and method they use, so that a stand-in (a test's toy backbone, a model
    from elsewhere) can be checked against it.

    Live photos go ``encoder`` → :meth:`backbone_tokens` → :meth:`embed_features`; cached
    features (:mod:`geolocus.encoders.features`, stored as ``tokens`` and
    ``token_grid`` say) skip the first step and give the same vectors.
    """

    #: The spec it was created from (backbone name, ``geoclip`` or a model-file path).
    name: str
    #: Identity of the weights and preprocessing: databases refuse another version.
    version: str
    #: Size of the retrieval vectors.
    dim: int
    #: The image backbone (its ``preprocessing`` turns photos into its input).
    encoder: ImageEncoder
    #: Which backbone tokens ``embed_features`` needs: False, "pooled" or "full".
    tokens: TokensMode
    #: Grid of pooled tokens (when ``tokens == "pooled"``).
    token_grid: int
    #: Whether :meth:`gps_candidates` can answer (a location head).
    has_gps: bool

    def embed(self, images: Photos | ImageFeatures) -> NDArray[np.float32]:
        """``(B, dim)`` retrieval vectors of photos or of the backbone's outputs."""
        ...

    def backbone_tokens(self, feats: ImageFeatures) -> torch.Tensor | None:
        """The backbone's tokens in the form :meth:`embed_features` takes (or None)."""
        ...

    def embed_features(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None
    ) -> NDArray[np.float32]:
        """``(B, dim)`` retrieval vectors of backbone embeddings (and tokens)."""
        ...

    def gps_candidates(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None, k: int = 10
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        """``k`` gallery positions ``(B, k, 2)`` and probabilities ``(B, k)``, or None."""
        ...

    def describe(self) -> dict[str, Any]:
        """What a database manifest records about the model."""
        ...


def digest_of(obj: Any) -> str:
    """A short stable digest of a JSON-able description: an embedder's ``version``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _as_tensor(x: ArrayOrTensor | None) -> torch.Tensor | None:
    import torch

    if x is None:
        return None
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.float()


def as_numpy(x: ArrayOrTensor) -> NDArray[Any]:
    """As an array of the same precision (bfloat16, which numpy lacks, as float32)."""
    import torch

    if not isinstance(x, torch.Tensor):
        return np.asarray(x)
    t = x.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


class BaseEmbedder:
    """Shared behaviour: ``embed`` runs the backbone then :meth:`embed_features`."""

    name: str
    version: str
    dim: int
    encoder: ImageEncoder
    tokens: TokensMode = False
    token_grid: int = 4
    has_gps: bool = False
    #: Whether :meth:`location_queries` and :meth:`location_embeddings` answer.
    has_location_head: bool = False
    kind: str = ""

    def features(self, images: Photos) -> ImageFeatures:
        """The backbone's outputs for Pillow images (or an already built pixel tensor)."""
        import torch

        with torch.no_grad():
            if isinstance(images, torch.Tensor):
                out: ImageFeatures = self.encoder(images)
                return out
            return self.encoder.encode(list(images))

    def backbone_tokens(self, feats: ImageFeatures) -> torch.Tensor | None:
        """The tokens in the form this embedder stores them (pooled or full), or None."""
        if not self.tokens:
            return None
        if self.tokens == "full":
            return feats.tokens
        return pool_tokens(feats.tokens, feats.grid, self.token_grid)

    def embed(self, images: Photos | ImageFeatures) -> NDArray[np.float32]:
        """``(B, dim)`` float32 retrieval vectors of photos (Pillow images) or features."""
        from geolocus.encoders.image.base import ImageFeatures  # torch, as above

        feats = images if isinstance(images, ImageFeatures) else self.features(images)
        return self.embed_features(feats.embedding, self.backbone_tokens(feats))

    def embed_features(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None
    ) -> NDArray[np.float32]:
        raise NotImplementedError

    def gps_candidates(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None, k: int = 10
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        return None

    def gps_distribution(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        """A gallery model's probability of every gallery location (None: no gallery)."""
        return None

    def location_queries(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None
    ) -> NDArray[np.float32] | None:
        """Unit ``(B, D)`` photo vectors in a location head's space (None: no location head);
        with :meth:`location_embeddings`, what G3's geo-verification compares."""
        return None

    def location_embeddings(self, coords: NDArray[Any]) -> NDArray[np.float32] | None:
        """Unit ``(C, D)`` location-head embeddings of ``(C, 2)`` positions (None: no head)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the database manifest records about the model."""
        return {
            "kind": self.kind,
            "spec": self.name,
            "version": self.version,
            "dim": self.dim,
            "backbone": self.encoder.name,
            "backbone_fingerprint": self.encoder.fingerprint(),
            "tokens": self.tokens or None,
            "gps": self.has_gps,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, version={self.version})"


class BackboneEmbedder(BaseEmbedder):
    """The backbone's own global embedding (unnormalised; the database normalises)."""

    kind = "backbone"

    def __init__(self, encoder: ImageEncoder) -> None:
        self.encoder = encoder
        self.name = encoder.name
        self.dim = int(encoder.dim)
        self.version = digest_of(encoder.fingerprint())

    def embed_features(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None
    ) -> NDArray[np.float32]:
        e = np.asarray(as_numpy(embedding), dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise InputError(f"{self.name} embeddings must be (B, {self.dim}), got {e.shape}")
        return e


class ModelEmbedder(BaseEmbedder):
    """A trained model over a backbone (:func:`geolocus.models.load_model`):
    ``model.embed_image(embedding, tokens)`` gives the retrieval vector, and
    ``model.gps_candidates`` the GPS-gallery candidates where it has a location head.
    ``gallery`` replaces the model's default gallery (GeoCLIP's 100K coordinates).
    """

    kind = "model"

    def __init__(
        self,
        model: Any,
        encoder: ImageEncoder,
        name: str,
        identity: str,
        gallery: Any | None = None,
    ) -> None:
        self.model = model.eval()
        self.encoder = encoder
        self.name = name
        self.tokens = "full" if getattr(model, "needs_tokens", False) else False
        self.dim = int(model.retrieval_dim)
        self.has_gps = callable(getattr(model, "gps_candidates", None))
        self.has_location_head = callable(getattr(model, "location_queries", None))
        self.version = digest_of({"model": identity, "backbone": encoder.fingerprint()})
        self.gallery = gallery

    def embed_features(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None
    ) -> NDArray[np.float32]:
        import torch

        with torch.no_grad():
            out = self.model.embed_image(_as_tensor(embedding), _as_tensor(tokens))
        return np.asarray(as_numpy(out), dtype=np.float32)

    def gps_candidates(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None, k: int = 10
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        if not self.has_gps:
            return None
        emb, tok = _as_tensor(embedding), _as_tensor(tokens)
        if self.gallery is not None:
            coords, probs = self.model.search_gallery(emb, tok, self.gallery, k)
        else:  # the model encodes its gallery once (cached on disk) and keeps it
            coords, probs = self.model.gps_candidates(emb, tok, k)
        return np.asarray(as_numpy(coords), float), np.asarray(as_numpy(probs), float)

    def location_queries(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None
    ) -> NDArray[np.float32] | None:
        if not self.has_location_head:
            return None
        q = self.model.location_queries(_as_tensor(embedding), _as_tensor(tokens))
        return np.asarray(q, dtype=np.float32)

    def location_embeddings(self, coords: NDArray[Any]) -> NDArray[np.float32] | None:
        if not self.has_location_head:
            return None
        return np.asarray(self.model.location_embeddings(coords), dtype=np.float32)

    def gps_distribution(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        """Every gallery location ``(N, 2)`` and each photo's probability of it ``(B, N)``
        (the heatmap of an answer; its top k are :meth:`gps_candidates`), or None."""
        if not self.has_gps:
            return None
        emb, tok = _as_tensor(embedding), _as_tensor(tokens)
        own = getattr(self.model, "gps_distribution", None)
        if callable(own) and self.gallery is None:  # cells, samples: the model's own places
            coords, probs = own(emb, tok)
            return np.asarray(as_numpy(coords), float), np.asarray(as_numpy(probs), float)
        if not callable(getattr(self.model, "gallery_probabilities", None)):
            return None
        gallery, probs = self.model.gallery_probabilities(emb, tok, self.gallery)
        return np.asarray(gallery.coords, float), np.asarray(probs, float)


@functools.lru_cache(maxsize=4)
def _pretrained_backbone(name: str) -> ImageEncoder:
    """Pretrained backbones are loaded once per process (inference only: safe to share)."""
    return create_encoder(name, pretrained=True)


def create_embedder(
    spec: str | os.PathLike[str] | None = None,
    *,
    pretrained: bool = True,
    **encoder_options: Any,
) -> BaseEmbedder:
    """An embedder from a backbone name, ``"geoclip"``, or a model file path (any file
    of :func:`geolocus.models.load_model`; its backbone is recorded in it).

    ``pretrained=False`` builds the backbone with random weights (tests, timing).
    """
    spec = DEFAULT_ENCODER if spec is None else spec
    s = str(spec)
    if s in list_encoders():
        if pretrained and not encoder_options:
            return BackboneEmbedder(_pretrained_backbone(s))
        return BackboneEmbedder(create_encoder(s, pretrained=pretrained, **encoder_options))
    if s == GEOCLIP:
        from geolocus.models.geoclip import GeoCLIP  # torch: loaded when a model is made

        model = GeoCLIP.pretrained_clip()
        enc = create_encoder(model.backbone, pretrained=pretrained, **encoder_options)
        ident = "geoclip-pretrained:" + hashlib.sha256(require(IMAGE_HEAD).read_bytes()).hexdigest()
        return ModelEmbedder(model, enc, GEOCLIP, ident[:40])
    p = Path(s).expanduser()
    if p.is_file():
        from geolocus.encoders.image.base import file_identity  # torch, as above
        from geolocus.models import load_model

        trained = load_model(p)
        enc = create_encoder(trained.backbone, pretrained=pretrained, **encoder_options)
        return ModelEmbedder(trained, enc, str(p.resolve()), file_identity(p))
    if p.suffix or os.sep in s or "/" in s:
        raise InputError(f"model file not found: {s}")
    raise ModelUnavailableError(
        f"unknown model {s!r}: give a backbone ({', '.join(list_encoders())}), "
        f"'{GEOCLIP}', or the path of a trained model file"
    )


__all__ = [
    "GEOCLIP",
    "BackboneEmbedder",
    "BaseEmbedder",
    "Embedder",
    "ModelEmbedder",
    "create_embedder",
]
