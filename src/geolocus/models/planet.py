"""Classification over cells of the Earth: PlaNet (Weyand et al., ECCV 2016) and the
OSV-5M hybrid baseline (Astruc et al., CVPR 2024), as heads on frozen image features.

``planet``: an MLP (one hidden layer) maps the backbone embedding to a softmax over
adaptive cells (:func:`geolocus.geo.cells.adaptive_cells`: S2-like quadtree cells split
where photos are dense, between ``min_photos`` and ``max_photos`` photos per cell),
trained with cross-entropy; a cell answers with the mean position of its training
photos. PlaNet itself fine-tunes an Inception network end to end on 126 M photos
(t_min 50, t_max 10 000 photos per cell, 26 263 cells); here the backbone is frozen.

``hybrid``: the same cells plus, for every cell, a regression of where inside the
cell the photo is: the offset of the true position from the cell's centroid in the
centroid's tangent plane (east, north), divided by the cell's size (the RMS distance
of its training photos from the centroid). The loss is cross-entropy plus a Huber
loss on the true cell's offset; the answer is each top cell's centroid moved by its
predicted offset.

Fitted in :meth:`CellHead.prepare` and saved in the model file as buffers: the cells'
leaf-key ranges, centroids and sizes; ``n_cells`` goes into the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geolocus.errors import InputError, NotFittedError
from geolocus.geo.cells import AdaptiveCells, adaptive_cells, cell_spread_km
from geolocus.geo.sphere import local_offset_km, offset_position
from geolocus.models.base import GeoModel, ModelConfig
from geolocus.models.gallery import top_indices
from geolocus.nn import eval_mode

__all__ = ["CellConfig", "CellHead", "Hybrid", "HybridConfig", "PlaNet", "PlaNetConfig"]

#: Smallest cell size used to normalise offsets (a cell of photos at one spot has none).
MIN_CELL_SCALE_KM = 1.0


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row, largest first (``k`` capped at the
    row length); a partial sort, so ten thousand cells cost little."""
    return top_indices(probs, max(1, min(int(k), probs.shape[1])))


