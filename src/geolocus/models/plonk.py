"""PLONK (Dufour et al., "Around the World in 80 Timesteps", CVPR 2025) over frozen features.

A generative head: the position of a photo is a sample of a flow on the unit sphere
S² ⊂ R³ that carries the uniform distribution (t = 0) to the photo's distribution of
positions (t = 1), conditioned on the image embedding.

- **Network**: an MLP whose blocks are modulated by adaptive layer norm (adaLN): the
  image embedding, projected, plus an embedding of t, gives each block's scale, shift
  and gate. Input: the current point x_t ∈ S² (3 coordinates); output: a velocity in R³
  projected onto the tangent plane at x_t.
- **Training** (Riemannian flow matching): x0 uniform on S², x1 the true position,
  x_t = slerp(x0, x1, t) with t ~ U(0, 1), target the geodesic's velocity at x_t
  (= log_{x_t}(x1) / (1 − t), of length the angle between x0 and x1); MSE. With
  probability ``cond_drop`` the condition is replaced by a learned null embedding, so
  one network gives both the conditional and the unconditional field
  (classifier-free guidance: v = v_u + w (v_c − v_u)).
- **Sampling**: ``steps`` Euler steps along the exponential map (each step stays on
  the sphere, then is renormalised against rounding).
- **Likelihood**: log p1(x1) = log p0(x0) − ∫₀¹ div v(x_t, t) dt, with
  log p0 = −log 4π, the divergence computed exactly by autograd (see
  :func:`sphere_divergence`). Densities are per steradian of the unit sphere (nats);
  per km² subtract 2 log R⊕. The answer is the most likely of ``samples`` samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geolocus.errors import InputError
from geolocus.geo.sphere import (
    EARTH_RADIUS_KM,
    fibonacci_sphere,
    from_unit,
    to_unit,
    validate_latlon,
)
from geolocus.models.base import (
    RETRIEVAL_MODES,
    GeoModel,
    ModelConfig,
    retrieval_dim,
    retrieval_vector,
)
from geolocus.nn import eval_mode

__all__ = [
    "LOG_UNIFORM",
    "Plonk",
    "PlonkConfig",
    "exp_map",
    "geodesic_point_velocity",
    "sphere_divergence",
    "tangent",
    "uniform_sphere",
]

#: log density of the uniform distribution on the unit sphere (per steradian).
LOG_UNIFORM = -math.log(4.0 * math.pi)
#: Points integrated at once (photos × samples or grid points): bounds the memory the
#: divergence's backward passes hold.
MAX_ROWS = 8192


@dataclass
class PlonkConfig(ModelConfig):
    """Everything needed to rebuild a :class:`Plonk` (stored with its weights)."""

    backbone: str = "efficientnet-lite0"
    embed_dim: int = 1280  # size of the backbone embedding (filled from the features)
    hidden: int = 256  # width of the blocks (paper: 512)
    depth: int = 4  # adaLN blocks (paper: 12)
    expansion: int = 4  # MLP expansion inside a block (paper: 4)
    time_dim: int = 64  # sinusoidal time features before their MLP
    cond_drop: float = 0.1  # probability of the null condition in training (paper: 0.1)
    guidance: float = 1.0  # w of v_u + w (v_c − v_u): 1 = conditional alone (one pass), 0 =
    # unconditional; other values cost two passes (paper: 3 in this form)
    steps: int = 32  # Euler steps of sampling and of the likelihood ODE (paper: 250)
    samples: int = 64  # samples drawn per photo; the most likely is the answer
    merge_km: float = 100.0  # samples within this of a better one belong to its place
    grid_points: int = 1000  # Fibonacci grid of gps_distribution (the --map heat layer)
    grid_steps: int = 8  # Euler steps of the grid's densities (a picture: coarser, cheaper)
    seed: int = 0  # seed of the starting points: the same photo gets the same answer
    retrieval: str = "head"  # retrieval vector: head (projected condition) | head+raw | raw

    def __post_init__(self) -> None:
        positive = ("embed_dim", "hidden", "depth", "expansion", "time_dim", "steps", "samples")
        for name in (*positive, "grid_points", "grid_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"plonk: {name} must be a positive integer, got {v!r}")
        if self.time_dim % 2:
            raise InputError(f"plonk: time_dim must be even, got {self.time_dim}")
        for name in ("cond_drop", "guidance", "merge_km"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                raise InputError(f"plonk: {name} must be a number, got {v!r}")
        if not 0.0 <= self.cond_drop < 1.0:
            raise InputError(f"plonk: cond_drop must be in [0, 1), got {self.cond_drop}")
        if self.guidance < 0:
            raise InputError(f"plonk: guidance must be ≥ 0, got {self.guidance}")
        if self.merge_km <= 0:
            raise InputError(f"plonk: merge_km must be positive, got {self.merge_km}")
        if self.retrieval not in RETRIEVAL_MODES:
            modes = ", ".join(RETRIEVAL_MODES)
            raise InputError(f"plonk: retrieval must be one of {modes}, got {self.retrieval!r}")


# -- the sphere ---------------------------------------------------------------------------------


def tangent(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v`` projected onto the tangent plane at the unit vectors ``x``."""
    return v - (v * x).sum(-1, keepdim=True) * x


