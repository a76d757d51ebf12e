"""Frozen-backbone features, computed once and cached on disk as memory-mapped arrays.

Training heads on a frozen backbone, building a retrieval index and
benchmarking all reuse the same per-photo features, and on a CPU the backbone
costs far more than anything after it. :func:`extract_features` runs the
encoder once over a list of photos and writes, in ``out_dir``:

- ``embeddings.npy`` ``(N, dim)`` — the encoder's global embeddings, unnormalised;
- ``tokens.npy`` ``(N, T, token_dim)`` — optional: the patch tokens, either all
  of them (``tokens="full"``) or average-pooled to a ``token_grid`` square
  (``tokens="pooled"``);
- ``ids.txt`` — one id per row, in row order (photos that could not be read are
  left out, not zero-filled);
- ``failed.csv`` — ``id,path,error`` of every unreadable photo;
- ``meta.json`` — written last: its presence marks a complete store, and its
  ``key`` (encoder name, weights identity, preprocessing, pooling, token mode,
  dtype and the exact list of inputs) decides whether the cache can be reused.

Extraction proceeds in chunks, each saved as its own file
``.partial/chunk-<start>-<stop>.npz`` (rows, which of them could be read, the
unreadable ones and a SHA-256 over all of it and the key), written atomically:
an interrupted run resumes after the last chunk that verifies, and a chunk
that does not (truncated, altered, from other inputs, rows of zeros, sizes
that disagree) is computed again. Nothing is shared between chunks, so even two
runs writing the same folder at once cannot mix their rows: the worst they do
is compute a chunk twice. (Two builds once shared one growing array and saved
rows of zeros as features.) A stale cache (any part of the key differs) is
never reused: it is rebuilt. A photo whose embedding is all zeros or not
finite is listed as failed: no use can be made of it.

Memory and disk. Arrays are ``float16`` by default (half of float32; ample for
nearest-neighbour search) and memory-mapped, so RAM holds only what is read.
Disk per photo is ``2 * dim`` bytes for embeddings (2.5 KB at 1280-d: 3000
photos = 7.7 MB, 4 M photos = 10 GB), plus ``2 * T * token_dim`` for tokens:
full EfficientNet-Lite0 tokens are 49 x 1280 x 2 = 125 KB per photo (3000
photos = 376 MB; 4 M photos = 500 GB, beyond any laptop), pooled to 4x4 they
are 41 KB (4 M photos = 164 GB). So: tokens for training sets of up to a few
hundred thousand photos; embeddings only for million-photo galleries. While
the final arrays are assembled from the chunks, both are on disk (twice the
figures above, briefly).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from geolocus.data.images import load_image
from geolocus.errors import ImageError, InputError
from geolocus.files import atomic_path, atomic_write, sha256_file, write_text_atomic
from geolocus.nn import eval_mode

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
TokensMode = Literal[False, "pooled", "full"]
_PARTIAL = ".partial"


def feature_key(
    fingerprint: dict, tokens: TokensMode, token_grid: int, dtype: str, ids, paths
) -> str:
    """Hash of everything that determines a store's contents."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "version": FORMAT_VERSION,
                "encoder": fingerprint,
                "tokens": tokens or "none",
                "token_grid": token_grid if tokens == "pooled" else None,
                "dtype": dtype,
            },
            sort_keys=True,
        ).encode()
    )
    for i, p in zip(ids, paths, strict=True):
        h.update(f"{i}\t{p}\n".encode())
    return h.hexdigest()


def cache_dir(root: str | os.PathLike[str], encoder, tag: str = "") -> Path:
    """A per-encoder folder under ``root`` (``<name>-<hash of its fingerprint>``), so that
    stores of different encoders or weights never overwrite each other."""
    fp = hashlib.sha256(json.dumps(encoder.fingerprint(), sort_keys=True).encode()).hexdigest()
    return Path(root) / f"{encoder.name}{'-' + tag if tag else ''}-{fp[:10]}"


