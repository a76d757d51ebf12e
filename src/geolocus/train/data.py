"""Training data for the heads: frozen backbone features, GPS labels, place sentences.

Backbone features are computed once per (backbone, photo list) with
:func:`geolocus.encoders.features.extract_features` and memory-mapped from
disk, so an epoch on a CPU costs only the heads. TransGeoCLIP's text view
("A photo taken in {city}, {region}, {country}.") depends only on the labels:
its MiniLM embeddings are computed once and cached too
(:func:`place_text_embeddings`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from geolocus.data.im2gps3k import photographer
from geolocus.data.tables import read_coords
from geolocus.encoders.features import FeatureStore, cache_dir, extract_features, feature_key
from geolocus.encoders.image import create_encoder
from geolocus.encoders.image.base import file_identity
from geolocus.encoders.text import MINILM, TextEncoder
from geolocus.errors import InputError
from geolocus.eval.folds import grouped_folds
from geolocus.files import atomic_path
from geolocus.files import cache_dir as user_cache_dir
from geolocus.places import describe
from geolocus.train.loop import minibatches, steps
from geolocus.weights import require

if TYPE_CHECKING:
    from geolocus.encoders.features import TokensMode


@dataclass
class TrainingSet:
    """Aligned per-photo arrays: ``embeddings`` ``(N, D)``, optional ``tokens`` ``(N, T, C)``
    and ``text`` ``(N, 384)``, and ``gps`` ``(N, 2)`` (lat, lon); arrays may be memory-mapped."""

    ids: list[str]
    gps: np.ndarray
    embeddings: np.ndarray
    tokens: np.ndarray | None = None
    text: np.ndarray | None = None
    backbone: str = ""

    def __post_init__(self) -> None:
        n = len(self.ids)
        self.gps = np.asarray(self.gps, dtype=np.float64).reshape(-1, 2)
        for name in ("gps", "embeddings", "tokens", "text"):
            a = getattr(self, name)
            if a is not None and len(a) != n:
                raise InputError(f"training set: {name} has {len(a)} rows for {n} photos")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: Sequence[int] | np.ndarray) -> TrainingSet:
        """The photos at ``rows``, read into memory."""
        rows = np.asarray(rows, dtype=np.int64)
        take = lambda a: None if a is None else np.asarray(a[rows])  # noqa: E731
        return replace(
            self,
            ids=[self.ids[i] for i in rows],
            gps=self.gps[rows],
            embeddings=np.asarray(self.embeddings[rows]),
            tokens=take(self.tokens),
            text=take(self.text),
        )

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """One batch as float32 tensors (rows sorted: memory-mapped reads stay sequential)."""
        rows = np.sort(np.asarray(rows))
        out = {
            "image_emb": torch.from_numpy(np.asarray(self.embeddings[rows], dtype=np.float32)),
            "gps": torch.from_numpy(self.gps[rows].astype(np.float32)),
        }
        if self.tokens is not None:
            out["tokens"] = torch.from_numpy(np.asarray(self.tokens[rows], dtype=np.float32))
        if self.text is not None:
            out["text_emb"] = torch.from_numpy(np.asarray(self.text[rows], dtype=np.float32))
        return out

    def batches(
        self, batch_size: int, seed: int = 0, drop_last: bool = False
    ) -> Callable[[int], Iterator[dict[str, torch.Tensor]]]:
        """``epoch -> batches`` for :func:`geolocus.train.fit` (shuffled from (seed, epoch))."""
        if len(self) == 0:
            raise InputError("the training set is empty")

        def gen(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
            for rows in minibatches(len(self), batch_size, epoch, seed, drop_last):
                yield self.batch(rows)

        return gen

    def steps(self, batch_size: int, drop_last: bool = False) -> int:
        return steps(len(self), batch_size, drop_last)


# ------------------------------------------------------------------------- text view


def place_sentences(gps: np.ndarray) -> list[str]:
    """TransGeoCLIP's sentence for each (lat, lon), from the offline gazetteer."""

    gps = np.asarray(gps, dtype=np.float64).reshape(-1, 2)
    out = describe(gps[:, 0], gps[:, 1])
    return [out] if isinstance(out, str) else list(out)


