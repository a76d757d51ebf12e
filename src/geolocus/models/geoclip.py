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

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geolocus.errors import InputError, ModelUnavailableError
from geolocus.files import atomic_path
from geolocus.geo import EARTH_RADIUS_KM
from geolocus.models.gallery import GPSGallery, fingerprint

#: safetensors metadata key holding the model's JSON config.
META_CONFIG = "geolocus.geoclip.config"
META_FORMAT = "geolocus.format"
FORMAT = "geolocus-geoclip-1"
#: CLIP ViT-L/14's projected embedding size, the input of GeoCLIP's pretrained head.
CLIP_VITL14_DIM = 768
KM_PER_DEGREE = EARTH_RADIUS_KM * math.pi / 180.0
#: Like CLIP, cap the logit scale at 100 so that training cannot blow it up.
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class GeoCLIPConfig:
    """Everything needed to rebuild a :class:`GeoCLIP` (stored with its weights)."""

    embed_dim: int = CLIP_VITL14_DIM  # size of the backbone embedding the head takes
    hidden_dim: int | None = None  # head's hidden size (GeoCLIP: = embed_dim)
    dim: int = 512  # the location space
    location_encoder: str = "geoclip"
    pretrained_location: bool = True  # GeoCLIP's weights from the geoclip wheel
    location_options: dict = field(default_factory=dict)  # kwargs of a non-pretrained encoder
    train_location_encoder: bool = False
    queue_size: int = 4096  # GeoCLIP's dynamic queue of GPS negatives
    gps_noise_km: float = 0.15  # σ of the Gaussian noise on training GPS (our default)
    init_logit_scale: float = math.log(1.0 / 0.07)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GeoCLIPConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown GeoCLIP config field(s): {', '.join(unknown)}")
        return cls(**dict(d))


