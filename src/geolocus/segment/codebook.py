"""Pseudo-semantic segmentation: a fixed k-means codebook over backbone patch tokens.

Without a scene parser's weights offline, DualGeo's segmentation view is
built from the backbone itself: the L2-normalised patch tokens of training
photos are clustered once by spherical k-means into ``K`` centroids (the
*codebook*); every patch of every photo then gets the id of its most similar
centroid. Because the codebook is fixed after fitting, class ``c`` is the same
kind of region (sky-like, foliage-like, façade-like…) in every photo — what a
semantic segmentation provides — though its classes have no names.

Fitting is deterministic: k-means++ seeding and the token sample are drawn
from a seeded generator, and the classes are numbered by decreasing size on
the fitting sample, so the same tokens and seed give the same codebook.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from geolocus.encoders.image import create_encoder
from geolocus.errors import InputError
from geolocus.modelfile import META_CONFIG, META_MODEL, read_model_file, write_model_file
from geolocus.segment.base import Segmenter

#: ``geolocus.model`` of a codebook file (common format, not a retrieval model).
CODEBOOK_TYPE = "token-codebook"


def _flat_sample(tokens: Any, max_tokens: int, gen: torch.Generator) -> torch.Tensor:
    """Up to ``max_tokens`` rows of ``tokens`` (``(N, T, C)`` or ``(M, C)``, numpy memmap or
    tensor), chosen by ``gen``, as float32 — without loading the rest into memory."""
    shape = tuple(tokens.shape)
    c = shape[-1]
    m = int(np.prod(shape[:-1]))
    if m == 0:
        raise InputError("no tokens to fit a codebook on")
    pick = torch.randperm(m, generator=gen)[: min(m, max_tokens)].sort().values.numpy()
    flat = tokens.reshape(m, c)
    if torch.is_tensor(flat):
        return flat[torch.from_numpy(pick)].float()
    return torch.from_numpy(np.asarray(flat[pick], dtype=np.float32))


def spherical_kmeans(
    x: torch.Tensor, k: int, gen: torch.Generator, iters: int = 30, tol: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on unit vectors by cosine similarity: ``(centroids (k, C), sizes (k,))``.

    k-means++ seeding (on 1 − cos); an emptied cluster is re-seeded with the
    point farthest from its centroid.
    """
    n = len(x)
    if n < k:
        raise InputError(f"cannot fit {k} classes on {n} tokens")
    first = int(torch.randint(n, (1,), generator=gen))
    cent = [x[first]]
    dist = (1.0 - x @ x[first]).clamp_min(0)
    for _ in range(1, k):
        p = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1.0 / n)
        j = int(torch.multinomial(p, 1, generator=gen))
        cent.append(x[j])
        dist = torch.minimum(dist, (1.0 - x @ x[j]).clamp_min(0))
    c = torch.stack(cent)
    prev = None
    for _ in range(iters):
        sim = x @ c.T
        best, lab = sim.max(dim=1)
        sums = torch.zeros_like(c).index_add_(0, lab, x)
        sizes = torch.bincount(lab, minlength=k)
        empty = (sizes == 0).nonzero().flatten()
        for e, far in zip(empty.tolist(), best.argsort()[: len(empty)].tolist(), strict=True):
            sums[e] = x[far]  # re-seed with the worst-fitting points
        c = F.normalize(sums, dim=1)
        obj = float(best.mean())
        if prev is not None and abs(obj - prev) < tol:
            break
        prev = obj
    lab = (x @ c.T).argmax(dim=1)
    return c, torch.bincount(lab, minlength=k)


