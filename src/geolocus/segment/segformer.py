"""SegFormer scene parsing (Xie et al., NeurIPS 2021) via ``transformers``, for users with
the hub weights: ``nvidia/segformer-b0-finetuned-ade-512-512`` (ADE20K, 150 classes).

The photo is resized to 512x512 (SegFormer's own image processor does the same,
without cropping), normalised with ImageNet statistics; the logits at 1/4
resolution are upsampled bilinearly to 512x512 and the most probable class
taken. ``create(pretrained=False)`` builds a small random model from a config
(tests, no network).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from geolocus.data.images import to_rgb
from geolocus.encoders.image.base import IMAGENET_MEAN as _MEAN
from geolocus.encoders.image.base import IMAGENET_STD as _STD
from geolocus.errors import ModelUnavailableError
from geolocus.segment.base import Segmenter
from geolocus.segment.catalog import SEGFORMER_ADE
from geolocus.weights import require

IMAGENET_MEAN = np.array(_MEAN, dtype=np.float32)
IMAGENET_STD = np.array(_STD, dtype=np.float32)
#: A tiny SegFormer for tests: two stages, 16/32 channels.
SMALL_CONFIG = {
    "num_encoder_blocks": 2,
    "depths": [1, 1],
    "sr_ratios": [8, 4],
    "hidden_sizes": [16, 32],
    "patch_sizes": [7, 3],
    "strides": [4, 2],
    "num_attention_heads": [1, 2],
    "mlp_ratios": [2, 2],
    "decoder_hidden_size": 32,
    "num_labels": 150,
}


class SegFormerSegmenter(Segmenter):
    """A ``SegformerForSemanticSegmentation`` behind the :class:`Segmenter` interface."""

    def __init__(self, model: Any, size: int = 512, name: str = SEGFORMER_ADE) -> None:
        self.model = model.eval()
        self.size = int(size)
        self.name = name
        cfg = model.config
        self.num_classes = int(cfg.num_labels)
        labels = getattr(cfg, "id2label", None) or {}
        self.class_names = [str(labels.get(i, labels.get(str(i), i))) for i in range(
            self.num_classes)]  # fmt: skip

    @classmethod
    def create(
        cls,
        weights: str | os.PathLike[str] | None = None,
        pretrained: bool = True,
        size: int = 512,
        **config: Any,
    ) -> SegFormerSegmenter:
        try:
            from transformers import SegformerConfig, SegformerForSemanticSegmentation
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            raise ModelUnavailableError(
                "SegFormer needs transformers: pip install 'geolocus[hub]'"
            ) from None
        if not pretrained:
            torch.manual_seed(0)
            model = SegformerForSemanticSegmentation(SegformerConfig(**{**SMALL_CONFIG, **config}))
            return cls(model, size, name=f"{SEGFORMER_ADE} (random)")
        if weights is None:
            weights = require(SEGFORMER_ADE)
        model = SegformerForSemanticSegmentation.from_pretrained(
            str(Path(weights)), local_files_only=True
        )
        return cls(model, size)

    @property
    def output_size(self) -> tuple[int, int]:
        return (self.size, self.size)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:

        arrs = []
        for im in images:
            im = to_rgb(im).resize((self.size, self.size), Image.Resampling.BILINEAR)
            a = (np.asarray(im, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
            arrs.append(a.transpose(2, 0, 1))
        return torch.from_numpy(np.stack(arrs))

    @torch.no_grad()
    def segment(self, images: Sequence[Image.Image]) -> torch.Tensor:
        logits = self.model(pixel_values=self.preprocess(images)).logits
        up = F.interpolate(logits, size=self.output_size, mode="bilinear", align_corners=False)
        return up.argmax(dim=1)
