"""A GPS gallery: candidate coordinates whose location embeddings are computed once.

GeoCLIP predicts by comparing an image embedding with the embeddings of a
gallery of 100,000 GPS coordinates. ``geoclip`` 1.3.0 re-encodes the whole
gallery on every ``predict`` call; here it is encoded once and cached on disk
(:func:`geolocus.files.cache_dir`), keyed by a hash of the
encoder's weights and of the coordinates, written atomically and read back
memory-mapped, so later runs and processes start searching at once.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geolocus.encoders.location.geoclip import GeoCLIPLocationEncoder
from geolocus.encoders.location.pretrained import GPS_GALLERY, LOGIT_SCALE
from geolocus.errors import InputError
from geolocus.files import atomic_path
from geolocus.files import cache_dir as user_cache_dir
from geolocus.geo import validate_latlon
from geolocus.nn import eval_mode
from geolocus.weights import require

#: Bump when the cached file layout or the encoding procedure changes.
_FORMAT = "geolocus-gps-gallery-1"
#: CLIP's initial temperature, used when no logit scale is given.
DEFAULT_LOGIT_SCALE = 1.0 / 0.07


def fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's class and state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _coords_hash(coords: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(coords, dtype=np.float64).tobytes()).hexdigest()


def load_geoclip_coords() -> np.ndarray:
    """GeoCLIP's 100K gallery coordinates, ``(100000, 2)`` float64 (lat, lon)."""
    import pandas as pd

    df = pd.read_csv(require(GPS_GALLERY), usecols=["LAT", "LON"], dtype=np.float64)
    return df[["LAT", "LON"]].to_numpy()


def load_geoclip_logit_scale() -> float:
    """exp of GeoCLIP's learned logit scale (≈ 39.69)."""

    t = torch.load(require(LOGIT_SCALE), map_location="cpu", weights_only=True)
    return float(torch.as_tensor(t).exp())