class ImageHead(nn.Module):
    """GeoCLIP's image MLP: Linear, ReLU, Linear (``embed_dim → hidden → dim``)."""

    def __init__(self, embed_dim: int, hidden_dim: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


#: GeoCLIP's ``image_encoder_mlp_weights.pth`` keys (a Sequential) -> ours.
IMAGE_HEAD_KEY_MAP = {
    "0.weight": "fc1.weight",
    "0.bias": "fc1.bias",
    "2.weight": "fc2.weight",
    "2.bias": "fc2.bias",
}


def _location_encoder(cfg: GeoCLIPConfig) -> nn.Module:
    from geolocus.encoders.location import create_location_encoder

    if cfg.pretrained_location:
        if cfg.location_encoder != "geoclip" or cfg.location_options or cfg.dim != 512:
            raise InputError(
                "only the geoclip location encoder has pretrained weights (512-d, no options)"
            )
        return create_location_encoder("geoclip", pretrained=True)
    opts = {"dim": cfg.dim, **cfg.location_options}
    return create_location_encoder(cfg.location_encoder, pretrained=False, **opts)


def jitter_gps(gps: torch.Tensor, sigma_km: float, generator=None) -> torch.Tensor:
    """Move each (lat, lon) by isotropic Gaussian noise of σ km (lat clamped, lon wrapped)."""
    if sigma_km <= 0:
        return gps
    noise = torch.randn(gps.shape, generator=generator, dtype=gps.dtype, device=gps.device)
    noise = noise * (sigma_km / KM_PER_DEGREE)
    coslat = torch.cos(torch.deg2rad(gps[:, 0])).clamp_min(1e-3)
    lat = (gps[:, 0] + noise[:, 0]).clamp(-90.0, 90.0)
    lon = torch.remainder(gps[:, 1] + noise[:, 1] / coslat + 180.0, 360.0) - 180.0
    return torch.stack((lat, lon), dim=-1)


class GeoCLIP(nn.Module):
    """Image head + location encoder + logit scale, trained with InfoNCE and a GPS queue."""

    def __init__(self, config: GeoCLIPConfig | None = None) -> None:
        super().__init__()
        cfg = config or GeoCLIPConfig()
        self.config = cfg
        hidden = cfg.hidden_dim or cfg.embed_dim
        self.image_head = ImageHead(cfg.embed_dim, hidden, cfg.dim)
        self.location_encoder = _location_encoder(cfg)
        self.location_encoder.requires_grad_(cfg.train_location_encoder)
        if not cfg.train_location_encoder:
            self.location_encoder.eval()
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        # GPS queue: training state, not part of the model's weights
        self.register_buffer("gps_queue", torch.zeros(cfg.queue_size, 2), persistent=False)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long), persistent=False)
        self._loc_fp: tuple[tuple, str] | None = None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def pretrained_clip(cls, **overrides: Any) -> GeoCLIP:
        """GeoCLIP's published head and logit scale (for CLIP ViT-L/14 embeddings, 768-d)."""
        from geolocus.encoders.location.pretrained import IMAGE_HEAD, LOGIT_SCALE
        from geolocus.weights import require

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

    def train(self, mode: bool = True) -> GeoCLIP:
        super().train(mode)
        if not self.config.train_location_encoder:
            self.location_encoder.eval()  # frozen: no dropout, no batch statistics
        return self

    # -- encoders -------------------------------------------------------------------------------

    def encode_image(self, image_emb: torch.Tensor) -> torch.Tensor:
        """Backbone embeddings ``(B, embed_dim)`` -> ``(B, dim)`` (not normalised)."""
        if image_emb.ndim != 2 or image_emb.shape[1] != self.config.embed_dim:
            raise InputError(
                f"image embeddings must be (B, {self.config.embed_dim}), got "
                f"{tuple(image_emb.shape)}"
            )
        return self.image_head(image_emb.to(self.logit_scale.dtype))

    def encode_location(self, gps: torch.Tensor) -> torch.Tensor:
        """``(M, 2)`` (lat, lon) -> ``(M, dim)``; without a graph when the encoder is frozen."""
        if self.config.train_location_encoder:
            return self.location_encoder(gps)
        with torch.no_grad():
            return self.location_encoder(gps)

    def forward(self, image_emb: torch.Tensor, gps: torch.Tensor) -> torch.Tensor:
        """``(B, M)`` logits: scale · cosine(image, location)."""
        img = F.normalize(self.encode_image(image_emb), dim=-1)
        loc = F.normalize(self.encode_location(gps).to(img.dtype), dim=-1)
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * img @ loc.T

    # -- training -------------------------------------------------------------------------------

    def queued_gps(self) -> torch.Tensor:
        """The GPS negatives currently in the queue, ``(L, 2)`` with L ≤ queue_size."""
        return self.gps_queue[: int(self.queue_len)]

    @torch.no_grad()
    def enqueue(self, gps: torch.Tensor) -> None:
        """Push a batch's GPS into the ring buffer (the oldest leave first)."""
        q = self.config.queue_size
        if q == 0:
            return
        gps = gps.detach().to(self.gps_queue.dtype)[-q:]
        n, ptr = len(gps), int(self.queue_ptr)
        idx = (torch.arange(n, device=gps.device) + ptr) % q
        self.gps_queue[idx] = gps
        self.queue_ptr.fill_((ptr + n) % q)
        self.queue_len.fill_(min(q, int(self.queue_len) + n))

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
        gps = gps.to(self.gps_queue.dtype)
        pos = jitter_gps(gps, self.config.gps_noise_km) if self.training else gps
        candidates = torch.cat([pos, self.queued_gps()], dim=0)
        logits = self(image_emb, candidates)
        target = torch.arange(len(gps), device=logits.device)
        loss = F.cross_entropy(logits, target)
        if update_queue and self.training:
            self.enqueue(gps)
        acc = (logits.argmax(dim=1) == target).float().mean()
        return {"loss": loss, "acc": acc.detach(), "logit_scale": self.logit_scale.detach().exp()}

    # -- prediction -----------------------------------------------------------------------------

    def location_fingerprint(self) -> str:
        """Hash of the location encoder's weights (recomputed only after they change)."""
        enc = self.location_encoder
        key = tuple(t._version for t in (*enc.parameters(), *enc.buffers()))
        key = (*key, *(t.data_ptr() for t in enc.parameters()))
        if self._loc_fp is None or self._loc_fp[0] != key:
            self._loc_fp = (key, fingerprint(enc))
        return self._loc_fp[1]

    def gallery(self, coords: Any | None = None, **kwargs: Any) -> GPSGallery:
        """A gallery encoded with this model's location encoder (GeoCLIP's 100K by default)."""
        if coords is None:
            return GPSGallery.geoclip(self.location_encoder, **kwargs)
        return GPSGallery.build(self.location_encoder, coords, **kwargs)

    @torch.no_grad()
    def predict(
        self, image_emb: torch.Tensor | np.ndarray, gallery: GPSGallery, k: int = 5
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k gallery locations per image: ``coords (B, k, 2)``, ``probs (B, k)``."""
        fp = gallery.encoder_fingerprint
        if fp is not None and fp != self.location_fingerprint():
            raise InputError(
                "the gallery was encoded with another location encoder; "
                "rebuild it with model.gallery(coords)"
            )
        if gallery.dim != self.config.dim:
            raise InputError(f"gallery is {gallery.dim}-d, the model {self.config.dim}-d")
        q = self.encode_image(torch.as_tensor(image_emb, device=self.logit_scale.device))
        scale = float(self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp())
        return gallery.search(q, k, logit_scale=scale)

    # -- saving ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], include_location_encoder: bool | None = None):
        """Write the weights as safetensors with the config in the file's metadata.

        A frozen pretrained location encoder is left out by default (it is
        rebuilt from the ``geoclip`` wheel on load): the file then holds only
        the head and the logit scale.
        """
        from safetensors.torch import save_file

        cfg = self.config
        if include_location_encoder is None:
            include_location_encoder = cfg.train_location_encoder or not cfg.pretrained_location
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
            if include_location_encoder or not k.startswith("location_encoder.")
        }
        meta = {META_FORMAT: FORMAT, META_CONFIG: json.dumps(asdict(cfg))}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: str = "cpu") -> GeoCLIP:
        """Rebuild a model written by :meth:`save`."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        p = Path(path)
        if not p.is_file():
            raise InputError(f"GeoCLIP weights not found: {p}")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(p), device=map_location)
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{p} is not a safetensors file: {e}") from None
        if meta.get(META_FORMAT) != FORMAT or META_CONFIG not in meta:
            raise InputError(f"{p} is not a geolocus GeoCLIP file (no {META_CONFIG} metadata)")
        cfg = GeoCLIPConfig.from_dict(json.loads(meta[META_CONFIG]))
        has_loc = any(k.startswith("location_encoder.") for k in state)
        if not has_loc and not cfg.pretrained_location:
            raise InputError(f"{p} lacks the weights of its (non-pretrained) location encoder")
        try:
            model = cls(cfg)
        except ModelUnavailableError as e:
            raise ModelUnavailableError(f"loading {p}: {e}") from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if has_loc or not k.startswith("location_encoder.")]
        if missing or unexpected:
            raise InputError(f"{p} does not fit its config: missing {missing}, extra {unexpected}")
        return model.to(map_location)
