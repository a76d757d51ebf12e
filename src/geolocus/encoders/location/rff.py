"""Random Fourier features of projected coordinates (Tancik et al., NeurIPS 2020).

``γ(v) = [cos 2πBv, sin 2πBv]`` with a fixed matrix ``B ~ N(0, σ²)`` of shape
``(n_freq, in_dim)``: a small σ gives smooth, continent-scale features, a
large σ fine, city-scale ones. GeoCLIP and TransGeoCLIP use σ = 2^0, 2^4, 2^8.

The phase ``2πBv`` is computed in float64. With σ = 256 it reaches thousands of
radians, so float32 rounding of ``v`` (≈6e-8) already moves it by ~4e-4 rad;
in float64 the features are exact to float32 precision whatever the module
dtype (GeoCLIP's own float32 code is off by ~2.5e-5 in its embeddings).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from geolocus.geo import equal_earth

#: The three σ of GeoCLIP's hierarchy (coarse, medium, fine).
GEOCLIP_SIGMAS: tuple[float, ...] = (2.0**0, 2.0**4, 2.0**8)


def _precise_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64: fall back to float32 there.
    return torch.float32 if device.type == "mps" else torch.float64


def project_geoclip(coords: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` (lat, lon) in degrees -> ``(N, 2)`` Equal Earth (x, y) at GeoCLIP's scale.

    Computed in float64 (float32 on MPS) whatever the input dtype.
    """
    if coords.ndim != 2 or coords.shape[-1] != 2:
        raise ValueError(
            f"coordinates must have shape (N, 2) (lat, lon), got {tuple(coords.shape)}"
        )
    c = coords.to(_precise_dtype(coords.device))
    x, y = equal_earth(c[:, 0], c[:, 1], geoclip_scale=True)
    return torch.stack((x, y), dim=-1)


class GaussianFourierFeatures(nn.Module):
    """``(..., in_dim)`` -> ``(..., 2 * n_freq)``: cosines then sines of ``2πBv``.

    ``B`` is a buffer, not a parameter: it is drawn once and never trained
    (as in GeoCLIP, where it is a frozen parameter saved with the weights).
    """

    b: torch.Tensor

    def __init__(
        self,
        sigma: float,
        in_dim: int = 2,
        n_freq: int = 256,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.register_buffer("b", torch.randn(n_freq, in_dim, generator=generator) * sigma)

    @property
    def out_dim(self) -> int:
        return 2 * self.b.shape[0]

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        dt = _precise_dtype(v.device)
        phase = (2.0 * math.pi) * (v.to(dt) @ self.b.to(dt).T)
        return torch.cat((torch.cos(phase), torch.sin(phase)), dim=-1).to(self.b.dtype)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, in_dim={self.b.shape[1]}, n_freq={self.b.shape[0]}"
