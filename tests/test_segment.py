"""The semantic view: the token codebook, the pseudo-semantic segmenter, SegFormer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fakes import TinyEncoder
from geolocus.errors import InputError
from geolocus.segment import (
    PseudoSegmenter,
    TokenCodebook,
    colorize,
    create_segmenter,
    list_segmenters,
    overlay,
    palette,
)
from geolocus.weights import get_weights, list_weights


def _blobs(
    n_per: int = 300, dim: int = 24, k: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` well-separated directions with noise, as (k * n_per, dim) tokens, and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    lab = np.repeat(np.arange(k), n_per)
    x = centres[lab] * 3.0 + rng.normal(size=(k * n_per, dim)) * 0.3
    return x.astype(np.float32), lab


def test_codebook_is_deterministic_and_ordered_by_size():
    x, _ = _blobs()
    a = TokenCodebook(6, 24).fit(x, seed=3)
    b = TokenCodebook(6, 24).fit(x.copy(), seed=3)
    assert torch.equal(a.centroids, b.centroids)
    np.testing.assert_allclose(a.centroids.norm(dim=1).numpy(), 1.0, atol=1e-5)
    sizes = torch.bincount(a.assign(x), minlength=6)
    assert (sizes[:-1] >= sizes[1:]).all()  # class 0 is the largest
    # fitting on a memory-mapped (N, T, C) array samples the same way as on the tensor
    tokens3 = x.reshape(60, 20, 24)
    c = TokenCodebook(6, 24).fit(tokens3, seed=3)
    d = TokenCodebook(6, 24).fit(torch.from_numpy(tokens3), seed=3)
    assert torch.equal(c.centroids, d.centroids)


def test_codebook_recovers_separated_clusters():
    x, lab = _blobs(k=4)
    book = TokenCodebook(4, 24).fit(x, seed=0)
    ids = book.assign(torch.from_numpy(x)).numpy()
    # each true cluster maps to one class, and the four classes differ
    mapping = {int(t): set(ids[lab == t].tolist()) for t in range(4)}
    assert all(len(v) == 1 for v in mapping.values())
    assert len(set().union(*mapping.values())) == 4
    assert book.assign(torch.from_numpy(x.reshape(12, 100, 24))).shape == (12, 100)


def test_codebook_save_load_and_errors(tmp_path):
    x, _ = _blobs()
    book = TokenCodebook(5, 24, backbone="tiny").fit(x)
    path = tmp_path / "book.safetensors"
    book.save(path)
    back = TokenCodebook.load(path)
    assert back.backbone == "tiny" and back.fitted
    assert torch.equal(back.centroids, book.centroids)
    assert torch.equal(back.assign(x), book.assign(x))
    with pytest.raises(InputError, match="not fitted"):
        TokenCodebook(5, 24).assign(x)
    with pytest.raises(InputError, match="-d"):
        book.assign(np.zeros((3, 7), np.float32))
    with pytest.raises(InputError):
        TokenCodebook(50, 24).fit(x[:10])  # fewer tokens than classes


def _two_region_image(flip: bool = False) -> Image.Image:
    rng = np.random.default_rng(1)
    a = np.zeros((64, 64, 3), np.uint8)
    sky, grass = np.array([30, 90, 220]), np.array([60, 160, 40])
    a[:, :32] = np.clip(sky + rng.normal(0, 8, (64, 32, 3)), 0, 255)
    a[:, 32:] = np.clip(grass + rng.normal(0, 8, (64, 32, 3)), 0, 255)
    return Image.fromarray(a[:, ::-1] if flip else a)


def test_pseudo_segmenter_gives_two_regions_two_classes():
    enc = TinyEncoder()
    seg = PseudoSegmenter(enc, TokenCodebook(4, 16))
    rng = np.random.default_rng(0)
    train = [_two_region_image(), _two_region_image(flip=True)]
    train += [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    seg.fit(train, seed=0)
    maps = seg.segment([_two_region_image(), _two_region_image(flip=True)])
    assert maps.shape == (2, 32, 32) and maps.dtype == torch.int64
    left, right = maps[0, :, :16], maps[0, :, 16:]
    l_cls, r_cls = int(left.mode().values.mode().values), int(right.mode().values.mode().values)
    assert l_cls != r_cls
    assert (left == l_cls).float().mean() > 0.9 and (right == r_cls).float().mean() > 0.9
    # the same region type gets the same class in another photo (the flipped one)
    assert int(maps[1, :, 16:].flatten().mode().values) == l_cls
    smooth = PseudoSegmenter(enc, seg.codebook, upsample="bilinear").segment([_two_region_image()])
    assert smooth.shape == (1, 32, 32) and int(smooth[0, 5, 3]) == l_cls
    with pytest.raises(InputError):
        PseudoSegmenter(enc, TokenCodebook(4, 8))  # codebook of another token width


def test_create_segmenter_from_a_codebook_file(tmp_path):
    book = TokenCodebook(3, 16, backbone="tiny").fit(_blobs(dim=16, k=3)[0])
    book.save(tmp_path / "b.safetensors")
    seg = create_segmenter("codebook", codebook=tmp_path / "b.safetensors", encoder=TinyEncoder())
    assert seg.num_classes == 3 and seg.output_size == (32, 32)
    assert "codebook" in list_segmenters()
    with pytest.raises(InputError):
        create_segmenter("codebook")
    with pytest.raises(InputError):
        create_segmenter("no-such-segmenter")


@pytest.mark.slow  # importing transformers takes seconds
def test_segformer_from_config_with_random_weights():
    pytest.importorskip("transformers")
    seg = create_segmenter("segformer-b0-ade", pretrained=False, size=64)
    assert seg.num_classes == 150 and len(seg.class_names) == 150
    out = seg.segment([_two_region_image(), Image.new("RGB", (50, 80), "white")])
    assert out.shape == (2, 64, 64) and out.dtype == torch.int64
    assert int(out.min()) >= 0 and int(out.max()) < 150
    info = get_weights("segformer-b0-ade")
    assert info.kind == "segmenter" and info.source.startswith("hub:nvidia/segformer-b0")
    assert any(w.name == "segformer-b0-ade" for w in list_weights("segmenter"))


def test_palette_and_pictures():
    pal = palette(32)
    assert pal.shape == (32, 3) and len({tuple(c) for c in pal}) == 32
    cmap = np.array([[0, 1], [2, 31]])
    img = colorize(cmap, 32)
    assert img.size == (2, 2) and img.getpixel((1, 1)) == tuple(pal[31])
    ov = overlay(Image.new("RGB", (10, 10), "black"), cmap, 32, alpha=1.0)
    assert ov.size == (2, 2) and ov.getpixel((0, 0)) == tuple(pal[0])
