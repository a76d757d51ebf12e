"""PIGEON / PIGEOTTO's geocell classifier (Haas, Skreta, Alberti, Finn, CVPR 2024) as a
head on frozen image features.

- Semantic geocells (:func:`geolocus.geo.cells.semantic_cells`): the training photos'
  administrative areas, areas with fewer than ``min_photos`` photos merged into their
  nearest area, areas with more than ``max_photos`` split by OPTICS clustering of their
  photos. PIGEON intersects the photos with admin-2 boundary polygons; offline there
  are no polygons (and no admin-2 table), so a photo's area is the admin-1 area of its
  nearest GeoNames populated place (:meth:`geolocus.places.Gazetteer.admin_area_of`).
- Haversine label smoothing: the target of a photo over the cells is
  ``t_i ∝ exp(-(d_i - min_j d_j) / τ)`` with ``d_i`` its great-circle distance to cell
  ``i``'s centroid and τ = 65 km (``tau_km``); the loss is the cross-entropy against it.
- Refinement by retrieval inside the best cells: each cell keeps ``prototypes`` location
  clusters of its training photos (spherical k-means on their positions, fitted in
  ``prepare``), each with the mean (unit) image embedding of its photos and their mean
  position. At prediction, among the prototypes of the ``refine_cells`` most probable
  cells, the one maximising ``log p(cell) + cos(image, prototype) / proto_temperature``
  gives the answer — unless it lies more than ``max_refine_km`` from the top cell's
  centroid, when the top cell's centroid is kept. PIGEON clusters with OPTICS and then
  refines further among single training photos; here prototypes are k-means clusters
  (vectorised over all cells: fitted in seconds for a million photos) and the model file
  holds them, not the photos.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geolocus.errors import InputError
from geolocus.geo.cells import semantic_cells
from geolocus.geo.sphere import from_unit, haversine_km, to_unit
from geolocus.models.planet import CellConfig, CellHead
from geolocus.places import Gazetteer

__all__ = ["Pigeon", "PigeonConfig", "fit_prototypes", "haversine_smoothing"]

#: Rows per chunk when summing embeddings into prototypes (memory stays bounded).
_CHUNK = 65536


@dataclass
class PigeonConfig(CellConfig):
    """A PIGEON head (stored with its weights; ``n_cells`` is set by ``prepare``)."""

    min_photos: int = 30  # smaller areas are merged into their nearest area
    max_photos: int = 500  # larger areas are split (OPTICS, then k-means)
    optics_sample: int = 200  # photos of an area OPTICS clusters (0: k-means only; faster)
    tau_km: float = 65.0  # haversine label smoothing temperature (PIGEON: 65 km)
    prototypes: int = 4  # location clusters kept per cell for the refinement (0: none)
    refine_cells: int = 5  # refinement looks inside the top cells (PIGEON: 5)
    max_refine_km: float = 1000.0  # a refinement moving the answer farther is cancelled
    proto_temperature: float = 0.05  # cosine similarity scale against log p(cell)
    seed: int = 0  # OPTICS samples and k-means starts

    def check(self) -> None:
        """Refuse impossible values before anything is built."""
        super().check()
        if self.refine_cells < 1:
            raise InputError(f"refine_cells must be at least 1, got {self.refine_cells}")
        if self.tau_km <= 0 or self.proto_temperature <= 0 or self.max_refine_km < 0:
            raise InputError("tau_km and proto_temperature must be > 0, max_refine_km >= 0")
        if self.prototypes < 0 or self.optics_sample < 0:
            raise InputError("prototypes and optics_sample must be >= 0")


def haversine_smoothing(gps: torch.Tensor, centroids: torch.Tensor, tau_km: float) -> torch.Tensor:
    """PIGEON's soft targets ``(B, C)``: ``t_i ∝ exp(-(d_i - min_j d_j) / τ)``, ``d_i`` the
    great-circle distance in km from each position to cell ``i``'s centroid."""
    g, c = gps.to(torch.float64), centroids.to(device=gps.device, dtype=torch.float64)
    d = haversine_km(g[:, None, 0], g[:, None, 1], c[None, :, 0], c[None, :, 1])
    w = torch.exp(-(d - d.min(dim=1, keepdim=True).values) / tau_km)
    return w / w.sum(dim=1, keepdim=True)