@dataclass
class FeatureStore:
    """A complete feature cache, memory-mapped read-only (see the module docstring)."""

    root: Path
    ids: list[str]
    embeddings: np.ndarray
    tokens: np.ndarray | None
    meta: dict
    failed: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def open(cls, root: str | os.PathLike[str], key: str | None = None) -> FeatureStore:
        """Open the store in ``root``; with ``key``, refuse one built from other inputs."""
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise InputError(f"{root}: no complete feature store there (meta.json missing)")
        meta = json.loads(meta_path.read_text())
        if key is not None and meta.get("key") != key:
            raise InputError(f"{root}: feature store is stale (built from other inputs or weights)")
        ids = (root / "ids.txt").read_text(encoding="utf-8").splitlines()
        emb = np.load(root / "embeddings.npy", mmap_mode="r")
        tok = np.load(root / "tokens.npy", mmap_mode="r") if meta.get("tokens") else None
        if emb.shape[0] != len(ids) or (tok is not None and tok.shape[0] != len(ids)):
            raise InputError(f"{root}: feature store is inconsistent (row counts differ)")
        return cls(
            root=root, ids=ids, embeddings=emb, tokens=tok, meta=meta, failed=read_failed(root)
        )

    def verify(self) -> None:
        """Check the embeddings against the SHA-256 recorded when they were written (an
        :class:`InputError` if they differ), before a finished store is reused."""
        want = self.meta.get("sha256", {}).get("embeddings.npy")
        if want is None or len(self.ids) != self.meta.get("n"):
            raise InputError(f"{self.root}: feature store has no checksum or a wrong count")
        if sha256_file(self.root / "embeddings.npy") != want:
            raise InputError(f"{self.root}: feature store is damaged (embeddings altered)")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def grid(self) -> tuple[int, int] | None:
        """Grid of the stored tokens (pooled or full), None without tokens."""
        g = self.meta.get("token_grid_stored")
        return tuple(g) if g else None

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids`` (an :class:`InputError` names the first unknown one)."""
        pos = {i: r for r, i in enumerate(self.ids)}
        try:
            return np.array([pos[i] for i in ids], dtype=np.int64)
        except KeyError as e:
            raise InputError(f"{self.root}: no features for id {e.args[0]!r}") from None

    def normalized(self, rows: np.ndarray | None = None) -> np.ndarray:
        """L2-normalised float32 embeddings (loaded into memory) for cosine similarity."""
        e = np.asarray(self.embeddings if rows is None else self.embeddings[rows], np.float32)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def read_failed(folder: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The photos an extraction could not read (``failed.csv``: id, path, error), even
    when it ended early."""
    path = Path(folder) / "failed.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def pool_tokens(tokens: torch.Tensor, grid: tuple[int, int], out: int) -> torch.Tensor:
    """Average-pool ``(B, h*w, C)`` tokens on their ``grid`` to ``out x out`` (what
    ``tokens="pooled"`` stores)."""
    import torch.nn.functional as F

    b, _, c = tokens.shape
    fmap = tokens.transpose(1, 2).reshape(b, c, *grid)
    return F.adaptive_avg_pool2d(fmap, out).flatten(2).transpose(1, 2)