def exp_map(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The point reached from ``x`` along the great circle of the tangent vector ``h``
    (exactly on the sphere, renormalised against rounding)."""
    n = h.norm(dim=-1, keepdim=True)
    safe = n.clamp_min(1e-12)
    y = torch.cos(n) * x + torch.sin(n) * h / safe
    return F.normalize(y, dim=-1)


def uniform_sphere(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 3)`` points uniform on the unit sphere (normalised Gaussians)."""
    return F.normalize(torch.randn(n, 3, generator=generator), dim=-1)


def geodesic_point_velocity(
    x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t on the great circle from ``x0`` to ``x1`` at fraction ``t`` (B, 1) (slerp), and
    its velocity d x_t / dt — tangent at x_t, of length the angle θ between x0 and x1
    (= log_{x_t}(x1) / (1 − t))."""
    cos = (x0 * x1).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos).clamp_min(1e-6)  # x0 = x1 has probability 0
    sin = torch.sin(theta)
    a, b = torch.sin((1 - t) * theta) / sin, torch.sin(t * theta) / sin
    xt = a * x0 + b * x1
    da, db = -theta * torch.cos((1 - t) * theta) / sin, theta * torch.cos(t * theta) / sin
    return xt, da * x0 + db * x1


def sphere_divergence(
    field: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The field at the unit vectors ``x`` ``(B, 3)`` and its divergence on the sphere ``(B,)``.

    ``field`` must be the *0-homogeneous* extension of a tangent field, V(y) = v(y/|y|),
    row by row (:meth:`Plonk.velocity` is: it normalises its input). Then the ambient
    divergence at |y| = 1 is the sphere's: div_R³ V = Σ_tangent ⟨∂_e V, e⟩ + ⟨∂_n V, n⟩,
    the first sum is div_S² v and the radial derivative ∂_n V vanishes. (Extending by
    V(y) = v(y) − ⟨v(y), y⟩ y instead, without normalising y, adds a radial term: for
    v = ∇_S z, the sphere's −2z becomes −4z.) The three partials ∂V_i/∂y_i come from
    three backward passes, exact (only 3-d).
    """
    with torch.enable_grad():
        y = x.detach().requires_grad_(True)
        v = field(y)
        div = torch.zeros(len(y), dtype=v.dtype, device=v.device)
        for i in range(3):
            (g,) = torch.autograd.grad(v[:, i].sum(), y, retain_graph=i < 2)
            div = div + g[:, i]
    return v.detach(), div.detach()


# -- the network --------------------------------------------------------------------------------


class AdaLNBlock(nn.Module):
    """h + gate · MLP((1 + scale) · LN(h) + shift), scale/shift/gate from the condition
    (computed once per condition by :meth:`Plonk.modulations`, not once per point). The
    MLP's last layer starts at zero, so each block starts as the identity."""

    def __init__(self, dim: int, expansion: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        last = nn.Linear(dim * expansion, dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * expansion), nn.GELU(), last)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(scale, shift, gate), each ``(G, 1, dim)``, of conditions ``(G, dim)``."""
        return tuple(self.ada(c).unsqueeze(1).chunk(3, dim=-1))

    def forward(self, h: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        scale, shift, gate = mod
        return h + gate * self.mlp((1 + scale) * self.norm(h) + shift)


#: Per block (scale, shift, gate), then the final (scale, shift); each ``(G, 1, hidden)``.
Modulations = tuple[list[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features ``(B, dim)`` of times in [0, 1] (scaled by 1000, as diffusion's)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=t.dtype) / max(half - 1, 1))
    arg = 1000.0 * t.reshape(-1, 1) * freq.to(t.device)
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


class Plonk(GeoModel):
    """Flow matching on the sphere conditioned on the image embedding (module docstring)."""

    model_type = "plonk"
    config_class = PlonkConfig

    def __init__(self, config: PlonkConfig | None = None) -> None:
        super().__init__()
        cfg = config or PlonkConfig()
        self.config = cfg
        d = cfg.hidden
        self.cond_proj = nn.Linear(cfg.embed_dim, d)
        self.null_cond = nn.Parameter(torch.zeros(d))  # the "no image" condition (CFG)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.input = nn.Linear(3, d)
        self.blocks = nn.ModuleList(AdaLNBlock(d, cfg.expansion) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.output = nn.Linear(d, 3)

    # -- the field ------------------------------------------------------------------------------

    def condition(self, embedding: torch.Tensor) -> torch.Tensor:
        """Backbone embeddings ``(B, embed_dim)`` -> the projected condition ``(B, hidden)``."""
        if embedding.ndim != 2 or embedding.shape[1] != self.config.embed_dim:
            raise InputError(
                f"image embeddings must be (B, {self.config.embed_dim}), got "
                f"{tuple(embedding.shape)}"
            )
        return self.cond_proj(embedding.to(self.null_cond.dtype))

    def modulations(self, cond: torch.Tensor, t: torch.Tensor) -> Modulations:
        """adaLN's scales, shifts and gates for ``G`` conditions ``(G, hidden)`` at times
        ``(G,)``: the condition plus the time's embedding, through each block's map."""
        c = cond + self.time_mlp(time_features(t, self.config.time_dim))
        blocks = [cast(AdaLNBlock, blk).modulation(c) for blk in self.blocks]
        return blocks, tuple(self.final_ada(c).unsqueeze(1).chunk(2, dim=-1))

    def velocity(self, y: torch.Tensor, mods: Modulations) -> torch.Tensor:
        """The tangent velocity at ``y/|y|`` ``(G·n, 3)``: G groups of n consecutive rows,
        group g under the g-th condition of ``mods`` (:meth:`modulations`).

        Normalising the input makes the field 0-homogeneous, so its ambient divergence is
        the sphere's (:func:`sphere_divergence`)."""
        blocks, (scale, shift) = mods
        g = len(scale)
        x = y / y.norm(dim=-1, keepdim=True)
        h = self.input(x).reshape(g, len(x) // g, -1)
        for block, mod in zip(self.blocks, blocks, strict=True):
            h = block(h, mod)
        out = self.output((1 + scale) * self.final_norm(h) + shift).reshape(-1, 3)
        return tangent(x, out)

    def guided_field(
        self, cond: torch.Tensor, t: float, guidance: float
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``y -> v`` at time ``t`` for rows grouped by ``cond`` ``(G, hidden)``:
        v_u + w (v_c − v_u) (one pass where w is 0 or 1). The modulations are computed
        here, once, outside the graph of the divergence (they do not depend on y)."""
        null = self.null_cond.expand_as(cond)
        both = guidance not in (0.0, 1.0)
        conds = torch.cat([cond, null]) if both else (null if guidance == 0.0 else cond)
        with torch.no_grad():
            mods = self.modulations(conds, torch.full((len(conds),), float(t)).to(conds))

        def field(y: torch.Tensor) -> torch.Tensor:
            if not both:
                return self.velocity(y, mods)
            v_c, v_u = self.velocity(torch.cat([y, y]), mods).chunk(2)
            return v_u + guidance * (v_c - v_u)

        return field

    # -- training -------------------------------------------------------------------------------

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Riemannian flow matching: MSE between the predicted and the geodesic's velocity
        at a random point of the great circle from a uniform start to the true position."""
        emb = batch["image_emb"]
        dev, dt = self._device_dtype()
        gps = batch["gps"].to(dev, torch.float64)
        x1 = to_unit(gps[:, 0], gps[:, 1]).to(dt)
        n = len(x1)
        x0 = F.normalize(torch.randn(n, 3, device=dev, dtype=dt), dim=-1)
        t = torch.rand(n, 1, device=dev, dtype=dt)
        xt, target = geodesic_point_velocity(x0, x1, t)
        cond = self.condition(emb.to(dev))
        if self.training and self.config.cond_drop > 0:
            drop = torch.rand(n, 1, device=dev) < self.config.cond_drop
            cond = torch.where(drop, self.null_cond.expand_as(cond), cond)
        v = self.velocity(xt, self.modulations(cond, t.reshape(-1)))
        err = ((v - target) ** 2).sum(-1)
        return {"loss": err.mean(), "speed": target.norm(dim=-1).mean().detach()}

    # -- the ODE --------------------------------------------------------------------------------

    def _flow(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        reverse: bool,
        guidance: float,
        steps: int,
        on_step: Callable[[torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler along the exponential map from t = 0 to 1 (or 1 to 0 with ``reverse``),
        accumulating ∫ div v dt; the rows of ``x`` are ``len(cond)`` groups, one per
        condition. Returns the end points and that integral ``(rows,)``."""
        dt = 1.0 / steps
        total = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for k in range(steps):
            t = 1.0 - k * dt if reverse else k * dt
            v, div = sphere_divergence(self.guided_field(cond, t, guidance), x)
            x = exp_map(x, (-dt if reverse else dt) * v)
            total = total + div * dt
            if on_step is not None:
                on_step(x)
        return x, total

    def _conditions(self, embedding: Any) -> torch.Tensor:
        with eval_mode(self), torch.no_grad():
            return self.condition(self._as_input(embedding))

    def _guidance(self, guidance: float | None) -> float:
        w = float(self.config.guidance if guidance is None else guidance)
        if not math.isfinite(w) or w < 0:
            raise InputError(f"guidance must be ≥ 0, got {w}")
        return w

    def starts(self, n: int) -> torch.Tensor:
        """The ``n`` seeded starting points, the same for every photo (so a photo's answer
        does not depend on the batch it comes in)."""
        g = torch.Generator().manual_seed(int(self.config.seed))
        dev, dt = self._device_dtype()
        return uniform_sphere(n, g).to(dev, dt)

    def sample(
        self,
        embedding: Any,
        n: int | None = None,
        guidance: float | None = None,
        steps: int | None = None,
        on_step: Callable[[torch.Tensor], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples per photo: unit vectors ``(B, n, 3)`` and their log densities
        ``(B, n)`` (nats per steradian) under the (guided, discretised) flow."""
        n = int(n or self.config.samples)
        cond = self._conditions(embedding)
        w, k = self._guidance(guidance), int(steps or self.config.steps)
        xs, logps = [], []
        with eval_mode(self):
            for c in cond.split(max(1, MAX_ROWS // n)):  # bounded memory for the backward
                x1, div = self._flow(self.starts(n).repeat(len(c), 1), c, False, w, k, on_step)
                xs.append(x1.reshape(len(c), n, 3))
                logps.append((LOG_UNIFORM - div).reshape(len(c), n))
        return torch.cat(xs), torch.cat(logps)

    def log_density(
        self,
        embedding: Any,
        gps: Any,
        guidance: float | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """log p(gps | photo) ``(B, P)`` in nats per steradian, for ``(P, 2)`` positions shared
        by all photos or ``(B, P, 2)`` per photo: the ODE run backwards from each position
        to t = 0, log p1 = −log 4π − ∫ div v dt."""
        cond = self._conditions(embedding)
        b = len(cond)
        g = torch.as_tensor(np.asarray(gps, dtype=np.float64))
        if g.ndim == 2:
            g = g.unsqueeze(0).expand(b, -1, -1)
        if g.ndim != 3 or g.shape[0] != b or g.shape[2] != 2:
            raise InputError(f"gps must be (P, 2) or ({b}, P, 2), got {tuple(g.shape)}")
        validate_latlon(g[..., 0], g[..., 1], "positions")
        p = g.shape[1]
        dev, dt = self._device_dtype()
        x1 = to_unit(g[..., 0], g[..., 1]).to(dev, dt)  # (B, P, 3)
        w, k = self._guidance(guidance), int(steps or self.config.steps)
        out = []
        with eval_mode(self):
            for rows in torch.arange(b).split(max(1, MAX_ROWS // max(p, 1))):
                _, div = self._flow(x1[rows].reshape(-1, 3), cond[rows], True, w, k)
                out.append((LOG_UNIFORM - div).reshape(len(rows), p))
        return torch.cat(out)

    def nll(self, embedding: Any, gps: Any, guidance: float | None = None) -> np.ndarray:
        """−log p(true position | photo) ``(B,)`` in nats per steradian of the unit sphere
        (uniform: log 4π ≈ 2.53; per km² add 2 log R⊕ ≈ 17.5)."""
        g = np.asarray(gps, dtype=np.float64).reshape(-1, 1, 2)
        return -self.log_density(embedding, g, guidance).cpu().numpy()[:, 0].astype(np.float64)

    # -- answers --------------------------------------------------------------------------------

    def gps_candidates(
        self, embedding: Any, tokens: Any | None = None, k: int = 5
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-k distinct places among ``samples`` samples, best first: ``coords (B, k, 2)``,
        ``probs (B, k)``.

        Greedy by likelihood: the most likely remaining sample becomes a place and takes
        every remaining sample within ``merge_km``. A place's probability is the share of
        the samples it took (a Monte Carlo estimate of the mass around it; the shares of
        all places sum to 1). With fewer places than k, the next most likely samples fill
        in with probability 0."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        xs, logp = self.sample(embedding)
        lat, lon = from_unit(xs.double().cpu().numpy())
        logp_np = logp.double().cpu().numpy()
        b, m = logp_np.shape
        coords = np.zeros((b, k, 2))
        probs = np.zeros((b, k))
        cos_merge = math.cos(min(self.config.merge_km / EARTH_RADIUS_KM, math.pi))
        for i in range(b):
            order = np.argsort(-logp_np[i], kind="stable")
            v = to_unit(lat[i], lon[i])
            free = np.ones(m, dtype=bool)
            chosen: list[int] = []
            shares: list[float] = []
            for j in order:
                if not free[j]:
                    continue
                near = free & (v @ v[j] >= cos_merge)
                free &= ~near
                chosen.append(int(j))
                shares.append(near.sum() / m)
            rest = [int(j) for j in order if int(j) not in set(chosen)]
            picks = (chosen + rest)[:k]
            picks += [picks[-1]] * (k - len(picks))  # k > samples: repeat the last
            coords[i, :, 0], coords[i, :, 1] = lat[i][picks], lon[i][picks]
            probs[i, : min(len(shares), k)] = shares[:k]
        return coords, probs

    def grid(self) -> np.ndarray:
        """The ``grid_points`` (lat, lon) of :meth:`gps_distribution` (a Fibonacci lattice)."""
        return fibonacci_sphere(self.config.grid_points)

    def gps_distribution(
        self, embedding: Any, tokens: Any | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The density at every point of an equal-area Fibonacci grid, normalised over the
        grid: ``coords (N, 2)``, ``probs (B, N)`` (each row sums to 1; the heat layer). The
        ODE takes ``grid_steps`` steps here: N points cost N/``samples`` answers."""
        coords = self.grid()
        logp = self.log_density(embedding, coords, steps=self.config.grid_steps).double()
        return coords, torch.softmax(logp, dim=-1).cpu().numpy()

    # -- retrieval ------------------------------------------------------------------------------

    @property
    def retrieval_dim(self) -> int:
        return retrieval_dim(self.config.retrieval, self.config.hidden, self.config.embed_dim)

    @torch.no_grad()
    def embed_image(self, embedding: Any, tokens: Any | None = None) -> torch.Tensor:
        """The retrieval vector ``(B, retrieval_dim)``: the projected condition (with the raw
        embedding per ``config.retrieval``), unit length."""
        with eval_mode(self):
            x = self._as_input(embedding)
            return retrieval_vector(self.condition(x), x, self.config.retrieval)
