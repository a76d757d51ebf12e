"""GeoCLIP (Vivanco Cepeda et al., NeurIPS 2023) as a model over precomputed image embeddings.

An image head maps a backbone embedding into the 512-d space of the
pretrained GeoCLIP location encoder; training is InfoNCE between images and
their GPS, with a queue of recent GPS as extra negatives and a little
Gaussian noise on the training GPS; prediction retrieves from a
:class:`~geolocus.models.gallery.GPSGallery`.

GeoCLIP's own image head (MLP 768→768→512) expects CLIP ViT-L/14's projected
768-d feature; with any other backbone (offline: EfficientNet-Lite, 1280-d, …)
a new head of the same shape is trained into the pretrained location space.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geolocus.encoders.location import create_location_encoder
from geolocus.encoders.location.pretrained import IMAGE_HEAD, LOGIT_SCALE
from geolocus.errors import InputError
from geolocus.models.base import GeoModel, ModelConfig, retrieval_dim, retrieval_vector
from geolocus.models.gallery import GPSGallery, encode_locations, fingerprint
from geolocus.models.losses import (
    INIT_LOGIT_SCALE,
    KM_PER_DEGREE,  # noqa: F401  (re-exported)
    GPSQueue,
    in_batch_accuracy,
    info_nce,
    jitter_gps,
    logit_scale_param,
    scale_of,
)
from geolocus.nn import eval_mode
from geolocus.weights import require

__all__ = ["CLIP_VITL14_DIM", "GeoCLIP", "GeoCLIPConfig", "ImageHead", "jitter_gps"]

#: CLIP ViT-L/14's projected embedding size, the input of GeoCLIP's pretrained head.
CLIP_VITL14_DIM = 768
#: The backbone GeoCLIP's published head was trained on.
CLIP_BACKBONE = "clip-vit-l14"


@dataclass
class GeoCLIPConfig(ModelConfig):
    """Everything needed to rebuild a :class:`GeoCLIP` (stored with its weights)."""

    backbone: str = CLIP_BACKBONE  # image encoder whose embeddings the head takes
    embed_dim: int = CLIP_VITL14_DIM  # size of the backbone embedding the head takes
    hidden_dim: int | None = None  # head's hidden size (GeoCLIP: = embed_dim)
    dim: int = 512  # the location space
    dropout: float = 0.0  # on the head's hidden layer (GeoCLIP: none)
    location_encoder: str = "geoclip"
    pretrained_location: bool = True  # GeoCLIP's weights from the geoclip wheel
    location_options: dict = field(default_factory=dict)  # kwargs of a non-pretrained encoder
    train_location_encoder: bool = False
    queue_size: int = 4096  # GeoCLIP's dynamic queue of GPS negatives
    gps_noise_km: float = 0.15  # σ of the Gaussian noise on training GPS (our default)
    init_logit_scale: float = INIT_LOGIT_SCALE
    retrieval: str = "head"  # retrieval vector: head | head+raw | raw


class ImageHead(nn.Module):
    """GeoCLIP's image MLP: Linear, ReLU, Linear (``embed_dim → hidden → dim``)."""

    def __init__(self, embed_dim: int, hidden_dim: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


#: GeoCLIP's ``image_encoder_mlp_weights.pth`` keys (a Sequential) -> ours.
IMAGE_HEAD_KEY_MAP = {
    "0.weight": "fc1.weight",
    "0.bias": "fc1.bias",
    "2.weight": "fc2.weight",
    "2.bias": "fc2.bias",
}


def build_location_encoder(
    name: str, pretrained: bool, options: Mapping[str, Any], dim: int
) -> nn.Module:
    """The location encoder of a model config (shared by GeoCLIP, DualGeo, TransGeoCLIP)."""

    if pretrained:
        if name != "geoclip" or options or dim != 512:
            raise InputError(
                "only the geoclip location encoder has pretrained weights (512-d, no options)"
            )
        return create_location_encoder("geoclip", pretrained=True)
    return create_location_encoder(name, pretrained=False, **{"dim": dim, **dict(options)})


class LocationHead(GeoModel):
    """A location encoder (frozen or trained), its GPS queue, and GPS-gallery prediction.

    Shared by the three models: subclasses set ``self.config`` (with the
    location fields of :class:`GeoCLIPConfig`) and call :meth:`_init_location`.
    """

    queue: GPSQueue
    logit_scale: torch.Tensor

    def _init_location(self) -> None:
        cfg = self.config
        self.location_encoder = build_location_encoder(
            cfg.location_encoder, cfg.pretrained_location, cfg.location_options, cfg.dim
        )
        self.location_encoder.requires_grad_(cfg.train_location_encoder)
        if not cfg.train_location_encoder:
            self.location_encoder.eval()
        frozen_dim = None if cfg.train_location_encoder else cfg.dim
        self.queue = GPSQueue(cfg.queue_size, frozen_dim)
        self._loc_fp: tuple[tuple, str] | None = None
        self._gallery: GPSGallery | None = None

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.config.train_location_encoder:
            self.location_encoder.eval()  # frozen: no dropout, no batch statistics
        return self

    def rebuilt_prefixes(self) -> tuple[str, ...]:
        cfg = self.config
        frozen_pretrained = cfg.pretrained_location and not cfg.train_location_encoder
        return ("location_encoder.",) if frozen_pretrained else ()

    def encode_location(self, gps: torch.Tensor) -> torch.Tensor:
        """``(M, 2)`` (lat, lon) -> ``(M, dim)``; without a graph when the encoder is frozen."""
        if self.config.train_location_encoder:
            return self.location_encoder(gps)
        with torch.no_grad():
            return self.location_encoder(gps)

    def location_keys(self, gps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit embeddings of the (jittered, in training) batch GPS followed by the queue's,
        and the batch's alone."""
        gps = gps.to(self.queue.coords.dtype)
        pos = jitter_gps(gps, self.config.gps_noise_km) if self.training else gps
        return self.queue.keys(self.encode_location, pos)

    def enqueue(self, gps: torch.Tensor, emb: torch.Tensor | None = None) -> None:
        """Push a batch's GPS (and, for a frozen encoder, their embeddings) into the queue."""
        if self.queue.stores_embeddings and emb is None:
            emb = self.encode_location(gps.to(self.queue.coords.dtype))
        self.queue.push(gps, emb)

    def queued_gps(self) -> torch.Tensor:
        """The GPS negatives currently in the queue, ``(L, 2)`` with L ≤ queue_size."""
        return self.queue.queued_coords()

    def location_fingerprint(self) -> str:
        """Hash of the location encoder's weights (recomputed only after they change)."""
        enc = self.location_encoder
        key = tuple(t._version for t in (*enc.parameters(), *enc.buffers()))
        key = (*key, *(t.data_ptr() for t in enc.parameters()))
        if self._loc_fp is None or self._loc_fp[0] != key:
            self._loc_fp = (key, fingerprint(enc))
        return self._loc_fp[1]

    def location_query(
        self, embedding: torch.Tensor, tokens: torch.Tensor | None
    ) -> torch.Tensor:  # pragma: no cover - abstract
        """The image vector compared with location embeddings, ``(B, dim)``."""
        raise NotImplementedError

    @torch.no_grad()
    def gallery_probabilities(
        self, embedding: Any, tokens: Any | None, gallery: GPSGallery | None = None
    ) -> tuple[GPSGallery, np.ndarray]:
        """The gallery (default: GeoCLIP's 100K, encoded once with this model's location
        encoder and cached on disk) and each image's probability of every one of its
        locations, ``(B, N)``: softmax of the logit scale times the cosine similarity."""
        if gallery is None:
            fp = self.location_fingerprint()
            if self._gallery is None or self._gallery.encoder_fingerprint != fp:
                self._gallery = self.gallery()
            gallery = self._gallery
        used = gallery.encoder_fingerprint
        if used is not None and used != self.location_fingerprint():
            raise InputError(
                "the gallery was encoded with another location encoder; "
                "rebuild it with model.gallery(coords)"
            )
        if gallery.dim != self.config.dim:
            raise InputError(f"gallery is {gallery.dim}-d, the model {self.config.dim}-d")
        with eval_mode(self):
            tok = None if tokens is None else self._as_input(tokens)
            q = self.location_query(self._as_input(embedding), tok)
        return gallery, gallery.probabilities(q, logit_scale=float(scale_of(self.logit_scale)))

    @torch.no_grad()
    def location_queries(self, embedding: Any, tokens: Any | None = None) -> np.ndarray:
        """Unit ``(B, dim)`` image vectors in the location space: what G3's geo-verification
        compares with each candidate's :meth:`location_embeddings` (cosine similarity)."""
        with eval_mode(self):
            tok = None if tokens is None else self._as_input(tokens)
            q = self.location_query(self._as_input(embedding), tok)
        return F.normalize(q.float(), dim=-1).cpu().numpy()

    def location_embeddings(self, coords: Any) -> np.ndarray:
        """Unit ``(C, dim)`` embeddings of ``(C, 2)`` (lat, lon) under this model's location
        encoder, as the gallery is encoded (:func:`~geolocus.models.gallery.encode_locations`)."""
        c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        if len(c) == 0:
            return np.zeros((0, self.config.dim), dtype=np.float32)
        return encode_locations(self.location_encoder, c, progress=False)

    def search_gallery(
        self,
        embedding: Any,
        tokens: Any | None,
        gallery: GPSGallery,
        k: int = 5,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k gallery locations per image: ``coords (B, k, 2)``, ``probs (B, k)``."""
        gallery, probs = self.gallery_probabilities(embedding, tokens, gallery)
        return gallery.top(probs, k)

    def gps_candidates(
        self, embedding: Any, tokens: Any | None = None, k: int = 5
    ) -> tuple[np.ndarray, np.ndarray]:
        """GeoCLIP-style prediction over GeoCLIP's 100K GPS gallery, encoded once with this
        model's location encoder (cached on disk): ``coords (B, k, 2)``, ``probs (B, k)``."""
        gallery, probs = self.gallery_probabilities(embedding, tokens)
        return gallery.top(probs, k)


class ImageViewModel(LocationHead):
    """A model whose image side is one head over the backbone's global embedding
    (GeoCLIP, TransGeoCLIP): that head queries the location space and, with the raw
    embedding per ``config.retrieval``, gives the retrieval vector. Subclasses build
    ``image_head`` and ``logit_scale``."""

    image_head: nn.Module

    def encode_image(self, embedding: torch.Tensor) -> torch.Tensor:
        """Backbone embeddings ``(B, embed_dim)`` -> ``(B, dim)`` (not normalised)."""
        if embedding.ndim != 2 or embedding.shape[1] != self.config.embed_dim:
            raise InputError(
                f"image embeddings must be (B, {self.config.embed_dim}), got "
                f"{tuple(embedding.shape)}"
            )
        return self.image_head(embedding.to(self.logit_scale.dtype))

    def location_query(self, embedding: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        return self.encode_image(embedding)

    @property
    def retrieval_dim(self) -> int:
        return retrieval_dim(self.config.retrieval, self.config.dim, self.config.embed_dim)

    @torch.no_grad()
    def embed_image(self, embedding: Any, tokens: Any | None = None) -> torch.Tensor:
        """The retrieval vector ``(B, retrieval_dim)``, unit length (tokens are not used)."""
        with eval_mode(self):
            x = self._as_input(embedding)
            return retrieval_vector(self.encode_image(x), x, self.config.retrieval)


class GeoCLIP(ImageViewModel):
    """Image head + location encoder + logit scale, trained with InfoNCE and a GPS queue."""

    model_type = "geoclip"
    config_class = GeoCLIPConfig

    def __init__(self, config: GeoCLIPConfig | None = None) -> None:
        super().__init__()
        cfg = config or GeoCLIPConfig()
        self.config = cfg
        hidden = cfg.hidden_dim or cfg.embed_dim
        self.image_head = ImageHead(cfg.embed_dim, hidden, cfg.dim, cfg.dropout)
        self.logit_scale = logit_scale_param(cfg.init_logit_scale)
        self._init_location()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def pretrained_clip(cls, **overrides: Any) -> GeoCLIP:
        """GeoCLIP's published head and logit scale (for CLIP ViT-L/14 embeddings, 768-d)."""

        cfg = GeoCLIPConfig(**overrides)
        if cfg.embed_dim != CLIP_VITL14_DIM or (cfg.hidden_dim or cfg.embed_dim) != 768:
            raise InputError("GeoCLIP's pretrained image head takes 768-d CLIP ViT-L/14 features")
        model = cls(cfg)
        head = torch.load(require(IMAGE_HEAD), map_location="cpu", weights_only=True)
        if set(head) != set(IMAGE_HEAD_KEY_MAP):
            raise InputError(f"unexpected GeoCLIP image-head keys: {sorted(head)}")
        model.image_head.load_state_dict({IMAGE_HEAD_KEY_MAP[k]: v for k, v in head.items()})
        scale = torch.load(require(LOGIT_SCALE), map_location="cpu", weights_only=True)
        with torch.no_grad():
            model.logit_scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        return model

    # GeoCLIP's queue under its historical names
    @property
    def gps_queue(self) -> torch.Tensor:
        return self.queue.coords

    @property
    def queue_ptr(self) -> torch.Tensor:
        return self.queue.ptr

    @property
    def queue_len(self) -> torch.Tensor:
        return self.queue.length

    # -- encoders -------------------------------------------------------------------------------

    def forward(self, image_emb: torch.Tensor, gps: torch.Tensor) -> torch.Tensor:
        """``(B, M)`` logits: scale · cosine(image, location)."""
        img = F.normalize(self.encode_image(image_emb), dim=-1)
        loc = F.normalize(self.encode_location(gps).to(img.dtype), dim=-1)
        return scale_of(self.logit_scale) * img @ loc.T

    # -- training -------------------------------------------------------------------------------

    def loss(
        self,
        image_emb: torch.Tensor | Mapping[str, torch.Tensor],
        gps: torch.Tensor | None = None,
        update_queue: bool = True,
    ) -> dict[str, torch.Tensor]:
        """InfoNCE of each image against its GPS, the batch's other GPS and the queue.

        Accepts ``(image_emb, gps)`` or one batch mapping with keys ``image_emb``
        and ``gps`` (the form :func:`geolocus.train.fit` passes). In training
        mode the positives get Gaussian noise of ``gps_noise_km``. Returns
        ``{"loss", "acc" (in-batch top-1), "logit_scale"}``.
        """
        if isinstance(image_emb, Mapping):
            batch = image_emb
            try:
                image_emb, gps = batch["image_emb"], batch["gps"]
            except KeyError as e:
                raise InputError(f"GeoCLIP batch lacks {e.args[0]!r}") from None
        if gps is None or gps.ndim != 2 or gps.shape[1] != 2 or len(gps) != len(image_emb):
            raise InputError("GeoCLIP.loss needs gps of shape (B, 2) matching the images")
        img = F.normalize(self.encode_image(image_emb), dim=-1)
        keys, pos = self.location_keys(gps)
        keys = keys.to(img.dtype)
        loss = info_nce(img, keys, self.logit_scale)
        if update_queue and self.training:
            self.enqueue(gps, pos)
        acc = in_batch_accuracy(img, keys)
        return {"loss": loss, "acc": acc, "logit_scale": scale_of(self.logit_scale).detach()}

    # -- prediction -----------------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self, image_emb: torch.Tensor | np.ndarray, gallery: GPSGallery, k: int = 5
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k gallery locations per image: ``coords (B, k, 2)``, ``probs (B, k)``."""
        return self.search_gallery(image_emb, None, gallery, k)
