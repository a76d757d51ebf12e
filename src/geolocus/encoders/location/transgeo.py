"""TransGeoCLIP's location encoder: Fourier-feature scale tokens through a Transformer,
then *location attention*, which refines each embedding with those of nearby places.

The paper (Cui et al.) describes the location attention over the pairwise
great-circle distances of the locations but its code leaves it unfinished; the
design here, and why, is in ``docs/location_encoders.md``. In short:

1. (lat, lon) -> Equal Earth (GeoCLIP's scale) -> RFF at σ = 2^0, 2^4, 2^8, as GeoCLIP;
2. each σ's 512 features become one token (a linear map per σ, which also tells the
   tokens apart); a small pre-norm ``nn.TransformerEncoder`` lets the scales
   interact; the mean token is projected to 512-d;
3. :class:`LocationAttention`: multi-head attention whose logits get a learned
   distance penalty ``-d_ij / τ_h`` (one τ per head, from tens to thousands of
   km), residual, LayerNorm. The keys are, by default, a *fixed anchor set*
   (quasi-uniform points on the sphere, or ones you give, e.g. k-means centres
   of a database), so a location's embedding never depends on which other
   locations share its batch; ``context="batch"`` attends within the batch as
   the paper does, for experiments only (its embeddings cannot be cached).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geolocus.encoders.location.rff import (
    GEOCLIP_SIGMAS,
    GaussianFourierFeatures,
    project_geoclip,
)
from geolocus.errors import InputError
from geolocus.geo import fibonacci_sphere, pairwise_km, validate_latlon

CONTEXTS = ("anchors", "batch", "none")


def _default_taus(heads: int) -> list[float]:
    # geometric from street/city (25 km) to country/continent (5000 km)
    if heads == 1:
        return [500.0]
    return [25.0 * (5000.0 / 25.0) ** (h / (heads - 1)) for h in range(heads)]


class LocationAttention(nn.Module):
    """Attention from locations to context locations, biased by great-circle distance.

    ``logit_hij = <q_hi, k_hj> / sqrt(d_h) - d_ij / τ_h``: head h hardly sees
    context points much farther than τ_h km. ``τ_h = exp(log_tau_h)`` is
    learned. Output: ``LayerNorm(x + W_o · attention)``.
    """

    def __init__(
        self,
        dim: int = 512,
        heads: int = 4,
        tau_km: Sequence[float] | None = None,
        dropout: float = 0.0,
        learn_tau: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise InputError(f"location attention: dim {dim} is not divisible by heads {heads}")
        taus = list(tau_km) if tau_km is not None else _default_taus(heads)
        if len(taus) != heads or min(taus) <= 0:
            raise InputError(f"location attention needs {heads} positive τ (km), got {taus}")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.log_tau = nn.Parameter(torch.log(torch.tensor(taus)), requires_grad=learn_tau)

    @property
    def tau_km(self) -> torch.Tensor:
        return self.log_tau.detach().exp()

    def distance_bias(self, coords: torch.Tensor, ctx_coords: torch.Tensor) -> torch.Tensor:
        """``(H, N, M)`` additive logits ``-d_ij / τ_h``."""
        d = pairwise_km(coords.double(), ctx_coords.double()).to(self.log_tau.dtype)
        return -d.unsqueeze(0) / self.log_tau.exp()[:, None, None]

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # (N, D) -> (H, N, D/H)
        return t.view(t.shape[0], self.heads, -1).transpose(0, 1)

    def _qkv_bias(self, x, coords, ctx, ctx_coords):
        if ctx is None:
            ctx, ctx_coords = x, coords
        if ctx_coords is None or ctx_coords.shape[0] != ctx.shape[0]:
            raise InputError("location attention: context and its coordinates differ in length")
        bias = self.distance_bias(coords, ctx_coords).to(x.dtype)
        return self._split(self.q(x)), self._split(self.k(ctx)), self._split(self.v(ctx)), bias

    def attention(
        self,
        x: torch.Tensor,
        coords: torch.Tensor,
        ctx: torch.Tensor | None = None,
        ctx_coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ``(H, N, M)`` attention weights (for inspection; forward does not use this)."""
        q, k, _, bias = self._qkv_bias(x, coords, ctx, ctx_coords)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        return logits.softmax(dim=-1)

    def forward(
        self,
        x: torch.Tensor,
        coords: torch.Tensor,
        ctx: torch.Tensor | None = None,
        ctx_coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` (N, D) at ``coords`` (N, 2); context ``ctx`` (M, D) at ``ctx_coords`` (M, 2),
        the batch itself when ``ctx`` is None."""
        q, k, v, bias = self._qkv_bias(x, coords, ctx, ctx_coords)
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0
        )
        o = o.transpose(0, 1).reshape(x.shape)
        return self.norm(x + self.out(o))


class TransGeoLocationEncoder(nn.Module):
    """``(N, 2)`` (lat, lon) in degrees -> ``(N, dim)`` location embeddings.

    ``context``: ``"anchors"`` (default; batch-independent, cacheable),
    ``"batch"`` (the paper's in-batch attention; an embedding then depends on
    its batch) or ``"none"`` (no location attention). ``anchors``: how many
    Fibonacci-lattice anchors, or an ``(M, 2)`` tensor of anchor coordinates.
    Each anchor also has a learned memory vector (zero at start) added to its
    encoding, so the anchors can learn what a region is like.
    """

    anchor_coords: torch.Tensor

    def __init__(
        self,
        sigmas: Sequence[float] = GEOCLIP_SIGMAS,
        n_freq: int = 256,
        d_model: int = 256,
        layers: int = 2,
        heads: int = 4,
        dim: int = 512,
        dropout: float = 0.1,
        context: str = "anchors",
        anchors: int | torch.Tensor = 1024,
        attention_heads: int = 4,
        tau_km: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if context not in CONTEXTS:
            raise InputError(f"context must be one of {', '.join(CONTEXTS)}, got {context!r}")
        self.context, self.dim = context, dim
        self.sigmas = tuple(float(s) for s in sigmas)
        if isinstance(anchors, int):
            anchor_coords = torch.from_numpy(fibonacci_sphere(anchors)).float()
        else:
            anchor_coords = torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2)
            validate_latlon(anchor_coords[:, 0], anchor_coords[:, 1], what="anchor coordinates")
        if anchor_coords.shape[0] < 1:
            raise InputError("location attention needs at least one anchor")
        with torch.random.fork_rng(devices=[]):  # the same seed, the same model
            torch.manual_seed(seed)
            self.rff = nn.ModuleList(GaussianFourierFeatures(s, 2, n_freq) for s in self.sigmas)
            self.tokens = nn.ModuleList(nn.Linear(2 * n_freq, d_model) for _ in self.sigmas)
            layer = nn.TransformerEncoderLayer(
                d_model,
                heads,
                dim_feedforward=4 * d_model,
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.transformer = nn.TransformerEncoder(
                layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
            )
            self.proj = nn.Linear(d_model, dim)
            self.location_attention = LocationAttention(dim, attention_heads, tau_km)
        self.register_buffer("anchor_coords", anchor_coords)
        self.anchor_memory = nn.Parameter(torch.zeros(anchor_coords.shape[0], dim))
        self._ctx_cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def batch_dependent(self) -> bool:
        """True when an embedding depends on the rest of its batch (``context="batch"``)."""
        return self.context == "batch"

    def embed(self, coords: torch.Tensor) -> torch.Tensor:
        """Per-location embeddings before location attention, ``(N, dim)``."""
        v = project_geoclip(coords)
        dtype = self.proj.weight.dtype
        toks = torch.stack(
            [lin(rff(v).to(dtype)) for rff, lin in zip(self.rff, self.tokens, strict=True)], dim=1
        )  # (N, S, d_model): one token per σ
        return self.proj(self.transformer(toks).mean(dim=1))

    def anchor_context(self) -> torch.Tensor:
        """``(M, dim)`` encodings of the anchors plus their learned memory.

        Cached in eval mode with gradients off (inference, gallery encoding) as
        long as no parameter changes (tracked by the tensors' version counters).
        """
        if self.training or torch.is_grad_enabled():
            self._ctx_cache = None
            return self.embed(self.anchor_coords) + self.anchor_memory
        key: tuple[Any, ...] = (
            *(p._version for p in self.parameters()),
            self.anchor_coords._version,
        )
        key = (*key, self.anchor_memory.device, self.anchor_memory.dtype)
        if self._ctx_cache is None or self._ctx_cache[0] != key:
            self._ctx_cache = (key, self.embed(self.anchor_coords) + self.anchor_memory)
        return self._ctx_cache[1]

    def forward(self, coords: torch.Tensor, context: str | None = None) -> torch.Tensor:
        mode = context or self.context
        if mode not in CONTEXTS:
            raise InputError(f"context must be one of {', '.join(CONTEXTS)}, got {mode!r}")
        h = self.embed(coords)
        if mode == "none":
            return h
        if mode == "batch":
            return self.location_attention(h, coords)
        return self.location_attention(h, coords, self.anchor_context(), self.anchor_coords)
