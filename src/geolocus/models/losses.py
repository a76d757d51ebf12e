"""The contrastive pieces the models share: InfoNCE, a GPS queue, GPS jitter, triplets."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from geolocus.geo import EARTH_RADIUS_KM, pairwise_km

KM_PER_DEGREE = EARTH_RADIUS_KM * math.pi / 180.0
#: Like CLIP, cap the logit scale at 100 so that training cannot blow it up.
MAX_LOGIT_SCALE = math.log(100.0)
#: CLIP's initial temperature 0.07, as a log logit scale.
INIT_LOGIT_SCALE = math.log(1.0 / 0.07)


def logit_scale_param(init: float = INIT_LOGIT_SCALE) -> nn.Parameter:
    """A learnable log logit scale (inverse temperature), CLIP-style."""
    return nn.Parameter(torch.tensor(float(init)))


def scale_of(log_scale: torch.Tensor) -> torch.Tensor:
    return log_scale.clamp(max=MAX_LOGIT_SCALE).exp()


@torch.no_grad()
def in_batch_accuracy(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Share of queries whose own key (row ``i`` of ``keys``) scores highest: the
    training accuracy that the logs show."""
    target = torch.arange(len(query), device=query.device)
    return ((query @ keys.T).argmax(dim=1) == target).float().mean()


def info_nce(query: torch.Tensor, keys: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each query over ``keys``, whose first ``B`` rows are the positives.

    ``query`` ``(B, D)`` and ``keys`` ``(M ≥ B, D)`` are L2-normalised; the rows
    after the first ``B`` are extra negatives (a queue).
    """
    logits = scale_of(log_scale) * query @ keys.T
    return F.cross_entropy(logits, torch.arange(len(query), device=query.device))


def clip_loss(
    a: torch.Tensor, b: torch.Tensor, log_scale: torch.Tensor, same: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE between two aligned, L2-normalised batches (CLIP's loss).

    ``same`` ``(B, B)`` marks off-diagonal pairs that are not negatives (e.g.
    two photos with the same place sentence); they are left out of the softmax.
    """
    logits = scale_of(log_scale) * a @ b.T
    if same is not None:
        off = same & ~torch.eye(len(a), dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(off, float("-inf"))
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def hardest_negative_triplet(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    candidates: torch.Tensor,
    margin: float,
    invalid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triplet loss with the hardest in-batch negative, on cosine similarity.

    For each anchor i: ``max(0, margin − cos(a_i, p_i) + max_j cos(a_i, c_j))``
    over candidates j ≠ i not marked ``invalid[i, j]`` (e.g. photos of the same
    place, which are not negatives). Inputs are L2-normalised ``(B, D)``.
    """
    sim = anchor @ candidates.T
    mask = torch.eye(len(anchor), dtype=torch.bool, device=anchor.device)
    if invalid is not None:
        mask = mask | invalid
    hardest = sim.masked_fill(mask, -2.0).max(dim=1).values
    has_neg = (~mask).any(dim=1)
    pos = (anchor * positive).sum(-1)
    loss = F.relu(margin - pos + hardest)[has_neg]
    return loss.mean() if loss.numel() else anchor.sum() * 0.0


def same_place(gps: torch.Tensor, within_km: float) -> torch.Tensor:
    """``(B, B)`` True where two photos were taken within ``within_km`` of each other."""

    return pairwise_km(gps.double(), gps.double()) <= within_km


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


class GPSQueue(nn.Module):
    """GeoCLIP's dynamic queue: a ring buffer of recent training GPS, as extra negatives.

    With a frozen location encoder (``dim`` given) it also keeps the unit
    embeddings of the queued GPS, so each location is encoded once when it
    enters the queue, not at every step (GeoCLIP's 4096 queued GPS through its
    9.4 M-parameter encoder would otherwise dominate a CPU step). Training
    state only: the buffers are not saved with the model.
    """

    coords: torch.Tensor
    emb: torch.Tensor
    ptr: torch.Tensor
    length: torch.Tensor

    def __init__(self, size: int, dim: int | None = None) -> None:
        super().__init__()
        self.size = int(size)
        self.register_buffer("coords", torch.zeros(self.size, 2), persistent=False)
        self.register_buffer(
            "emb", torch.zeros(self.size if dim else 0, dim or 0), persistent=False
        )
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("length", torch.zeros((), dtype=torch.long), persistent=False)

    @property
    def stores_embeddings(self) -> bool:
        return self.emb.shape[0] > 0

    def __len__(self) -> int:
        return int(self.length)

    def queued_coords(self) -> torch.Tensor:
        return self.coords[: len(self)]

    def queued_embeddings(self) -> torch.Tensor:
        return self.emb[: len(self)]

    @torch.no_grad()
    def push(self, gps: torch.Tensor, emb: torch.Tensor | None = None) -> None:
        """Add a batch (the oldest entries leave first); ``emb`` when embeddings are kept."""
        q = self.size
        if q == 0:
            return
        if self.stores_embeddings and emb is None:
            raise ValueError("this queue keeps embeddings: push(gps, emb)")
        gps = gps.detach().to(self.coords.dtype)[-q:]
        n, ptr = len(gps), int(self.ptr)
        idx = (torch.arange(n, device=gps.device) + ptr) % q
        self.coords[idx] = gps
        if self.stores_embeddings and emb is not None:
            self.emb[idx] = F.normalize(emb.detach()[-q:].to(self.emb.dtype), dim=-1)
        self.ptr.fill_((ptr + n) % q)
        self.length.fill_(min(q, int(self.length) + n))

    def keys(
        self, encode: Callable[[torch.Tensor], torch.Tensor], positives: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit embeddings of the positives followed by the queue's, and the positives'.

        ``encode`` maps ``(M, 2)`` GPS to embeddings; it runs on the queued GPS
        only when the queue does not keep their embeddings (trainable encoder).
        """
        pos = F.normalize(encode(positives), dim=-1)
        if len(self) == 0:
            return pos, pos
        if self.stores_embeddings:
            neg = self.queued_embeddings().to(pos.dtype)
        else:
            neg = F.normalize(encode(self.queued_coords()), dim=-1)
        return torch.cat([pos, neg]), pos
