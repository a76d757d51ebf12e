"""The image-encoder interface: photos in, a global embedding and patch tokens out.

Every backbone, whatever runs it (PyTorch, ONNX Runtime, ``transformers``),
answers the same calls: :meth:`ImageEncoder.preprocess` turns Pillow images into
a ``(B, 3, S, S)`` float tensor with Pillow and numpy only (no torchvision),
``forward`` maps that tensor to :class:`ImageFeatures`, and
:meth:`ImageEncoder.encode` does both without gradients.

Embeddings are returned **unnormalised**: callers that compare them by cosine
similarity (the retrieval index, the benchmark) L2-normalise them themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from geolocus.data.images import to_rgb
from geolocus.files import sha256_file
from geolocus.nn import eval_mode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: TensorFlow EfficientNet-Lite: (x - 127) / 128 on 0..255 pixels.
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, crop the centre ``size`` square, normalise.

    The usual evaluation transform of ImageNet-trained backbones; its
    :meth:`key` enters the feature-cache key, so any change invalidates caches.
    """

    size: int
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def image(self, im: Image.Image) -> np.ndarray:
        """One image as a ``(3, size, size)`` float32 array."""
        im = to_rgb(im)
        w, h = im.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        if (nw, nh) != (w, h):
            # reducing_gap: shrink by an integer factor first (fast box filter), then resample
            im = im.resize((nw, nh), _RESAMPLE[self.interpolation], reducing_gap=3.0)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        im = im.crop((left, top, left + self.size, top + self.size))
        a = np.asarray(im, dtype=np.float32) * (1.0 / 255.0)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        a = (a - mean) / std
        return np.ascontiguousarray(a.transpose(2, 0, 1))

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if len(images) == 0:
            return torch.empty(0, 3, self.size, self.size)
        return torch.from_numpy(np.stack([self.image(im) for im in images]))


@dataclass
class ImageFeatures:
    """What a backbone sees in a batch of photos.

    ``embedding`` is ``(B, dim)``, one global vector per photo (for retrieval);
    ``tokens`` is ``(B, N, token_dim)``, one vector per patch or feature-map
    cell in row-major order over ``grid = (h, w)``, ``N = h * w`` (for
    cross-attention and pseudo-segmentation).
    """

    embedding: torch.Tensor
    tokens: torch.Tensor
    grid: tuple[int, int]


class ImageEncoder(nn.Module):
    """Base class of image backbones (see the module docstring)."""

    name: str
    dim: int
    token_dim: int
    image_size: int
    preprocessing: Preprocessing
    #: Identity of the weights (content hash, hub revision, or "random-…"): a cache key part.
    weights_id: str
    #: How ``embedding`` is made from the network's outputs (part of the cache key).
    pooling: str = ""

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Pillow images to the ``(B, 3, S, S)`` float tensor :meth:`forward` takes."""
        return self.preprocessing(images)

    def forward(self, pixels: torch.Tensor) -> ImageFeatures:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> ImageFeatures:
        """Preprocess and run in inference mode (no gradients, eval-mode layers)."""
        with eval_mode(self):
            return self(self.preprocess(images))

    def fingerprint(self) -> dict[str, str]:
        """Everything that determines the features: name, weights, preprocessing, pooling."""
        return {
            "encoder": self.name,
            "weights": self.weights_id,
            "preprocess": self.preprocessing.key(),
            "pooling": self.pooling,
        }

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, dim={self.dim}, token_dim={self.token_dim}, "
            f"size={self.image_size}"
        )


_HASHES: dict[tuple[str, int, int], str] = {}


def file_identity(path: str | os.PathLike[str]) -> str:
    """Content identity of a weights file or folder (SHA-256, memoised per size and mtime).

    A folder (a Hugging Face snapshot) is identified by its ``config.json`` and
    the names and sizes of its other files, which is cheap and changes whenever
    the weights do.
    """
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(p.rglob("*")):
            if f.is_file():
                h.update(f"{f.relative_to(p).as_posix()}:{f.stat().st_size}\n".encode())
                if f.name == "config.json":
                    h.update(f.read_bytes())
        return "dir-sha256:" + h.hexdigest()[:16]
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = "sha256:" + sha256_file(p)[:16]
    return _HASHES[key]


def random_identity() -> str:
    """Weights identity of a randomly initialised model: unique, so never a cache hit."""
    return "random-" + os.urandom(8).hex()


def square_grid(n: int) -> tuple[int, int]:
    s = round(n**0.5)
    if s * s != n:
        raise ValueError(f"{n} tokens do not form a square grid")
    return (s, s)