def fit_prototypes(
    labels: np.ndarray,
    gps: np.ndarray,
    embeddings: Any,
    n_cells: int,
    per_cell: int,
    seed: int = 0,
    iters: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``per_cell`` location clusters in each cell (spherical k-means on the positions
    of its photos, all cells at once) and, for each, its mean position, its mean unit image
    embedding (unit length again) and its photo count: ``gps (C·P, 2)``, ``emb (C·P, D)``
    float32, ``count (C·P,)`` (0: an unused slot, in cells of fewer photos than slots).
    ``embeddings`` may be memory-mapped; it is read once, in chunks."""
    labels = np.asarray(labels, dtype=np.int64)
    n, p = len(labels), int(per_cell)
    xyz = to_unit(gps[:, 0], gps[:, 1])
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]
    counts = np.bincount(labels, minlength=n_cells)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    pick = starts[:, None] + (np.arange(p)[None, :] * counts[:, None]) // p
    centres = xyz[order[np.minimum(pick, n - 1)]]  # (C, P, 3); empty cells: ignored
    slot = np.zeros(n, dtype=np.int64)
    sums = np.zeros((n_cells * p, 3))
    for _ in range(iters):
        for s in range(0, n, 4 * _CHUNK):
            part = slice(s, s + 4 * _CHUNK)
            sims = np.einsum("nd,npd->np", xyz[part], centres[labels[part]])
            slot[part] = labels[part] * p + np.argmax(sims, axis=1)
        sums = np.stack([np.bincount(slot, weights=xyz[:, d], minlength=n_cells * p)
                         for d in range(3)], -1)  # fmt: skip
        norm = np.linalg.norm(sums, axis=1, keepdims=True)
        flat = centres.reshape(-1, 3)
        centres = np.where(norm > 1e-12, sums / np.maximum(norm, 1e-12), flat).reshape(-1, p, 3)
    count = np.bincount(slot, minlength=n_cells * p)
    lat, lon = from_unit(sums)
    proto_gps = np.where(count[:, None] > 0, np.column_stack((lat, lon)), 0.0)
    dim = int(embeddings.shape[1])
    emb = torch.zeros(n_cells * p, dim, dtype=torch.float32)
    for s in range(0, n, _CHUNK):
        x = torch.from_numpy(np.asarray(embeddings[s : s + _CHUNK], dtype=np.float32))
        emb.index_add_(0, torch.from_numpy(slot[s : s + _CHUNK]), F.normalize(x, dim=-1))
    emb = F.normalize(emb, dim=-1)  # unused slots stay zero
    return proto_gps, emb.numpy(), count


class Pigeon(CellHead):
    """Semantic geocells, haversine label smoothing, refinement among cell prototypes."""

    model_type = "pigeon"
    config_class = PigeonConfig
    proto_emb: torch.Tensor
    proto_gps: torch.Tensor
    proto_count: torch.Tensor

    def __init__(self, config: PigeonConfig | None = None) -> None:
        super().__init__(config or PigeonConfig())

    def _build_cells(self, n: int) -> None:
        super()._build_cells(n)
        m = n * self.config.prototypes
        self.register_buffer("proto_emb", torch.zeros(m, self.config.embed_dim))
        self.register_buffer("proto_gps", torch.zeros(m, 2, dtype=torch.float64))
        self.register_buffer("proto_count", torch.zeros(m, dtype=torch.int64))

    def prepare(self, data: Any) -> None:
        """Fit the semantic geocells to ``data.gps`` and the prototypes to
        ``data.embeddings``."""
        cfg = self.config
        gps = np.asarray(data.gps, dtype=np.float64)
        if data.embeddings.shape[1] != cfg.embed_dim:
            raise InputError(
                f"training embeddings are {data.embeddings.shape[1]}-d, the model "
                f"takes {cfg.embed_dim}"
            )
        areas = Gazetteer.load(0).admin_area_of(gps[:, 0], gps[:, 1])
        cells = semantic_cells(gps[:, 0], gps[:, 1], areas, cfg.min_photos, cfg.max_photos,
                               optics_sample=cfg.optics_sample, seed=cfg.seed)  # fmt: skip
        self._set_cells(cells.centroids)
        if cfg.prototypes:
            pg, pe, pc = fit_prototypes(
                cells.labels, gps, data.embeddings, len(cells), cfg.prototypes, cfg.seed
            )
            with torch.no_grad():
                self.proto_gps.copy_(torch.from_numpy(pg))
                self.proto_emb.copy_(torch.from_numpy(pe))
                self.proto_count.copy_(torch.from_numpy(pc))

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cross-entropy against the haversine-smoothed target; logs the top-1 accuracy
        against the nearest cell."""
        x = batch["image_emb"].to(self.classifier.weight.device)
        logits = self.logits(x)
        target = haversine_smoothing(batch["gps"].to(logits.device), self.centroids,
                                     self.config.tau_km).to(logits.dtype)  # fmt: skip
        ce = -(target * F.log_softmax(logits, -1)).sum(-1).mean()
        acc = (logits.argmax(-1) == target.argmax(-1)).float().mean()
        return {"loss": ce, "cell_acc": acc.detach()}

    @torch.no_grad()
    def gps_candidates(
        self, embedding: Any, tokens: Any | None = None, k: int = 5
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-k cells, best first, each answering with its prototype most similar to
        the image (its centroid when it has none, or when the prototype lies more than
        ``max_refine_km`` from it); the first answer is chosen among the prototypes of the
        top ``refine_cells`` cells, weighted by their probabilities (PIGEON's refinement),
        and cancelled (the top cell's centroid) beyond ``max_refine_km``."""
        cfg = self.config
        k = max(1, min(int(k), cfg.n_cells))
        top, p, _ = self.top_cells(embedding, max(k, cfg.refine_cells))
        cent = self.cell_centroids()
        coords = cent[top]  # (B, K, 2)
        if cfg.prototypes:
            coords = self._refine(embedding, top, p, coords)
        return coords[:, :k], p[:, :k]

    def _refine(
        self, embedding: Any, top: np.ndarray, p: np.ndarray, coords: np.ndarray
    ) -> np.ndarray:
        cfg = self.config
        x = F.normalize(self._as_input(embedding).float(), dim=-1).cpu().numpy()
        slots = top[..., None] * cfg.prototypes + np.arange(cfg.prototypes)  # (B, K, P)
        idx = torch.from_numpy(slots).to(self.proto_emb.device)
        emb = self.proto_emb[idx].float().cpu().numpy()  # (B, K, P, D)
        sims = np.einsum("bd,bkpd->bkp", x, emb)
        valid = self.proto_count[idx].cpu().numpy() > 0
        sims = np.where(valid, sims, -np.inf)
        pg = self.proto_gps[idx].cpu().numpy()  # (B, K, P, 2)
        b = np.arange(len(top))[:, None]
        kk = np.arange(top.shape[1])[None, :]
        # each cell's own best prototype, kept when within max_refine_km of its centroid
        best = np.argmax(sims, axis=2)
        own = pg[b, kk, best]
        ok = valid.any(axis=2) & (
            haversine_km(own[..., 0], own[..., 1], coords[..., 0], coords[..., 1])
            <= cfg.max_refine_km
        )
        out = np.where(ok[..., None], own, coords)
        # the first answer: among the top refine_cells cells, weighted by p(cell)
        r = min(cfg.refine_cells, top.shape[1])
        with np.errstate(divide="ignore"):
            score = np.log(p[:, :r, None]) + sims[:, :r] / cfg.proto_temperature
        flat = score.reshape(len(top), -1).argmax(axis=1)
        ci, pi = np.unravel_index(flat, (r, cfg.prototypes))
        first = pg[np.arange(len(top)), ci, pi]
        found = np.isfinite(score.reshape(len(top), -1).max(axis=1))
        near = haversine_km(first[:, 0], first[:, 1], coords[:, 0, 0], coords[:, 0, 1])
        keep = found & (near <= cfg.max_refine_km)
        out[:, 0] = np.where(keep[:, None], first, coords[:, 0])
        return out
