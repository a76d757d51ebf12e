"""TransGeoCLIP's stage 1: a joint image–text–GPS embedding space.

Three views of each training photo, each projected into one 512-d space:

- **image**: the backbone's global embedding through an MLP (GeoCLIP's head shape);
- **text**: "A photo taken in {city}, {region}, {country}." from
  :func:`geolocus.places.describe` (offline GeoNames), embedded by the frozen
  MiniLM sentence encoder — once, before training, since it depends only on
  the labels (the batch carries ``text_emb``) — then a trained projection;
- **GPS**: TransGeoCLIP's location encoder (Fourier-feature scale tokens
  through a Transformer, then location attention over a fixed anchor set so an
  embedding does not depend on its batch; see ``docs/location_encoders.md``),
  trained from scratch.

Loss: InfoNCE image↔text (symmetric; pairs with the same sentence are not
negatives), image→GPS and text→GPS (over the batch's GPS and an optional GPS
queue), each with its own learnable temperature, plus ``triplet_weight`` × the
hardest-negative triplet: text anchor, its GPS as positive, the most similar
*other* photo's image embedding in the batch as negative (photos within
``same_place_km`` are not negatives), margin ``triplet_margin`` on cosine
similarity. The retrieval vector is the image's joint embedding; prediction
over a GPS gallery compares it with the location embeddings.
``use_text=False`` is the ablation without the text view (image↔GPS alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from geolocus.encoders.image import DEFAULT_ENCODER
from geolocus.errors import InputError
from geolocus.models.base import ModelConfig
from geolocus.models.geoclip import ImageHead, ImageViewModel
from geolocus.models.losses import (
    INIT_LOGIT_SCALE,
    clip_loss,
    hardest_negative_triplet,
    in_batch_accuracy,
    info_nce,
    logit_scale_param,
    same_place,
)


@dataclass
class TransGeoCLIPConfig(ModelConfig):
    """Everything needed to rebuild a :class:`TransGeoCLIP` (stored with its weights)."""

    backbone: str = DEFAULT_ENCODER
    embed_dim: int = 1280
    hidden_dim: int | None = None  # image head's hidden size (default: embed_dim)
    text_encoder: str = "all-minilm-l6-v2"
    text_dim: int = 384
    dim: int = 512
    dropout: float = 0.1
    use_text: bool = True  # False: the ablation without the text view
    location_encoder: str = "transgeo"
    pretrained_location: bool = False
    location_options: dict = field(default_factory=dict)
    train_location_encoder: bool = True
    queue_size: int = 0  # GPS queue (each queued GPS is re-encoded every step when trained)
    gps_noise_km: float = 0.15
    init_logit_scale: float = INIT_LOGIT_SCALE
    triplet_margin: float = 0.5
    triplet_weight: float = 0.5
    same_place_km: float = 1.0
    retrieval: str = "head"


class TransGeoCLIP(ImageViewModel):
    """TransGeoCLIP over frozen backbone features (see the module docstring)."""

    model_type = "transgeoclip"
    config_class = TransGeoCLIPConfig

    def __init__(self, config: TransGeoCLIPConfig | None = None) -> None:
        super().__init__()
        cfg = config or TransGeoCLIPConfig()
        self.config = cfg
        self.image_head = ImageHead(cfg.embed_dim, cfg.hidden_dim or cfg.embed_dim, cfg.dim,
                                    cfg.dropout)  # fmt: skip
        self.logit_scale = logit_scale_param(cfg.init_logit_scale)  # image↔GPS
        if cfg.use_text:
            self.text_head = ImageHead(cfg.text_dim, cfg.dim, cfg.dim, cfg.dropout)
            self.text_logit_scale = logit_scale_param(cfg.init_logit_scale)  # image↔text
            self.text_gps_logit_scale = logit_scale_param(cfg.init_logit_scale)  # text↔GPS
        self._init_location()

    @property
    def needs_text(self) -> bool:  # type: ignore[override]
        """Training batches carry ``text_emb`` only with the text view."""
        return self.config.use_text

    def encode_text(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings ``(B, text_dim)`` (MiniLM) -> ``(B, dim)``, not normalised."""
        if not self.config.use_text:
            raise InputError("this TransGeoCLIP was built without the text view")
        if text_emb.ndim != 2 or text_emb.shape[1] != self.config.text_dim:
            raise InputError(f"text embeddings must be (B, {self.config.text_dim})")
        return self.text_head(text_emb.to(self.logit_scale.dtype))

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batch keys ``image_emb`` (B, D), ``gps`` (B, 2) and, with the text view,
        ``text_emb`` (B, text_dim)."""
        cfg = self.config
        try:
            emb, gps = batch["image_emb"], batch["gps"]
            text = batch["text_emb"] if cfg.use_text else None
        except KeyError as e:
            raise InputError(f"TransGeoCLIP batch lacks {e.args[0]!r}") from None
        if gps.ndim != 2 or gps.shape[1] != 2 or len(gps) != len(emb):
            raise InputError("TransGeoCLIP.loss needs gps of shape (B, 2) matching the images")
        img = F.normalize(self.encode_image(emb), dim=-1)
        keys, pos = self.location_keys(gps)
        keys, pos = keys.to(img.dtype), pos.to(img.dtype)
        out = {"loss_ig": info_nce(img, keys, self.logit_scale)}
        loss = out["loss_ig"]
        if text is not None:
            txt = F.normalize(self.encode_text(text), dim=-1)
            t = text.to(txt.dtype)
            same_text = (F.normalize(t, dim=-1) @ F.normalize(t, dim=-1).T) > 0.9999
            out["loss_it"] = clip_loss(img, txt, self.text_logit_scale, same_text)
            out["loss_tg"] = info_nce(txt, keys, self.text_gps_logit_scale)
            near = same_place(gps, cfg.same_place_km)
            out["triplet"] = hardest_negative_triplet(txt, pos, img, cfg.triplet_margin, near)
            loss = loss + out["loss_it"] + out["loss_tg"] + cfg.triplet_weight * out["triplet"]
        if self.training:
            self.enqueue(gps, pos if self.queue.stores_embeddings else None)
        out["acc"] = in_batch_accuracy(img, keys)
        return {"loss": loss, **{k: v.detach() for k, v in out.items()}}
