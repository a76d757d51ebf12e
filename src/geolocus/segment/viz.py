"""Pictures of class maps: a fixed palette, colour maps, overlays on the photo."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image


def palette(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 colours, well apart in hue and alternating in lightness."""
    cols = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0  # golden-ratio hue steps
        light = (0.45, 0.62, 0.35)[i % 3]
        cols.append(colorsys.hls_to_rgb(h, light, 0.75))
    return (np.asarray(cols) * 255).round().astype(np.uint8)


def colorize(class_map, n_classes: int) -> Image.Image:
    """A ``(H, W)`` class map as an RGB image."""
    ids = np.asarray(class_map, dtype=np.int64)
    return Image.fromarray(palette(n_classes)[ids], mode="RGB")


def overlay(image: Image.Image, class_map, n_classes: int, alpha: float = 0.55) -> Image.Image:
    """The class colours blended over ``image`` (resized to the map's size)."""
    col = colorize(class_map, n_classes)
    base = image.convert("RGB").resize(col.size, Image.Resampling.BILINEAR)
    return Image.blend(base, col, alpha)
