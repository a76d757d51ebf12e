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

Extraction proceeds in chunks; after each, the arrays are flushed and the
progress recorded in ``.partial/progress.json``, so an interrupted run resumes
where it stopped. A stale cache (any part of the key differs) is never reused:
it is rebuilt.

Memory and disk. Arrays are ``float16`` by default (half of float32; ample for
nearest-neighbour search) and memory-mapped, so RAM holds only what is read.
Disk per photo is ``2 * dim`` bytes for embeddings (2.5 KB at 1280-d: 3000
photos = 7.7 MB, 4 M photos = 10 GB), plus ``2 * T * token_dim`` for tokens:
full EfficientNet-Lite0 tokens are 49 x 1280 x 2 = 125 KB per photo (3000
photos = 376 MB; 4 M photos = 500 GB, beyond any laptop), pooled to 4x4 they
are 41 KB (4 M photos = 164 GB). So: tokens for training sets of up to a few
hundred thousand photos; embeddings only for million-photo galleries.
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
from geolocus.files import atomic_path, atomic_write
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


def _open_array(path: Path, shape: tuple[int, ...], dtype: str, resume: bool) -> np.memmap:
    if resume and path.exists():
        arr = np.load(path, mmap_mode="r+")
        if arr.shape == shape and arr.dtype == np.dtype(dtype):
            return arr
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


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
    skipped and listed in ``failed.csv``; only if none can be read is it an error.
    ``loader_threads`` decode and preprocess photos while the encoder runs.
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
        return FeatureStore.open(out, key=key)

    n = len(paths)
    part = out / _PARTIAL
    prog_path = part / "progress.json"
    state: dict[str, Any] = {"key": key, "done": 0, "failed": []}
    resume = False
    if prog_path.is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            old = json.loads(prog_path.read_text())
            if old.get("key") == key:
                state, resume = old, True
    if not resume:
        shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (out / "meta.json").unlink()  # the old store, if any, is stale from here on

    # one forward pass on a blank photo tells the output shapes
    from PIL import Image

    probe = encoder.encode([Image.new("RGB", (encoder.image_size,) * 2, (128, 128, 128))])
    dim, grid = probe.embedding.shape[1], probe.grid
    tok_grid = (token_grid, token_grid) if tokens == "pooled" else grid
    emb = _open_array(part / "embeddings.npy", (n, dim), dtype, resume)
    tok = None
    if tokens:
        shape = (n, tok_grid[0] * tok_grid[1], probe.tokens.shape[2])
        tok = _open_array(part / "tokens.npy", shape, dtype, resume)
    ok = _open_array(part / "ok.npy", (n,), "uint8", resume)

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

    t_load = t_fwd = 0.0
    done = int(state["done"])
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
                            state["failed"].append({"id": ids[i], "path": paths[i], "error": err})
                    if good:
                        t0 = time.perf_counter()
                        x = torch.from_numpy(np.stack([a for a, _ in loaded if a is not None]))
                        f = encoder(x)
                        t_fwd += time.perf_counter() - t0
                        emb[good] = f.embedding.float().numpy().astype(dtype)
                        if tok is not None:
                            t = (
                                f.tokens
                                if tokens == "full"
                                else pool_tokens(f.tokens, f.grid, token_grid)
                            )
                            tok[good] = t.float().numpy().astype(dtype)
                        ok[good] = 1
                    bar.update(len(rows))
                for a in (emb, tok, ok):
                    if a is not None:
                        a.flush()
                done = stop
                state["done"] = done
                with atomic_write(prog_path) as fh:
                    json.dump(state, fh)
    finally:
        bar.close()

    if state["failed"] and progress:
        n_bad = len(state["failed"])
        tqdm.write(
            f"{n_bad} of {n} photos unreadable, skipped: listed in {out / 'failed.csv'}",
            file=sys.stderr,
        )
    return _finish(
        out,
        part,
        state,
        ids,
        paths,
        emb,
        tok,
        ok,
        dtype,
        key,
        encoder,
        tokens,
        token_grid,
        tok_grid,
        {"load_s": t_load, "forward_s": t_fwd},
    )


def _finish(
    out,
    part,
    state,
    ids,
    paths,
    emb,
    tok,
    ok,
    dtype,
    key,
    encoder,
    tokens,
    token_grid,
    tok_grid,
    timing,
) -> FeatureStore:
    """Compact the good rows into the final files; write meta.json last."""
    keep = np.flatnonzero(np.asarray(ok) == 1)
    failed = state["failed"]
    with atomic_write(out / "failed.csv", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "path", "error"])
        w.writeheader()
        w.writerows(failed)
    if keep.size == 0:
        first = failed[0]["error"] if failed else "?"
        raise InputError(f"none of the {len(ids)} images could be read; first: {first}")
    for name, arr in (("embeddings.npy", emb), ("tokens.npy", tok)):
        if arr is None:
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
            continue
        if keep.size == len(ids):
            os.replace(part / name, out / name)
            continue
        with atomic_path(out / name) as tmp:
            dst = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=dtype, shape=(keep.size, *arr.shape[1:])
            )
            for s in range(0, keep.size, 4096):
                dst[s : s + 4096] = arr[keep[s : s + 4096]]
            dst.flush()
    with atomic_write(out / "ids.txt", encoding="utf-8") as fh:
        fh.writelines(f"{ids[i]}\n" for i in keep)
    meta = {
        "key": key,
        "version": FORMAT_VERSION,
        "fingerprint": encoder.fingerprint(),
        "encoder": encoder.name,
        "dim": int(emb.shape[1]),
        "token_dim": int(tok.shape[2]) if tok is not None else int(encoder.token_dim),
        "tokens": tokens or None,
        "token_grid_stored": list(tok_grid) if tokens else None,
        "dtype": dtype,
        "n": int(keep.size),
        "n_failed": len(failed),
        "timing": timing,
    }
    with atomic_write(out / "meta.json") as fh:
        json.dump(meta, fh, indent=1)
    shutil.rmtree(part, ignore_errors=True)
    return FeatureStore.open(out, key=key)