@dataclass
class CellConfig(ModelConfig):
    """What every head that classifies over fitted cells has (PlaNet, the hybrid,
    PIGEON): the backbone it reads, the MLP, the cells' photo bounds, their number."""

    backbone: str = "efficientnet-lite0"
    embed_dim: int = 1280  # size of the backbone embedding
    hidden_dim: int = 512  # the MLP's hidden layer (also the retrieval vector)
    dropout: float = 0.1
    min_photos: int = 50  # cells with fewer training photos are dropped or merged
    max_photos: int = 1000  # cells with more are split
    n_cells: int = 0  # fitted: number of cells

    def check(self) -> None:
        """Refuse impossible values before anything is built."""
        for name in ("embed_dim", "hidden_dim", "min_photos", "max_photos"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.min_photos > self.max_photos:
            raise InputError(
                f"min_photos ({self.min_photos}) must not exceed max_photos ({self.max_photos})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_cells < 0:
            raise InputError(f"n_cells must be >= 0, got {self.n_cells}")


@dataclass
class PlaNetConfig(CellConfig):
    """A PlaNet head (stored with its weights; ``n_cells`` is set by ``prepare``).
    PlaNet's bounds: 50 photos at least (as here); 10 000 at most for 126 M photos."""

    start_level: int = 0  # the coarse partition split from (0: the six cube faces)


class CellHead(GeoModel):
    """An MLP over the image embedding and a softmax over ``n_cells`` cells with centroids;
    the shared part of ``planet``, ``hybrid`` and ``pigeon``. Subclasses fit the cells in
    :meth:`prepare` (calling :meth:`_set_cells`) and define :meth:`loss`."""

    needs_tokens = False
    #: Config fields that :meth:`prepare` fills from the data.
    fitted_fields: ClassVar[tuple[str, ...]] = ("n_cells",)
    centroids: torch.Tensor

    def __init__(self, config: Any) -> None:
        super().__init__()
        config.check()
        self.config = config
        self.trunk = nn.Sequential(
            nn.Linear(config.embed_dim, config.hidden_dim), nn.ReLU(), nn.Dropout(config.dropout)
        )
        self._build_cells(config.n_cells)

    def _build_cells(self, n: int) -> None:
        """The output layer and the per-cell buffers for ``n`` cells (empty until fitted)."""
        self.classifier = nn.Linear(self.config.hidden_dim, max(n, 1))
        self.register_buffer("centroids", torch.zeros(n, 2, dtype=torch.float64))

    def _set_cells(self, centroids: np.ndarray) -> None:
        """Rebuild the output for the fitted cells (``prepare`` runs before the optimiser is
        made, so the new layers are trained)."""
        n = len(centroids)
        self.config.n_cells = n
        dev = next(self.trunk.parameters()).device
        self._build_cells(n)
        self.to(dev)
        with torch.no_grad():
            self.centroids.copy_(torch.from_numpy(np.asarray(centroids, dtype=np.float64)))

    def _require_cells(self) -> None:
        if self.config.n_cells == 0:
            raise NotFittedError(f"the {self.model_type} head has no cells yet: call prepare")

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.config.embed_dim:
            raise InputError(
                f"image embeddings must be (B, {self.config.embed_dim}), got {tuple(x.shape)}"
            )

    def features(self, embedding: torch.Tensor) -> torch.Tensor:
        """The hidden representation ``(B, hidden_dim)``."""
        self._check(embedding)
        return self.trunk(embedding.to(self.classifier.weight.dtype))

    def logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """``(B, n_cells)`` cell logits."""
        self._require_cells()
        return self.classifier(self.features(embedding))

    # -- the retrieval contract -----------------------------------------------------------------

    @property
    def retrieval_dim(self) -> int:
        return int(self.config.hidden_dim)

    @torch.no_grad()
    def embed_image(self, embedding: Any, tokens: Any | None = None) -> torch.Tensor:
        """The hidden layer, L2-normalised: what a retrieval database stores."""
        with eval_mode(self):
            return F.normalize(self.features(self._as_input(embedding)), dim=-1)

    # -- prediction -----------------------------------------------------------------------------

    @torch.no_grad()
    def cell_probabilities(self, embedding: Any) -> np.ndarray:
        """``(B, n_cells)`` softmax over the cells."""
        with eval_mode(self):
            return torch.softmax(self.logits(self._as_input(embedding)).float(), -1).cpu().numpy()

    def cell_centroids(self) -> np.ndarray:
        """``(n_cells, 2)`` (lat, lon) of the cells' answers."""
        return self.centroids.detach().cpu().numpy().astype(np.float64)

    def gps_distribution(
        self, embedding: Any, tokens: Any | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every cell's probability at its centroid: ``coords (n_cells, 2)``, ``probs (B,
        n_cells)``."""
        return self.cell_centroids(), self.cell_probabilities(embedding)

    def top_cells(self, embedding: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k cells per image, best first: ``cells (B, k)``, ``probs (B, k)`` and all
        probabilities ``(B, n_cells)`` (k is capped at the number of cells)."""
        probs = self.cell_probabilities(embedding)
        top = top_k(probs, k)
        return top, np.take_along_axis(probs, top, 1), probs

    def gps_candidates(
        self, embedding: Any, tokens: Any | None = None, k: int = 5
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-k cells' centroids, best first: ``coords (B, k, 2)``, ``probs (B, k)``."""
        top, p, _ = self.top_cells(embedding, k)
        return self.cell_centroids()[top], p


class PlaNet(CellHead):
    """PlaNet: softmax over adaptive cells, cross-entropy, the cell's mean position."""

    model_type = "planet"
    config_class = PlaNetConfig
    cell_lo: torch.Tensor
    cell_hi: torch.Tensor

    def __init__(self, config: PlaNetConfig | None = None) -> None:
        super().__init__(config or self.config_class())
        self._cells_cache: tuple[tuple, AdaptiveCells] | None = None

    def _build_cells(self, n: int) -> None:
        super()._build_cells(n)
        self.register_buffer("cell_lo", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("cell_hi", torch.zeros(n, dtype=torch.int64))

    def prepare(self, data: Any) -> None:
        """Fit the adaptive cells to the training photos ``data.gps``."""
        gps = np.asarray(data.gps, dtype=np.float64)
        cfg = self.config
        cells = adaptive_cells(gps[:, 0], gps[:, 1], cfg.min_photos, cfg.max_photos,
                               start_level=cfg.start_level)  # fmt: skip
        self._set_cells(cells.centroids)
        with torch.no_grad():
            self.cell_lo.copy_(torch.from_numpy(cells.lo))
            self.cell_hi.copy_(torch.from_numpy(cells.hi))
        self._after_cells(cells, gps)

    def _after_cells(self, cells: AdaptiveCells, gps: np.ndarray) -> None:
        """Hook for what else is fitted from the cells (the hybrid's cell sizes)."""

    def cells(self) -> AdaptiveCells:
        """The fitted cells (rebuilt from the buffers when they change, e.g. on loading)."""
        self._require_cells()
        key = tuple(
            (t._version, t.data_ptr()) for t in (self.cell_lo, self.cell_hi, self.centroids)
        )
        if self._cells_cache is None or self._cells_cache[0] != key:
            cells = AdaptiveCells(
                self.cell_lo.cpu().numpy(),
                self.cell_hi.cpu().numpy(),
                self.cell_centroids(),
                np.zeros(len(self.cell_lo), dtype=np.int64),
            )
            self._cells_cache = (key, cells)
        return self._cells_cache[1]

    def assign(self, gps: torch.Tensor) -> torch.Tensor:
        """The cell of each (lat, lon) row, as a long tensor on the model's device."""
        g = gps.detach().cpu().double().numpy()
        return torch.from_numpy(self.cells().assign(g[:, 0], g[:, 1])).to(gps.device)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cross-entropy of the true cell; also logs the top-1 cell accuracy."""
        x, gps = batch["image_emb"], batch["gps"]
        target = self.assign(gps)
        logits = self.logits(x.to(self.classifier.weight.device))
        ce = F.cross_entropy(logits, target.to(logits.device))
        acc = (logits.argmax(-1) == target.to(logits.device)).float().mean()
        return {"loss": ce, "cell_acc": acc.detach()}


@dataclass
class HybridConfig(PlaNetConfig):
    """The OSV-5M hybrid head: PlaNet's cells plus a per-cell offset regression."""

    offset_weight: float = 1.0  # weight of the offset loss beside the cross-entropy
    offset_clip: float = 4.0  # offsets (in cell sizes) are clipped to ±this in the loss

    def check(self) -> None:
        super().check()
        if self.offset_weight < 0 or self.offset_clip <= 0:
            raise InputError("offset_weight must be >= 0 and offset_clip > 0")


class Hybrid(PlaNet):
    """Classification over PlaNet's cells + regression of the position inside the cell."""

    model_type = "hybrid"
    config_class = HybridConfig
    cell_scale_km: torch.Tensor

    def _build_cells(self, n: int) -> None:
        super()._build_cells(n)
        self.offsets = nn.Linear(self.config.hidden_dim, 2 * max(n, 1))
        self.register_buffer("cell_scale_km", torch.ones(n, dtype=torch.float64))

    def _after_cells(self, cells: AdaptiveCells, gps: np.ndarray) -> None:
        labels = cells.assign(gps[:, 0], gps[:, 1])
        scale = cell_spread_km(gps[:, 0], gps[:, 1], labels, cells.centroids)
        with torch.no_grad():
            self.cell_scale_km.copy_(torch.from_numpy(np.maximum(scale, MIN_CELL_SCALE_KM)))

    def offset_targets(self, gps: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """``(B, 2)`` (east, north) of each position from its cell's centroid, in cell sizes."""
        c = self.cell_centroids()[cells]
        east, north = local_offset_km(c[:, 0], c[:, 1], gps[:, 0], gps[:, 1])
        scale = self.cell_scale_km.cpu().numpy()[cells]
        return np.column_stack((east, north)) / scale[:, None]

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cross-entropy of the true cell + ``offset_weight`` × Huber loss of its offset."""
        x, gps = batch["image_emb"], batch["gps"]
        target = self.assign(gps)
        h = self.features(x.to(self.classifier.weight.device))
        logits = self.classifier(h)
        tgt = target.to(logits.device)
        ce = F.cross_entropy(logits, tgt)
        off = self.offsets(h).view(len(h), -1, 2)[torch.arange(len(h), device=h.device), tgt]
        want = self.offset_targets(gps.detach().cpu().double().numpy(), target.cpu().numpy())
        clip = self.config.offset_clip
        want_t = torch.from_numpy(np.clip(want, -clip, clip)).to(off.device, off.dtype)
        reg = F.smooth_l1_loss(off, want_t)
        acc = (logits.argmax(-1) == tgt).float().mean()
        return {
            "loss": ce + self.config.offset_weight * reg,
            "ce": ce.detach(),
            "offset": reg.detach(),
            "cell_acc": acc.detach(),
        }

    @torch.no_grad()
    def gps_candidates(
        self, embedding: Any, tokens: Any | None = None, k: int = 5
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-k cells' centroids moved by their predicted offsets, best first."""
        self._require_cells()
        with eval_mode(self):
            h = self.features(self._as_input(embedding))
            probs = torch.softmax(self.classifier(h).float(), -1).cpu().numpy()
            off = self.offsets(h).view(len(h), -1, 2).double().cpu().numpy()
        top = top_k(probs, k)
        o = np.take_along_axis(off, top[..., None], 1)  # (B, k, 2) in cell sizes
        scale = self.cell_scale_km.cpu().numpy()[top]
        c = self.cell_centroids()[top]
        lat, lon = offset_position(c[..., 0], c[..., 1], o[..., 0] * scale, o[..., 1] * scale)
        return np.stack((lat, lon), -1), np.take_along_axis(probs, top, 1)
