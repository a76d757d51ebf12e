"""Shared by the stage-1 tests: a generated, labelled photo set and an overfitting loop
(the toy encoders are in :mod:`fakes`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: Two "places" and a colour for each: photos of a place share its colour.
PLACES = np.array([[48.8566, 2.3522], [35.6762, 139.6503], [-33.8688, 151.2093]])
COLOURS = np.array([[200, 40, 40], [40, 170, 60], [50, 60, 210]])


def photo_set(root: Path, per_place: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """``per_place`` noisy photos of each place in ``root/images`` and ``root/labels.csv``
    (IMG_ID,LAT,LON; the positions scattered by ~1 km)."""
    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = ["IMG_ID,LAT,LON"]
    for p, (place, colour) in enumerate(zip(PLACES, COLOURS, strict=True)):
        for j in range(per_place):
            a = np.clip(colour + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype(np.uint8)
            a[: 10 + 3 * j] = (rng.integers(150, 255),) * 3  # a bright band of varying height
            name = f"p{p}_{j:02d}_owner{p}{j % 2}.jpg"
            Image.fromarray(a).save(img_dir / name, quality=95)
            lat, lon = place + rng.normal(0, 0.01, 2)
            rows.append(f"{name},{lat:.6f},{lon:.6f}")
    labels = root / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return img_dir, labels


def random_coords(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    return np.stack([lat, rng.uniform(-180, 180, n)], axis=1)


def overfit(model, batch, steps: int, loss=None, lr: float = 3e-3) -> tuple[float, dict]:
    """Adam on one batch for ``steps`` steps: the loss before (eval mode) and the loss
    terms after (eval mode). ``loss(model, batch)`` defaults to ``model.loss(batch)``."""
    loss = loss or (lambda m, b: m.loss(b))
    with torch.no_grad():
        start = loss(model.eval(), batch)["loss"].item()
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        out = loss(model, batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return start, loss(model, batch)
