"""DualGeo's stage 1: an RGB view and a segmentation view of each photo, fused by
bidirectional cross-attention and aligned with GPS by dual-view contrastive learning.

Over frozen backbone features:

- **RGB view**: the backbone's patch tokens ``(B, N, C)``, LayerNorm, projected
  to ``width``, plus fixed 2-D position codes;
- **segmentation view**: the class map of the same patches from a fixed
  k-means codebook over L2-normalised tokens (pseudo-semantic segmentation,
  :class:`~geolocus.segment.TokenCodebook`, fitted on the training photos by
  :meth:`DualGeo.prepare` and saved in the model file), one-hot, through a
  small CNN (:class:`~geolocus.models.fusion.SegmentationView`), plus the
  same position codes;
- **fusion**: :class:`~geolocus.models.fusion.BiCrossAttention` (8 heads; RGB
  attends to segmentation and segmentation to RGB; residual + LayerNorm on
  both sides), mean-pooled, concatenated, MLP into the 512-d location space;
- **dual-view contrastive learning**: InfoNCE fused-image↔GPS plus
  ``seg_weight`` × InfoNCE segmentation↔GPS (the segmentation view pooled
  *before* fusion, so it is a view of its own), each with a learnable
  temperature, over the batch's GPS and a queue of recent GPS; GPS through
  GeoCLIP's pretrained location encoder, frozen by default.

The retrieval embedding, as in the paper, is the fused feature concatenated
with the backbone's raw image feature, each L2-normalised first (then scaled
by 1/√2 so the whole is unit length); ``retrieval="head"`` keeps the fused
feature alone. ``use_seg=False`` is the ablation without the segmentation view
(self-attention over RGB tokens in place of the cross-attention).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geolocus.encoders.image import DEFAULT_ENCODER
from geolocus.encoders.image.base import square_grid
from geolocus.errors import InputError
from geolocus.models.base import ModelConfig, retrieval_dim, retrieval_vector
from geolocus.models.fusion import BiCrossAttention, SegmentationView, SelfAttention, sincos_2d
from geolocus.models.geoclip import ImageHead, LocationHead
from geolocus.models.losses import (
    INIT_LOGIT_SCALE,
    in_batch_accuracy,
    info_nce,
    logit_scale_param,
    scale_of,
)
from geolocus.nn import eval_mode
from geolocus.segment.codebook import TokenCodebook


@dataclass
class DualGeoConfig(ModelConfig):
    """Everything needed to rebuild a :class:`DualGeo` (stored with its weights)."""

    backbone: str = DEFAULT_ENCODER
    embed_dim: int = 1280  # backbone's global embedding
    token_dim: int = 1280  # backbone's patch tokens
    classes: int = 32  # codebook size (pseudo-semantic classes)
    width: int = 128  # token width inside the fusion (CPU-sized; ~2000 training photos)
    heads: int = 8
    hidden_dim: int = 1024  # fused head's hidden layer
    dim: int = 512  # the location space
    dropout: float = 0.1
    use_seg: bool = True  # False: the ablation without the segmentation view
    seg_weight: float = 1.0  # weight of the segmentation↔GPS InfoNCE
    location_encoder: str = "geoclip"
    pretrained_location: bool = True
    location_options: dict = field(default_factory=dict)
    train_location_encoder: bool = False
    queue_size: int = 4096
    gps_noise_km: float = 0.15
    init_logit_scale: float = INIT_LOGIT_SCALE
    retrieval: str = "head+raw"  # fused feature ⊕ raw image feature (the paper)
    codebook_tokens: int = 65536  # tokens sampled to fit the codebook
    seed: int = 0  # codebook fitting


class DualGeo(LocationHead):
    """DualGeo over frozen backbone features (see the module docstring)."""

    model_type = "dualgeo"
    config_class = DualGeoConfig
    needs_tokens = True

    def __init__(self, config: DualGeoConfig | None = None) -> None:
        super().__init__()
        cfg = config or DualGeoConfig()
        self.config = cfg
        w = cfg.width
        self.codebook = TokenCodebook(cfg.classes, cfg.token_dim, cfg.backbone)
        self.rgb_in = nn.Sequential(nn.LayerNorm(cfg.token_dim), nn.Linear(cfg.token_dim, w))
        if cfg.use_seg:
            self.seg_view = SegmentationView(cfg.classes, w)
            self.fusion: nn.Module = BiCrossAttention(w, cfg.heads, cfg.dropout)
            self.seg_head = ImageHead(w, w, cfg.dim, cfg.dropout)
            self.seg_logit_scale = logit_scale_param(cfg.init_logit_scale)
        else:
            self.fusion = SelfAttention(w, cfg.heads, cfg.dropout)
        fused_in = 2 * w if cfg.use_seg else w
        self.fused_head = ImageHead(fused_in, cfg.hidden_dim, cfg.dim, cfg.dropout)
        self.logit_scale = logit_scale_param(cfg.init_logit_scale)
        self._init_location()

    def prepare(self, data: Any) -> None:
        """Fit the codebook on the training photos' tokens (``data.tokens``) if not yet fitted."""
        if self.config.use_seg and not self.codebook.fitted:
            tokens = getattr(data, "tokens", data)
            if tokens is None:
                raise InputError("DualGeo needs the backbone's patch tokens to fit its codebook")
            self.codebook.fit(tokens, seed=self.config.seed, max_tokens=self.config.codebook_tokens)

    # -- the two views and their fusion ---------------------------------------------------------

    def _check(self, embedding: torch.Tensor, tokens: torch.Tensor | None) -> None:
        cfg = self.config
        if tokens is None:
            raise InputError("DualGeo needs the backbone's patch tokens (B, N, C)")
        if tokens.ndim != 3 or tokens.shape[2] != cfg.token_dim or len(tokens) != len(embedding):
            raise InputError(
                f"tokens must be (B, N, {cfg.token_dim}) for {len(embedding)} images, "
                f"got {tuple(tokens.shape)}"
            )
        if embedding.ndim != 2 or embedding.shape[1] != cfg.embed_dim:
            raise InputError(
                f"embeddings must be (B, {cfg.embed_dim}), got {tuple(embedding.shape)}"
            )

    def views(
        self, embedding: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(fused (B, dim), seg (B, dim) or None)``, not normalised."""
        self._check(embedding, tokens)
        tokens = tokens.to(self.logit_scale.dtype)
        try:
            grid = square_grid(tokens.shape[1])
        except ValueError as e:
            raise InputError(f"DualGeo: {e}") from None
        pos = sincos_2d(*grid, self.config.width).to(tokens)
        rgb = self.rgb_in(tokens) + pos
        if not self.config.use_seg:
            return self.fused_head(self.fusion(rgb).mean(dim=1)), None
        if not self.codebook.fitted:
            raise InputError("DualGeo's codebook is not fitted: call model.prepare(train_tokens)")
        seg = self.seg_view(self.codebook.one_hot(tokens), grid) + pos
        rgb2, seg2 = self.fusion(rgb, seg)
        fused = self.fused_head(torch.cat([rgb2.mean(dim=1), seg2.mean(dim=1)], dim=-1))
        return fused, self.seg_head(seg.mean(dim=1))

    def location_query(self, embedding: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        self._check(embedding, tokens)
        return self.views(embedding, tokens)[0]  # type: ignore[arg-type]  # _check refuses None

    @property
    def retrieval_dim(self) -> int:
        return retrieval_dim(self.config.retrieval, self.config.dim, self.config.embed_dim)

    @torch.no_grad()
    def embed_image(self, embedding: Any, tokens: Any | None = None) -> torch.Tensor:
        """The retrieval vector ``(B, retrieval_dim)``, unit length; needs the tokens."""
        if tokens is None:
            raise InputError("DualGeo.embed_image needs the backbone's patch tokens")
        with eval_mode(self):
            x, t = self._as_input(embedding), self._as_input(tokens)
            return retrieval_vector(self.views(x, t)[0], x, self.config.retrieval)

    # -- training -------------------------------------------------------------------------------

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Dual-view InfoNCE; batch keys ``image_emb`` (B, D), ``tokens`` (B, N, C), ``gps``."""
        try:
            emb, tokens, gps = batch["image_emb"], batch["tokens"], batch["gps"]
        except KeyError as e:
            raise InputError(f"DualGeo batch lacks {e.args[0]!r}") from None
        if gps.ndim != 2 or gps.shape[1] != 2 or len(gps) != len(emb):
            raise InputError("DualGeo.loss needs gps of shape (B, 2) matching the images")
        fused, seg = self.views(emb, tokens)
        fused = F.normalize(fused, dim=-1)
        keys, pos = self.location_keys(gps)
        keys = keys.to(fused.dtype)
        loss_fused = info_nce(fused, keys, self.logit_scale)
        out = {"loss_fused": loss_fused}
        loss = loss_fused
        if seg is not None:
            loss_seg = info_nce(F.normalize(seg, dim=-1), keys, self.seg_logit_scale)
            loss = loss + self.config.seg_weight * loss_seg
            out["loss_seg"] = loss_seg
        if self.training:
            self.enqueue(gps, pos)
        out["acc"] = in_batch_accuracy(fused, keys)
        out["logit_scale"] = scale_of(self.logit_scale)
        return {"loss": loss, **{k: v.detach() for k, v in out.items()}}
