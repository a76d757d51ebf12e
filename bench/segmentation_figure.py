"""Pseudo-semantic segmentation of a few IM2GPS3k photos (the figure of docs/segmentation.md).

A 32-class codebook is fitted on the cached tokens of the default backbone
(EfficientNet-Lite0: 7x7 patches) for the photos of two photographer-grouped
folds (1 and 2); photos of fold 0 are then segmented (top: the backbone's
centre crop; middle: the class of each patch; bottom: the similarity maps
upsampled bilinearly before choosing). The classes of the top patch row (sky,
in most outdoor photos) are printed, to check that a class recurs across photos.

    .venv/bin/python bench/segmentation_figure.py --out out/segmentation.png
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from geolocus.data.im2gps3k import im2gps3k_dir, photographer
from geolocus.data.images import load_image
from geolocus.data.tables import read_coords
from geolocus.eval.folds import grouped_folds

TILE = 150


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/segmentation.png")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--classes", type=int, default=32)
    ap.add_argument("--cache", default="cache/features")
    ap.add_argument("--backbone", default=None, help="default: DEFAULT_ENCODER")
    args = ap.parse_args()

    import torch

    from geolocus.encoders.features import FeatureStore
    from geolocus.encoders.image import DEFAULT_ENCODER, create_encoder
    from geolocus.segment import PseudoSegmenter, TokenCodebook, colorize, overlay

    torch.set_num_threads(2)
    data = im2gps3k_dir()
    ids = read_coords(data / "labels.csv", "labels")["IMG_ID"].tolist()
    folds = grouped_folds(ids, 3, group=photographer)
    name = args.backbone or DEFAULT_ENCODER
    found = sorted(glob.glob(f"{args.cache}/{name}-im2gps3k-*"))
    if not found:
        sys.exit(f"no cached {name} features: run bench/backbones.py first")
    store = FeatureStore.open(found[0])
    train_rows = store.rows([i for i, f in zip(ids, folds, strict=True) if f != 0])
    book = TokenCodebook(args.classes, store.tokens.shape[2], name)
    book.fit(store.tokens[np.sort(train_rows)], seed=0)
    enc = create_encoder(name)
    nearest = PseudoSegmenter(enc, book)
    smooth = PseudoSegmenter(enc, book, upsample="bilinear")
    # a fixed, varied pick from fold 0: every 97th photo
    pick = [i for i, f in zip(ids, folds, strict=True) if f == 0][5::97][: args.n]
    photos = [load_image(data / "images" / i) for i in pick]
    crops = [Image.fromarray(
        (np.clip(enc.preprocess([p])[0].numpy().transpose(1, 2, 0) * 0.5 + 0.5, 0, 1) * 255)
        .astype(np.uint8)) for p in photos]  # fmt: skip
    maps_n, maps_s = nearest.segment(photos), smooth.segment(photos)
    w, h = TILE * len(photos), TILE * 3 + 18
    sheet = Image.new("RGB", (w, h), "white")
    for j, (crop, mn, ms) in enumerate(zip(crops, maps_n, maps_s, strict=True)):
        tiles = [
            crop,
            overlay(crop, mn.numpy(), args.classes, alpha=0.6),
            colorize(ms.numpy(), args.classes),
        ]
        for r, t in enumerate(tiles):
            sheet.paste(t.resize((TILE, TILE), Image.Resampling.BILINEAR), (j * TILE, r * TILE))
    ImageDraw.Draw(sheet).text(
        (4, 3 * TILE + 3),
        f"IM2GPS3k photos (fold 0); {name}, {args.classes} classes fitted on folds 1-2; "
        "rows: photo, patch classes, smoothed",
        fill="black",
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out}: {', '.join(pick)}")
    grid = nearest.encoder.encode(photos[:1]).grid
    for i, m in zip(pick, maps_n, strict=True):
        top = m[:: m.shape[0] // grid[0]][0][:: m.shape[1] // grid[1]][: grid[1]]
        print(f"  {i}: top-row patch classes {top.tolist()}")


if __name__ == "__main__":
    main()
