"""Cached feature extraction: correctness, skipped photos, cache keys, resuming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fakes
from geolocus.encoders.features import FeatureStore, cache_dir, extract_features
from geolocus.encoders.image.base import ImageEncoder
from geolocus.errors import InputError


def _encoder(weights_id: str = "colour-v1", fail_after: int | None = None) -> ImageEncoder:
    """Tokens: the mean colour of each cell of a 4x4 grid; embedding: the photo's mean colour."""
    return fakes.ColourEncoder(
        weights_id, grid=4, pool="mean", centred=False, fail_after=fail_after
    )


def _photos(tmp_path: Path, n: int) -> tuple[list[Path], np.ndarray]:
    rng = np.random.default_rng(1)
    colours = rng.integers(0, 256, (n, 3))
    paths = []
    for i, c in enumerate(colours):
        p = tmp_path / "img" / f"p{i:02d}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (40 + i, 30), tuple(int(v) for v in c)).save(p, quality=100)
        paths.append(p)
    return paths, colours / 255.0


def test_extract_matches_encoder_and_skips_unreadable(tmp_path: Path) -> None:
    paths, colours = _photos(tmp_path, 9)
    bad = tmp_path / "img" / "bad.jpg"
    bad.write_text("not a photo")
    inputs = [*paths[:4], bad, tmp_path / "missing.jpg", *paths[4:]]
    store = extract_features(
        _encoder(), inputs, tmp_path / "f", batch_size=3, chunk_size=4, progress=False
    )
    assert len(store) == 9
    assert store.ids == [str(p) for p in paths]  # input order, unreadable ones left out
    assert store.embeddings.dtype == np.float16 and store.embeddings.shape == (9, 3)
    np.testing.assert_allclose(store.embeddings, colours, atol=0.02)
    assert [Path(f["path"]).name for f in store.failed] == ["bad.jpg", "missing.jpg"]
    assert "bad.jpg" in store.failed[0]["error"]
    assert store.tokens is None
    reopened = FeatureStore.open(tmp_path / "f")
    assert reopened.ids == store.ids and len(reopened.failed) == 2
    n = store.normalized()
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(store.rows([store.ids[3], store.ids[0]]), [3, 0])
    with pytest.raises(InputError, match="no features for id"):
        store.rows(["nope"])


@pytest.mark.parametrize(("mode", "n_tok"), [("full", 16), ("pooled", 4)])
def test_tokens(tmp_path: Path, mode: str, n_tok: int) -> None:
    paths, colours = _photos(tmp_path, 3)
    store = extract_features(
        _encoder(), paths, tmp_path / mode, tokens=mode, token_grid=2, dtype="float32",
        progress=False,
    )  # fmt: skip
    assert store.tokens.shape == (3, n_tok, 3) and store.tokens.dtype == np.float32
    assert store.grid == ((4, 4) if mode == "full" else (2, 2))
    np.testing.assert_allclose(store.tokens.mean(1), colours, atol=0.02)


def test_cache_reused_only_for_identical_inputs(tmp_path: Path) -> None:
    paths, _ = _photos(tmp_path, 4)
    out = tmp_path / "f"
    enc = _encoder()
    extract_features(enc, paths, out, progress=False)
    first = enc.seen
    again = _encoder()
    s = extract_features(again, paths, out, progress=False)
    assert again.seen <= 1 and len(s) == 4  # at most the shape probe: nothing recomputed
    # other weights, other inputs, other ids or other token mode: rebuilt
    for enc2, kw in [
        (_encoder(weights_id="colour-v2"), {}),
        (_encoder(), {"ids": ["a", "b", "c", "d"]}),
        (_encoder(), {"tokens": "full"}),
    ]:
        s = extract_features(enc2, paths, out, progress=False, **kw)
        assert enc2.seen >= first
    s = extract_features(_encoder(), paths[:2], out, progress=False)
    assert len(s) == 2
    key = s.key
    with pytest.raises(InputError, match="stale"):
        FeatureStore.open(out, key=key[::-1])


def test_interrupted_extraction_resumes(tmp_path: Path) -> None:
    paths, colours = _photos(tmp_path, 10)
    out = tmp_path / "f"
    with pytest.raises(KeyboardInterrupt):
        extract_features(
            _encoder(fail_after=1 + 4), paths, out, batch_size=2, chunk_size=2, progress=False
        )  # the probe, then two chunks of two, then "Ctrl-C"
    assert not (out / "meta.json").exists()
    with pytest.raises(InputError, match="no complete feature store"):
        FeatureStore.open(out)
    enc = _encoder()
    store = extract_features(enc, paths, out, batch_size=2, chunk_size=2, progress=False)
    assert enc.seen == 1 + 6  # the probe and the six photos not done before
    np.testing.assert_allclose(store.embeddings, colours, atol=0.02)
    assert not (out / ".partial").exists()


def test_nothing_readable_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "x.jpg"
    p.write_text("text")
    with pytest.raises(InputError, match="none of the 1 images"):
        extract_features(_encoder(), [p], tmp_path / "f", progress=False)
    with pytest.raises(InputError, match="no images"):
        extract_features(_encoder(), [], tmp_path / "g", progress=False)
    with pytest.raises(InputError, match="unique"):
        extract_features(_encoder(), [p, p], tmp_path / "h", progress=False)


def test_cache_dir_depends_on_fingerprint(tmp_path: Path) -> None:
    a = cache_dir(tmp_path, _encoder("w1"), "im2gps3k")
    b = cache_dir(tmp_path, _encoder("w2"), "im2gps3k")
    assert a != b and a.parent == tmp_path and a.name.startswith("colour-test-im2gps3k-")
