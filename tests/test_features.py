"""Cached feature extraction: correctness, skipped photos, cache keys, resuming."""

from __future__ import annotations

import contextlib
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


def _interrupted(tmp_path: Path, n: int = 10) -> tuple[list[Path], np.ndarray, Path]:
    """Ten photos, extraction stopped after two chunks of two were saved."""
    paths, colours = _photos(tmp_path, n)
    out = tmp_path / "f"
    with pytest.raises(KeyboardInterrupt):
        extract_features(
            _encoder(fail_after=1 + 4), paths, out, batch_size=2, chunk_size=2, progress=False
        )
    assert sorted(p.name for p in (out / ".partial").glob("chunk-*.npz")) == [
        "chunk-0000000000-0000000002.npz",
        "chunk-0000000002-0000000004.npz",
    ]
    return paths, colours, out


@pytest.mark.parametrize("damage", ["truncate", "flip", "zeros", "sizes", "foreign"])
def test_a_damaged_chunk_is_computed_again(tmp_path: Path, damage: str) -> None:
    """A saved chunk that does not verify is never used: that chunk is redone, not the
    whole extraction, and no row of zeros reaches the store."""
    from geolocus.encoders.features import _save_chunk

    paths, colours, out = _interrupted(tmp_path)
    part = out / ".partial"
    second = part / "chunk-0000000002-0000000004.npz"
    key = (part / "key").read_text()
    if damage == "truncate":
        second.write_bytes(second.read_bytes()[:200])
    elif damage == "flip":  # one byte of the first row's embedding (after its .npy header)
        b = bytearray(second.read_bytes())
        b[b.index(b"\x93NUMPY") + 128] ^= 0xFF
        second.write_bytes(bytes(b))
    else:  # well-formed chunks with a valid checksum, but wrong contents
        emb = np.zeros((2, 3), np.float16)
        ok = np.ones(2, np.uint8)
        if damage == "sizes":
            emb, ok = np.full((3, 3), 0.5, np.float16), np.ones(3, np.uint8)
        _save_chunk(part, "other" if damage == "foreign" else key, 2, 4, {"emb": emb, "ok": ok}, [])
    enc = _encoder()
    store = extract_features(enc, paths, out, batch_size=2, chunk_size=2, progress=False)
    assert enc.seen == 1 + 8  # the probe, the damaged chunk and the six photos never done
    np.testing.assert_allclose(store.embeddings, colours, atol=0.02)
    assert store.ids == [str(p) for p in paths] and not store.failed


def test_a_damaged_finished_store_is_not_reused(tmp_path: Path) -> None:
    paths, colours = _photos(tmp_path, 4)
    out = tmp_path / "f"
    extract_features(_encoder(), paths, out, progress=False)
    emb = out / "embeddings.npy"
    b = bytearray(emb.read_bytes())
    b[-3:] = b"\x00\x00\x00"
    emb.write_bytes(bytes(b))
    enc = _encoder()
    store = extract_features(enc, paths, out, progress=False)
    assert enc.seen == 1 + 4  # computed again, not declared up to date
    np.testing.assert_allclose(store.embeddings, colours, atol=0.02)


def test_an_all_zero_embedding_is_a_failed_photo(tmp_path: Path) -> None:
    paths, _ = _photos(tmp_path, 3)
    black = tmp_path / "img" / "black.jpg"
    Image.new("RGB", (20, 20), (0, 0, 0)).save(black)  # the colour encoder gives (0, 0, 0)
    store = extract_features(_encoder(), [*paths, black], tmp_path / "f", progress=False)
    assert store.ids == [str(p) for p in paths]
    assert [f["path"] for f in store.failed] == [str(black)]
    assert "all-zero or non-finite embedding" in store.failed[0]["error"]


@pytest.mark.parametrize(("start_at", "stop_after"), [(2, 3), (3, 6), (6, 4), (6, None)])
def test_two_extractions_interleaved_in_one_folder(tmp_path: Path, start_at, stop_after) -> None:
    """A second extraction into the same folder runs (and is interrupted, or finishes) in
    the middle of the first, as two concurrent builds did: one shared array then gave 10
    of 12 rows of zeros at (2, 3). Now both end with every row right."""
    paths, colours = _photos(tmp_path, 12)
    out = tmp_path / "f"
    kw = dict(batch_size=2, chunk_size=4, progress=False)

    class First(fakes.ColourEncoder):
        n = 0

        def forward(self, pixels):
            First.n += 1  # the probe, then batches of two
            if First.n == start_at:
                with contextlib.suppress(KeyboardInterrupt):
                    extract_features(_encoder(fail_after=stop_after), paths, out, **kw)
            return super().forward(pixels)

    first = extract_features(First(grid=4, pool="mean", centred=False), paths, out, **kw)
    assert First.n > start_at
    np.testing.assert_allclose(first.embeddings, colours, atol=0.02)
    later = _encoder()
    again = extract_features(later, paths, out, **kw)
    np.testing.assert_allclose(again.embeddings, colours, atol=0.02)
    assert later.seen <= 1  # reused: the store is complete and verifies
