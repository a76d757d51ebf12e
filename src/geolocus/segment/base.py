"""The segmenter interface: photos in, a class map out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image


class Segmenter:
    """Maps photos to per-pixel class ids ``(B, H, W)`` (int64) in ``[0, num_classes)``.

    The same class id means the same kind of region in every photo (sky,
    road, vegetation… for a scene parser; a codebook entry for the
    pseudo-semantic segmenter). ``H, W`` is :attr:`output_size`; the map
    covers the part of the photo the segmenter sees (see each class).
    """

    name: str = ""
    num_classes: int = 0
    #: Human-readable class names, where the segmenter has them.
    class_names: list[str] | None = None

    @property
    def output_size(self) -> tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def segment(self, images: Sequence[Image.Image]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.segment(images)