@torch.no_grad()
def encode_locations(
    encoder: nn.Module,
    coords: np.ndarray,
    batch_size: int = 4096,
    progress: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """L2-normalised ``(N, D)`` float32 embeddings of ``coords``, in chunks (eval mode)."""
    if getattr(encoder, "batch_dependent", False):
        raise InputError(
            "this location encoder makes each embedding depend on its batch "
            "(context='batch'): it cannot encode a gallery; use context='anchors'"
        )
    with eval_mode(encoder):
        param = next(encoder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        n = len(coords)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="encoding GPS gallery", unit="loc", leave=False)
        for i in range(0, n, batch_size):
            c = torch.as_tensor(np.asarray(coords[i : i + batch_size]), device=device)
            e = nn.functional.normalize(encoder(c).float(), dim=-1).cpu().numpy()
            if out is None:
                out = np.empty((n, e.shape[1]), dtype=np.float32)
            out[i : i + len(e)] = e
            if bar is not None:
                bar.update(len(e))
        if bar is not None:
            bar.close()
    if out is None:
        raise InputError("the GPS gallery is empty")
    return out


class GPSGallery:
    """Candidate coordinates ``(N, 2)`` and their unit location embeddings ``(N, D)``.

    ``search(query_emb, k)`` scores every candidate as GeoCLIP does: softmax over
    ``logit_scale · cos(query, location)``, returning the k most probable.
    """

    def __init__(
        self,
        coords: np.ndarray,
        embeddings: np.ndarray,
        logit_scale: float = DEFAULT_LOGIT_SCALE,
        encoder_fingerprint: str | None = None,
        path: Path | None = None,
    ) -> None:
        coords = np.asarray(coords, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(embeddings):
            raise InputError(
                f"gallery coordinates {coords.shape} and embeddings {embeddings.shape} do not match"
            )
        self.coords = coords
        self.embeddings = embeddings
        self.logit_scale = float(logit_scale)
        self.encoder_fingerprint = encoder_fingerprint
        self.path = path

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def build(
        cls,
        encoder: nn.Module,
        coords: Any,
        logit_scale: float = DEFAULT_LOGIT_SCALE,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 4096,
        progress: bool = True,
    ) -> GPSGallery:
        """Encode ``coords`` with ``encoder``, or load the cached encoding of the same pair."""
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        if len(coords) == 0:
            raise InputError("the GPS gallery is empty")
        validate_latlon(coords[:, 0], coords[:, 1], what="gallery coordinates")
        fp = fingerprint(encoder)
        if not cache:
            emb = encode_locations(encoder, coords, batch_size, progress)
            return cls(coords, emb, logit_scale, fp)
        key = hashlib.sha256(f"{_FORMAT}|{fp}|{_coords_hash(coords)}".encode()).hexdigest()[:24]
        path = Path(cache_dir) if cache_dir is not None else user_cache_dir("galleries")
        path = path / f"gallery-{key}.npy"
        cached = _load_cached(path, len(coords))
        if cached is None:
            dim = _probe_dim(encoder, coords)
            try:
                with atomic_path(path) as tmp:
                    # write straight into a memory-mapped .npy: no second copy in RAM
                    mm = np.lib.format.open_memmap(
                        tmp, mode="w+", dtype=np.float32, shape=(len(coords), dim)
                    )
                    encode_locations(encoder, coords, batch_size, progress, out=mm)
                    mm.flush()
                    del mm
            except OSError as e:  # read-only or full cache folder: work without the cache
                warnings.warn(f"GPS gallery not cached ({e}); encoding in memory", stacklevel=2)
                emb = encode_locations(encoder, coords, batch_size, progress)
                return cls(coords, emb, logit_scale, fp)
            cached = _load_cached(path, len(coords))
            if cached is None:  # pragma: no cover - the file was just written
                raise InputError(f"could not read back the gallery cache {path}")
        return cls(coords, cached, logit_scale, fp, path)

    @classmethod
    def geoclip(
        cls,
        encoder: nn.Module | None = None,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> GPSGallery:
        """GeoCLIP's 100K gallery, encoded with ``encoder`` (default: GeoCLIP's pretrained
        location encoder), with GeoCLIP's learned logit scale."""
        if encoder is None:
            encoder = GeoCLIPLocationEncoder.from_pretrained()
        return cls.build(
            encoder,
            load_geoclip_coords(),
            logit_scale=load_geoclip_logit_scale(),
            cache=cache,
            cache_dir=cache_dir,
            progress=progress,
        )

    def scores(self, query_emb: Any) -> np.ndarray:
        """``(B, N)`` cosine similarities between queries and every gallery location."""
        q = query_emb.detach().cpu().float().numpy() if torch.is_tensor(query_emb) else query_emb
        q = np.asarray(q, dtype=np.float32)
        q = q.reshape(1, -1) if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InputError(f"query embeddings must be (B, {self.dim}), got {q.shape}")
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        return q @ self.embeddings.T

    def probabilities(self, query_emb: Any, logit_scale: float | None = None) -> np.ndarray:
        """``(B, N)`` GeoCLIP's distribution over every gallery location: softmax of
        ``logit_scale · cos(query, location)`` (the heatmap of an answer)."""
        scale = self.logit_scale if logit_scale is None else float(logit_scale)
        logits = scale * self.scores(query_emb)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return p

    def top(self, probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most probable locations of :meth:`probabilities`' rows: ``coords (B, k,
        2)`` and ``probs (B, k)``, most probable first."""
        return top_k(self.coords, probs, k)

    def search(
        self, query_emb: Any, k: int = 5, logit_scale: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k locations per query: ``coords (B, k, 2)`` and ``probs (B, k)``.

        ``probs`` is the softmax over the *whole* gallery (as GeoCLIP), so it
        sums to less than 1 over the k returned, most probable first.
        """
        if not 1 <= k <= len(self):
            raise InputError(f"k must be between 1 and {len(self)}, got {k}")
        return self.top(self.probabilities(query_emb, logit_scale), k)


def top_k(coords: np.ndarray, probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable of ``coords (N, 2)`` for each row of ``probs (B, N)``:
    ``coords (B, k, 2)`` and ``probs (B, k)``, most probable first."""
    n = probs.shape[1]
    if not 1 <= k <= n:
        raise InputError(f"k must be between 1 and {n}, got {k}")
    idx = top_indices(probs, k)
    return coords[idx], np.take_along_axis(probs, idx, axis=1)


def top_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` (1 ≤ k ≤ row length) largest entries of each row, largest
    first: a partial sort, so a hundred thousand places cost little."""
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(probs, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _probe_dim(encoder: nn.Module, coords: np.ndarray) -> int:
    dim = getattr(encoder, "dim", None)
    if isinstance(dim, int):
        return dim
    with torch.no_grad(), eval_mode(encoder):
        param = next(encoder.parameters(), None)
        dev = param.device if param is not None else None
        return int(encoder(torch.as_tensor(coords[:1], device=dev)).shape[-1])


def _load_cached(path: Path, n: int) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        emb = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return None  # unreadable: re-encode (the atomic rename replaces it)
    if emb.ndim != 2 or emb.shape[0] != n or emb.dtype != np.float32:
        return None
    return emb
