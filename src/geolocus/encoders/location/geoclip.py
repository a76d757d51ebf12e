"""GeoCLIP's location encoder (Vivanco Cepeda et al., NeurIPS 2023), in our own modules.

(lat, lon) -> Equal Earth projection at GeoCLIP's scale -> for each σ in
(2^0, 2^4, 2^8): random Fourier features (256 frequencies, 512 features) ->
MLP 512→1024→1024→1024 (ReLU after each) -> linear head 1024→512; the three
branch outputs are summed into one 512-d embedding (not normalised).

The pretrained weights come from the ``geoclip`` wheel; :func:`geoclip_key_map`
states how its state-dict keys map to ours.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from geolocus.encoders.location.pretrained import LOCATION_ENCODER
from geolocus.encoders.location.rff import (
    GEOCLIP_SIGMAS,
    GaussianFourierFeatures,
    project_geoclip,
)
from geolocus.errors import InputError
from geolocus.weights import require


class ScaleBranch(nn.Module):
    """One σ of the hierarchy: Fourier features then an MLP to the embedding space."""

    def __init__(
        self,
        sigma: float,
        n_freq: int = 256,
        hidden: int = 1024,
        dim: int = 512,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.rff = GaussianFourierFeatures(sigma, 2, n_freq, generator=generator)
        self.fc1 = nn.Linear(2 * n_freq, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, dim)

    def forward(self, projected: torch.Tensor) -> torch.Tensor:
        h = self.rff(projected).to(self.fc1.weight.dtype)
        h = torch.relu(self.fc1(h))
        h = torch.relu(self.fc2(h))
        h = torch.relu(self.fc3(h))
        return self.head(h)


def geoclip_key_map(n_branches: int = 3) -> dict[str, str]:
    """GeoCLIP state-dict key -> our key.

    GeoCLIP names branch ``i`` ``LocEnc{i}``; its ``capsule`` is a Sequential
    (0: RFF with matrix ``b``, 1/3/5: linears, 2/4/6: ReLU) and ``head`` a
    Sequential holding one linear.
    """
    m: dict[str, str] = {}
    for i in range(n_branches):
        src, dst = f"LocEnc{i}", f"branches.{i}"
        m[f"{src}.capsule.0.b"] = f"{dst}.rff.b"
        for j, fc in ((1, "fc1"), (3, "fc2"), (5, "fc3")):
            for p in ("weight", "bias"):
                m[f"{src}.capsule.{j}.{p}"] = f"{dst}.{fc}.{p}"
        for p in ("weight", "bias"):
            m[f"{src}.head.0.{p}"] = f"{dst}.head.{p}"
    return m


class GeoCLIPLocationEncoder(nn.Module):
    """``(N, 2)`` (lat, lon) in degrees -> ``(N, 512)`` GeoCLIP location embeddings.

    Each location is encoded on its own: the embedding does not depend on the
    rest of the batch (``batch_dependent = False``), so galleries can be
    encoded in any chunks and cached.
    """

    batch_dependent = False

    def __init__(
        self,
        sigmas: Sequence[float] = GEOCLIP_SIGMAS,
        n_freq: int = 256,
        hidden: int = 1024,
        dim: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.sigmas = tuple(float(s) for s in sigmas)
        self.dim = dim
        with torch.random.fork_rng(devices=[]):  # the same seed, the same model, globally
            torch.manual_seed(seed)
            self.branches = nn.ModuleList(ScaleBranch(s, n_freq, hidden, dim) for s in self.sigmas)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        v = project_geoclip(coords)
        out = self.branches[0](v)
        for branch in self.branches[1:]:
            out = out + branch(v)
        return out

    # -- pretrained weights -------------------------------------------------------------------

    def load_geoclip_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict in GeoCLIP's naming (every key must map, every weight be set)."""
        key_map = geoclip_key_map(len(self.branches))
        unknown = sorted(set(state) - set(key_map))
        if unknown:
            raise InputError(f"not a GeoCLIP location-encoder state dict: unexpected {unknown[:3]}")
        ours = {key_map[k]: v for k, v in state.items()}
        self.load_state_dict(ours, strict=True)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str] | None = None) -> GeoCLIPLocationEncoder:
        """GeoCLIP's pretrained encoder, from the ``geoclip`` wheel (or ``path``)."""
        if path is None:
            path = require(LOCATION_ENCODER)
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        try:
            model = cls(
                n_freq=state["LocEnc0.capsule.0.b"].shape[0],
                hidden=state["LocEnc0.capsule.1.weight"].shape[0],
                dim=state["LocEnc0.head.0.weight"].shape[0],
            )
        except (KeyError, TypeError, AttributeError):
            raise InputError(f"{path} is not a GeoCLIP location-encoder state dict") from None
        model.load_geoclip_state_dict(state)
        return model.eval()