def place_text_embeddings(
    gps: np.ndarray,
    encoder: str = "all-minilm-l6-v2",
    cache: bool = True,
    progress: bool = True,
) -> np.ndarray:
    """``(N, 384)`` float32 MiniLM embeddings of the place sentences of ``gps``.

    Only distinct sentences are encoded (photos of one city share one); the
    result is cached in the user cache folder under a hash of the encoder's
    weights and the sentences, so later runs read it back at once.
    """

    if encoder != MINILM:
        raise InputError(f"unknown text encoder {encoder!r}; the offline one is {MINILM!r}")
    sentences = place_sentences(gps)
    uniq, inverse = np.unique(np.asarray(sentences, dtype=object), return_inverse=True)
    h = hashlib.sha256(f"{encoder}|{file_identity(require(MINILM))}".encode())
    for s in uniq:
        h.update(s.encode() + b"\n")
    path = user_cache_dir("text") / f"{encoder}-{h.hexdigest()[:24]}.npy"
    emb = None
    if cache and path.is_file():
        try:
            emb = np.load(path)
        except (OSError, ValueError):
            emb = None
        if emb is not None and emb.shape[0] != len(uniq):
            emb = None
    if emb is None:
        if progress:
            print(f"encoding {len(uniq)} place sentences with {encoder}", file=sys.stderr)
        with torch.inference_mode():
            emb = TextEncoder().encode(list(uniq), batch_size=128).float().numpy()
        if cache:
            try:
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, emb)
            except OSError as e:
                warnings.warn(f"text embeddings not cached ({e})", stacklevel=2)
    return np.ascontiguousarray(emb[inverse], dtype=np.float32)


# ------------------------------------------------------------------------- features


def open_or_extract(
    backbone: str,
    paths: Sequence[str],
    ids: Sequence[str],
    cache_root: str | os.PathLike[str],
    tag: str,
    tokens: bool,
    progress: bool = True,
):
    """The feature store of ``paths`` under ``cache_root``: reused when a complete store of
    the same photos exists (one with full tokens serves a request without tokens too),
    extracted otherwise (resumable)."""
    import contextlib

    enc = create_encoder(backbone)
    out = cache_dir(cache_root, enc, tag)
    modes: list[TokensMode] = ["full"] if tokens else [False, "full"]
    for mode in modes:
        key = feature_key(enc.fingerprint(), mode, 4, "float16", ids, paths)
        with contextlib.suppress(InputError, OSError, ValueError):
            return FeatureStore.open(out, key=key)
    return extract_features(
        enc,
        paths,
        out,
        ids=ids,
        tokens="full" if tokens else False,
        batch_size=16,
        progress=progress,
    )


def load_training_set(
    *,
    backbone: str,
    labels: str | os.PathLike[str],
    images: str | os.PathLike[str] | None = None,
    features: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] = "cache/features",
    tokens: bool = False,
    text: str | None = None,
    folds: int = 0,
    holdout: int | None = None,
    progress: bool = True,
) -> TrainingSet:
    """Photos of a labels CSV (``IMG_ID,LAT,LON``) with their frozen features.

    Features come from ``features`` (a feature-store folder of ``backbone``)
    or are extracted from the ``images`` folder (``images/IMG_ID``) into
    ``cache``. With ``folds`` and ``holdout``, the photographer-grouped fold
    ``holdout`` of :func:`geolocus.eval.folds.grouped_folds` (by photographer) is left out.
    ``text`` names a text encoder: the place sentences' embeddings are added.
    """

    lab = read_coords(labels, "labels")
    ids = [str(i) for i in lab["IMG_ID"].tolist()]
    gps = lab[["LAT", "LON"]].to_numpy(dtype=np.float64)
    if features is not None:
        store = FeatureStore.open(features)
        if store.meta.get("encoder") != backbone:
            raise InputError(
                f"{features} holds {store.meta.get('encoder')} features, the model takes {backbone}"
            )
        if tokens and store.tokens is None:
            raise InputError(f"{features} has no patch tokens; this model needs them")
    elif images is not None:
        root = Path(images).resolve()
        if not root.is_dir():
            raise InputError(f"images folder not found: {images}")
        paths = [str(root / i) for i in ids]
        tag = Path(labels).resolve().parent.name
        store = open_or_extract(backbone, paths, ids, cache, tag, tokens, progress)
    else:
        raise InputError("the data section needs `features` (a feature store) or `images`")
    have = set(store.ids)
    keep = np.array([i in have for i in ids])
    if not keep.any():
        raise InputError("no photo of the labels has features (ids differ?)")
    if not keep.all() and progress:
        print(f"{int((~keep).sum())} labelled photos have no features: left out", file=sys.stderr)
    if folds and holdout is not None:
        if not 0 <= holdout < folds:
            raise InputError(f"holdout must be in [0, {folds}), got {holdout}")
        keep &= grouped_folds(ids, folds, group=photographer) != holdout
    ids = [i for i, k in zip(ids, keep, strict=True) if k]
    rows = store.rows(ids)
    emb_text = place_text_embeddings(gps[keep], text, progress=progress) if text else None
    if np.array_equal(rows, np.arange(len(store))):  # the whole store: stay memory-mapped
        emb, tok = store.embeddings, store.tokens if tokens else None
    else:  # a subset: read into memory once (random access to memmaps is slow)
        emb = np.asarray(store.embeddings[rows])
        tok = np.asarray(store.tokens[rows]) if tokens and store.tokens is not None else None
    return TrainingSet(
        ids=ids, gps=gps[keep], embeddings=emb, tokens=tok, text=emb_text, backbone=backbone
    )