def _digest(key: str, start: int, stop: int, arrays: dict[str, np.ndarray], failed: str) -> str:
    h = hashlib.sha256(f"{key}|{start}|{stop}|{failed}".encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"|{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.data)
    return h.hexdigest()


def _chunk_path(part: Path, start: int, stop: int) -> Path:
    return part / f"chunk-{start:010d}-{stop:010d}.npz"


def _save_chunk(
    part: Path, key: str, start: int, stop: int, arrays: dict[str, np.ndarray], failed: list
) -> None:
    """One chunk of rows in its own file, written atomically, with its checksum."""
    text = json.dumps(failed)
    digest = _digest(key, start, stop, arrays, text)
    with atomic_path(_chunk_path(part, start, stop)) as tmp, open(tmp, "wb") as fh:
        payload: dict[str, Any] = {**arrays, "failed": np.array(text), "digest": np.array(digest)}
        np.savez(fh, **payload)
        fh.flush()
        os.fsync(fh.fileno())


def _load_chunk(
    path: Path, key: str, start: int, stop: int, shapes: dict[str, tuple[int, ...]], dtype: str
) -> tuple[dict[str, np.ndarray], list] | None:
    """A saved chunk's arrays and unreadable photos, or None unless every check passes:
    the checksum, the row count and shapes, the dtype, and no read row of zeros."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in shapes}
            text, digest = str(z["failed"]), str(z["digest"])
        if digest != _digest(key, start, stop, arrays, text):
            return None
        for name, shape in shapes.items():
            want = np.dtype("uint8") if name == "ok" else np.dtype(dtype)
            if arrays[name].shape != (stop - start, *shape) or arrays[name].dtype != want:
                return None
        ok = arrays["ok"] == 1
        if not _usable(arrays["emb"][ok]).all():
            return None
        return arrays, json.loads(text)
    except Exception:  # truncated or foreign file: the chunk is simply computed again
        return None


def _usable(emb: np.ndarray) -> np.ndarray:
    """Rows that are embeddings at all: finite and not all zeros."""
    e = np.asarray(emb, dtype=np.float32)
    return np.isfinite(e).all(axis=1) & (np.abs(e).max(axis=1, initial=0.0) > 0)


def extract_features(
    encoder,
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    ids: Sequence[str] | None = None,
    batch_size: int = 32,
    tokens: TokensMode = False,
    token_grid: int = 4,
    dtype: str = "float16",
    chunk_size: int = 512,
    loader_threads: int = 1,
    progress: bool = True,
) -> FeatureStore:
    """Compute (or reuse) the features of ``paths`` with ``encoder`` in ``out_dir``.

    ``ids`` name the rows (default: the paths as given). Unreadable photos are
    skipped and listed in ``failed.csv`` (and, with ``progress``, said on stderr);
    only if none can be read is it an error. ``loader_threads`` decode and
    preprocess photos while the encoder runs.
    """
    import torch
    from tqdm.auto import tqdm

    if tokens not in (False, None, "pooled", "full"):
        raise ValueError("tokens must be False, 'pooled' or 'full'")
    tokens = tokens or False
    paths = [str(p) for p in paths]
    ids = [str(p) for p in paths] if ids is None else [str(i) for i in ids]
    if len(ids) != len(paths):
        raise InputError(f"{len(ids)} ids for {len(paths)} paths")
    if len(set(ids)) != len(ids):
        raise InputError("ids must be unique")
    if not paths:
        raise InputError("no images to extract features from")
    out = Path(out_dir)
    key = feature_key(encoder.fingerprint(), tokens, token_grid, dtype, ids, paths)
    with contextlib.suppress(InputError, OSError, ValueError, json.JSONDecodeError):
        store = FeatureStore.open(out, key=key)
        store.verify()
        return store

    n = len(paths)
    part = out / _PARTIAL
    try:
        same = (part / "key").read_text() == key
    except OSError:
        same = False
    if not same:  # chunks of other inputs: of no use
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True, exist_ok=True)
        write_text_atomic(part / "key", key)
    with contextlib.suppress(FileNotFoundError):
        (out / "meta.json").unlink()  # the old store, if any, is stale from here on

    # one forward pass on a blank photo tells the output shapes
    from PIL import Image

    probe = encoder.encode([Image.new("RGB", (encoder.image_size,) * 2, (128, 128, 128))])
    dim, grid = probe.embedding.shape[1], probe.grid
    tok_grid = (token_grid, token_grid) if tokens == "pooled" else grid
    shapes: dict[str, tuple[int, ...]] = {"emb": (dim,), "ok": ()}
    if tokens:
        shapes["tok"] = (tok_grid[0] * tok_grid[1], probe.tokens.shape[2])

    prep = encoder.preprocessing
    min_side = prep.resize

    def load(i: int):
        try:
            return prep.image(load_image(paths[i], min_size=min_side)), None
        except ImageError as e:
            return None, str(e)
        except Exception as e:  # a decoder bug on one photo must not end a long run
            return None, f"{paths[i]}: {type(e).__name__}: {e}".splitlines()[0]

    def load_batch(rows: range) -> list:
        return [load(i) for i in rows]

    # the chunks already saved that verify, in order from row 0; the rest is computed
    chunks: list[tuple[int, int]] = []
    done = 0
    while done < n:
        stop = _saved_stop(part, done, n)
        if (
            stop is None
            or _load_chunk(_chunk_path(part, done, stop), key, done, stop, shapes, dtype) is None
        ):
            break
        chunks.append((done, stop))
        done = stop
    t_load = t_fwd = 0.0
    bar = tqdm(
        total=n, initial=done, desc=f"features {encoder.name}", unit="img", disable=not progress
    )
    try:
        with (
            eval_mode(encoder),
            ThreadPoolExecutor(max_workers=max(1, loader_threads)) as pool,
            torch.no_grad(),
        ):
            while done < n:
                stop = min(n, done + chunk_size)
                emb = np.zeros((stop - done, dim), dtype=dtype)
                tok = np.zeros((stop - done, *shapes["tok"]), dtype=dtype) if tokens else None
                ok = np.zeros(stop - done, dtype=np.uint8)
                failed: list[dict[str, str]] = []
                batches = [
                    range(s, min(stop, s + batch_size)) for s in range(done, stop, batch_size)
                ]
                pending = [pool.submit(load_batch, batches[0])]
                for j, rows in enumerate(batches):
                    t0 = time.perf_counter()
                    loaded = pending.pop(0).result()
                    if j + 1 < len(batches):
                        pending.append(pool.submit(load_batch, batches[j + 1]))
                    t_load += time.perf_counter() - t0
                    good = [i for i, (a, _) in zip(rows, loaded, strict=True) if a is not None]
                    for i, (_, err) in zip(rows, loaded, strict=True):
                        if err is not None:
                            failed.append({"id": ids[i], "path": str(paths[i]), "error": err})
                    if good:
                        t0 = time.perf_counter()
                        x = torch.from_numpy(np.stack([a for a, _ in loaded if a is not None]))
                        f = encoder(x)
                        t_fwd += time.perf_counter() - t0
                        local = np.asarray(good) - done
                        e = f.embedding.float().numpy()
                        emb[local] = e.astype(dtype)
                        if tok is not None:
                            t = (
                                f.tokens
                                if tokens == "full"
                                else pool_tokens(f.tokens, f.grid, token_grid)
                            )
                            tok[local] = t.float().numpy().astype(dtype)
                        usable = _usable(emb[local])
                        ok[local[usable]] = 1
                        for i in np.asarray(good)[~usable]:
                            failed.append(
                                {
                                    "id": ids[i],
                                    "path": paths[i],
                                    "error": f"{paths[i]}: the encoder gave an all-zero or "
                                    "non-finite embedding",
                                }
                            )
                    bar.update(len(rows))
                arrays = {"emb": emb, "ok": ok} | ({"tok": tok} if tok is not None else {})
                _save_chunk(part, key, done, stop, arrays, failed)
                chunks.append((done, stop))
                done = stop
    finally:
        bar.close()

    return _finish(
        out,
        part,
        chunks,
        shapes,
        ids,
        dtype,
        key,
        encoder,
        tokens,
        tok_grid,
        {"load_s": t_load, "forward_s": t_fwd},
        progress,
    )


def _saved_stop(part: Path, start: int, n: int) -> int | None:
    """The end row of the saved chunk that starts at ``start`` (the longest one), if any."""
    stops = []
    for f in part.glob(f"chunk-{start:010d}-*.npz"):
        with contextlib.suppress(ValueError):
            stops.append(int(f.stem.split("-")[2]))
    stops = [s for s in stops if start < s <= n]
    return max(stops) if stops else None


def _finish(
    out: Path,
    part: Path,
    chunks: list[tuple[int, int]],
    shapes: dict[str, tuple[int, ...]],
    ids: list[str],
    dtype: str,
    key: str,
    encoder,
    tokens: TokensMode,
    tok_grid,
    timing: dict,
    note_failed: bool,
) -> FeatureStore:
    """Gather the read rows of every chunk into the final files; write meta.json last."""
    loaded = []
    failed: list[dict[str, str]] = []
    for start, stop in chunks:
        got = _load_chunk(_chunk_path(part, start, stop), key, start, stop, shapes, dtype)
        if got is None:
            with contextlib.suppress(InputError, OSError, ValueError, json.JSONDecodeError):
                store = FeatureStore.open(out, key=key)  # another run finished the same work
                store.verify()
                return store
            raise InputError(
                f"{part}: a chunk of features changed or vanished while this run used it "
                "(another process writing the same folder?); run again"
            )
        loaded.append((start, got[0]["ok"]))
        failed += got[1]
    keep = np.concatenate([start + np.flatnonzero(ok == 1) for start, ok in loaded])
    with atomic_write(out / "failed.csv", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "path", "error"])
        w.writeheader()
        w.writerows(failed)
    if keep.size == 0:
        first = failed[0]["error"] if failed else "?"
        raise InputError(f"none of the {len(ids)} images could be read; first: {first}")
    if failed and note_failed:
        print(
            f"{len(failed)} of {len(ids)} photos unreadable, skipped: listed in "
            f"{out / 'failed.csv'}",
            file=sys.stderr,
        )
    digests = {}
    for name, arr_key in (("embeddings.npy", "emb"), ("tokens.npy", "tok")):
        if arr_key not in shapes:
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
            continue
        with atomic_path(out / name) as tmp:
            dst = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=dtype, shape=(keep.size, *shapes[arr_key])
            )
            row = 0
            for start, stop in chunks:  # one chunk in memory at a time
                with np.load(_chunk_path(part, start, stop), allow_pickle=False) as z:
                    a, ok = z[arr_key], z["ok"]
                rows = a[ok == 1]
                dst[row : row + len(rows)] = rows
                row += len(rows)
            dst.flush()
            del dst
            digests[name] = sha256_file(tmp)
    with atomic_write(out / "ids.txt", encoding="utf-8") as fh:
        fh.writelines(f"{ids[i]}\n" for i in keep)
    meta = {
        "key": key,
        "version": FORMAT_VERSION,
        "fingerprint": encoder.fingerprint(),
        "encoder": encoder.name,
        "dim": int(shapes["emb"][0]),
        "token_dim": int(shapes["tok"][1]) if tokens else int(encoder.token_dim),
        "tokens": tokens or None,
        "token_grid_stored": list(tok_grid) if tokens else None,
        "dtype": dtype,
        "n": int(keep.size),
        "n_failed": len(failed),
        "timing": timing,
        "sha256": digests,
    }
    with atomic_write(out / "meta.json") as fh:
        json.dump(meta, fh, indent=1)
    shutil.rmtree(part, ignore_errors=True)
    return FeatureStore.open(out, key=key)