class TokenCodebook(nn.Module):
    """``K`` unit centroids over a backbone's token space; ``assign`` gives class ids.

    A module with buffers, so that a model holding one (DualGeo) saves it in
    its own file; ``save``/``load`` also write it alone in the common format.
    """

    centroids: torch.Tensor
    is_fitted: torch.Tensor

    def __init__(self, classes: int = 32, dim: int = 1280, backbone: str = "") -> None:
        super().__init__()
        if classes < 2:
            raise InputError("a codebook needs at least 2 classes")
        self.classes, self.dim, self.backbone = int(classes), int(dim), backbone
        self.register_buffer("centroids", torch.zeros(self.classes, self.dim))
        self.register_buffer("is_fitted", torch.zeros((), dtype=torch.bool))

    @property
    def fitted(self) -> bool:
        return bool(self.is_fitted)

    @torch.no_grad()
    def fit(
        self, tokens: Any, seed: int = 0, iters: int = 30, max_tokens: int = 65536
    ) -> TokenCodebook:
        """Fit on ``tokens`` ``(N, T, C)`` or ``(M, C)`` (a sample of ``max_tokens`` of them)."""
        if tokens.shape[-1] != self.dim:
            raise InputError(f"tokens are {tokens.shape[-1]}-d, the codebook {self.dim}-d")
        gen = torch.Generator().manual_seed(seed)
        x = F.normalize(_flat_sample(tokens, max_tokens, gen), dim=1)
        cent, sizes = spherical_kmeans(x, self.classes, gen, iters)
        order = torch.argsort(-sizes.double() + torch.arange(self.classes) * 1e-9)
        self.centroids.copy_(cent[order].to(self.centroids.dtype))
        self.is_fitted.fill_(True)
        return self

    def _check(self, tokens: torch.Tensor) -> None:
        if not self.fitted:
            raise InputError("the codebook is not fitted: call fit(tokens) first")
        if tokens.shape[-1] != self.dim:
            raise InputError(f"tokens are {tokens.shape[-1]}-d, the codebook {self.dim}-d")

    def similarities(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each token to each centroid, ``(..., K)``."""
        self._check(tokens)
        c = self.centroids
        return F.normalize(tokens.to(c.dtype), dim=-1) @ c.T

    @torch.no_grad()
    def assign(self, tokens: Any) -> torch.Tensor:
        """Class id of each token: ``(..., C)`` -> ``(...)`` int64."""
        t = tokens if torch.is_tensor(tokens) else torch.from_numpy(np.array(tokens, np.float32))
        return self.similarities(t.float()).argmax(dim=-1)

    def one_hot(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` tokens -> ``(B, N, K)`` one-hot class map (no gradient)."""
        return F.one_hot(self.assign(tokens), self.classes).to(self.centroids.dtype)

    # -- files ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:

        cfg = {"classes": self.classes, "dim": self.dim, "backbone": self.backbone}
        write_model_file(path, dict(self.state_dict()), CODEBOOK_TYPE, cfg)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TokenCodebook:
        """A codebook from a codebook file or from a model file that holds one (DualGeo)."""
        import json

        meta, tensors = read_model_file(path)
        cfg = json.loads(meta[META_CONFIG])
        prefix = "" if meta[META_MODEL] == CODEBOOK_TYPE else "codebook."
        if f"{prefix}centroids" not in tensors:
            raise InputError(f"{path} holds no token codebook ({meta[META_MODEL]} model)")
        cent = tensors[f"{prefix}centroids"]
        book = cls(cent.shape[0], cent.shape[1], str(cfg.get("backbone", "")))
        book.centroids.copy_(cent)
        book.is_fitted.fill_(bool(tensors.get(f"{prefix}is_fitted", torch.tensor(True))))
        return book


class PseudoSegmenter(Segmenter):
    """Segment photos with a backbone and a fitted :class:`TokenCodebook`.

    The class map is computed per patch token (the backbone's grid, e.g. 9x9
    for EfficientNet-Lite2) and upsampled to the backbone's input crop
    (``output_size``): ``upsample="nearest"`` keeps the patches visible,
    ``"bilinear"`` interpolates the similarity maps before choosing, for
    smoother boundaries in figures. The map covers the backbone's centre crop.
    """

    name = "codebook"

    def __init__(self, encoder: Any, codebook: TokenCodebook, upsample: str = "nearest") -> None:
        if upsample not in ("nearest", "bilinear"):
            raise InputError("upsample must be 'nearest' or 'bilinear'")
        if codebook.dim != encoder.token_dim:
            raise InputError(
                f"codebook is {codebook.dim}-d, {encoder.name}'s tokens {encoder.token_dim}-d"
            )
        self.encoder, self.codebook, self.upsample = encoder, codebook, upsample
        self.num_classes = codebook.classes

    @classmethod
    def create(
        cls,
        codebook: TokenCodebook | str | os.PathLike[str] | None = None,
        encoder: Any = None,
        upsample: str = "nearest",
    ) -> PseudoSegmenter:
        if codebook is None:
            raise InputError("the codebook segmenter needs codebook= (a fitted codebook or file)")
        book = codebook if isinstance(codebook, TokenCodebook) else TokenCodebook.load(codebook)
        if encoder is None or isinstance(encoder, str):
            name = encoder or book.backbone
            if not name:
                raise InputError("name the encoder: the codebook does not record its backbone")
            encoder = create_encoder(name)
        return cls(encoder, book, upsample)

    @property
    def output_size(self) -> tuple[int, int]:
        s = int(self.encoder.image_size)
        return (s, s)

    def fit(self, images: Sequence[Image.Image], seed: int = 0, **kw: Any) -> PseudoSegmenter:
        """Fit the codebook on the tokens of ``images``."""
        self.codebook.fit(self.encoder.encode(images).tokens, seed=seed, **kw)
        return self

    @torch.no_grad()
    def segment_tokens(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, N, C)`` tokens on ``grid`` -> ``(B, h, w)`` class ids at token resolution."""
        return self.codebook.assign(tokens).view(len(tokens), *grid)

    @torch.no_grad()
    def segment(self, images: Sequence[Image.Image]) -> torch.Tensor:
        feats = self.encoder.encode(images)
        b, (h, w) = len(feats.tokens), feats.grid
        size = self.output_size
        if self.upsample == "nearest":
            ids = self.segment_tokens(feats.tokens, feats.grid).view(b, 1, h, w).float()
            return F.interpolate(ids, size=size, mode="nearest").long()[:, 0]
        sim = self.codebook.similarities(feats.tokens.float())  # (B, N, K)
        sim = sim.transpose(1, 2).reshape(b, -1, h, w)
        return F.interpolate(sim, size=size, mode="bilinear", align_corners=False).argmax(1)
