"""Embedding shard by shard into a staging area, and the database written from it.

Large inputs are embedded one shard (:class:`geolocus.data.sources.ShardSpec`)
at a time, by any executor (:mod:`geolocus.index.executors`). Each finished
shard is one file in ``DB/.staging/``: float16 retrieval vectors, ids,
positions, paths and the shard's problems, with a SHA-256 over all of it,
written atomically and fsynced. A shard is done when its file exists and
verifies, so a finished shard is never redone and an interrupted one (no file:
it is written only once whole) is redone whole; a full disk leaves the earlier
file, if any, in place. The file name carries the shard's key and the
embedder's version, so a shard changed since, or staged by another model, is
never reused.

A database, new or added to, is written from the staged shards by
:func:`write_from_shards` alone, one shard at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geolocus.data.images import load_image
from geolocus.data.sources import Record, ShardSpec, SourceProblem, read_shard
from geolocus.errors import ImageError, InputError
from geolocus.files import atomic_path
from geolocus.index.database import Database
from geolocus.nn import eval_mode

if TYPE_CHECKING:
    from geolocus.models.embedder import Embedder

STAGING = ".staging"
FORMAT = 1


@dataclass
class ShardOutput:
    """One embedded shard: what goes into its staging file."""

    name: str
    key: str
    ids: list[str]
    paths: list[str]
    latlon: np.ndarray  # (n, 2) float64
    vectors: np.ndarray  # (n, dim) float16
    problems: list[SourceProblem] = field(default_factory=list)
    seconds: float = 0.0  # reading, decoding and embedding (not staged: 0 once reloaded)
    forward_s: float = 0.0  # of which the model's forward passes

    def __len__(self) -> int:
        return len(self.ids)


def _usable(v: np.ndarray) -> np.ndarray:
    e = np.asarray(v, dtype=np.float32)
    return np.isfinite(e).all(axis=1) & (np.abs(e).max(axis=1, initial=0.0) > 0)


def _batches(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for r in records:
        batch.append(r)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def embed_shard(
    embedder: Embedder,
    spec: ShardSpec,
    batch_size: int = 32,
    loader_threads: int = 1,
    on_photos: Callable[[int], None] | None = None,
) -> ShardOutput:
    """Read, decode and embed one shard (the next batch decoded while the model runs).

    Photos that cannot be decoded, or whose vector is all zeros or not finite, are
    problems of the shard, as are the source's own (bad members, positions).
    """
    import torch

    t0 = time.perf_counter()
    forward_s = 0.0
    problems: list[SourceProblem] = []
    prep = embedder.encoder.preprocessing

    def bad(r: Record, why: str) -> SourceProblem:
        where = r.image if isinstance(r.image, str) else ""  # a file: the report names it
        return SourceProblem(spec.name, r.id, "unreadable", why, path=where)

    def decode(batch: list[Record]) -> list[tuple[Record, np.ndarray | None, str]]:
        out: list[tuple[Record, np.ndarray | None, str]] = []
        for r in batch:
            try:
                out.append((r, prep.image(load_image(r.image, min_size=prep.resize)), ""))
            except ImageError as e:
                out.append((r, None, str(e)))
            except Exception as e:  # a decoder bug on one photo must not end a long run
                out.append((r, None, f"{type(e).__name__}: {e}".splitlines()[0]))
        return out

    ids: list[str] = []
    paths: list[str] = []
    coords: list[tuple[float, float]] = []
    vecs: list[np.ndarray] = []
    batches = _batches(read_shard(spec, problems.append), batch_size)
    with (
        ThreadPoolExecutor(max_workers=max(1, loader_threads)) as pool,
        eval_mode(embedder.encoder),
        torch.no_grad(),
    ):
        first = next(batches, None)
        pending = pool.submit(decode, first) if first is not None else None
        while pending is not None:
            loaded = pending.result()
            nxt = next(batches, None)  # read (sequentially) and decode the next meanwhile
            pending = pool.submit(decode, nxt) if nxt is not None else None
            good = [(r, a) for r, a, _ in loaded if a is not None]
            for r, a, err in loaded:
                if a is None:
                    problems.append(bad(r, err))
            if good:
                x = torch.from_numpy(np.stack([a for _, a in good]))
                t = time.perf_counter()
                v = np.asarray(embedder.embed(embedder.encoder(x)), dtype=np.float32)
                forward_s += time.perf_counter() - t
                v16 = v.astype(np.float16)
                ok = _usable(v16)
                for (r, _), fine, row in zip(good, ok, v16, strict=True):
                    if not fine:
                        problems.append(bad(r, "all-zero or non-finite embedding"))
                        continue
                    ids.append(r.id)
                    paths.append(r.path)
                    coords.append((r.lat, r.lon))
                    vecs.append(row)
            if on_photos is not None:
                on_photos(len(loaded))
    dim = int(embedder.dim)
    return ShardOutput(
        name=spec.name,
        key=spec.key,
        ids=ids,
        paths=paths,
        latlon=np.asarray(coords, dtype=np.float64).reshape(-1, 2),
        vectors=np.stack(vecs) if vecs else np.zeros((0, dim), np.float16),
        problems=problems,
        seconds=time.perf_counter() - t0,
        forward_s=forward_s,
    )


# ------------------------------------------------------------------ staging files


def shard_file(staging: Path, spec: ShardSpec, version: str) -> Path:
    """Where a shard's output is staged: named by its key and the embedder's version."""
    h = hashlib.sha256(f"{FORMAT}|{spec.key}|{version}".encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.name)[-80:]
    return staging / f"{safe}-{h}.npz"


def _digest(version: str, arrays: dict[str, np.ndarray], problems: str) -> str:
    h = hashlib.sha256(f"{FORMAT}|{version}|{problems}".encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"|{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _arrays(out: ShardOutput) -> dict[str, np.ndarray]:
    return {
        "vectors": np.ascontiguousarray(out.vectors, dtype=np.float16),
        "ids": np.asarray(out.ids, dtype=np.str_).reshape(-1),
        "paths": np.asarray(out.paths, dtype=np.str_).reshape(-1),
        "latlon": np.asarray(out.latlon, dtype=np.float64).reshape(-1, 2),
        "key": np.asarray(out.key),
        "name": np.asarray(out.name),
    }


def save_shard(path: Path, out: ShardOutput, version: str) -> None:
    """Write a shard's output atomically and durably: a crash or a full disk never leaves
    half a file under ``path`` (nor replaces a good one)."""
    arrays = _arrays(out)
    text = json.dumps([asdict(p) for p in out.problems])
    digest = _digest(version, arrays, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        payload: dict[str, Any] = {
            **arrays,
            "problems": np.asarray(text),
            "digest": np.asarray(digest),
        }
        np.savez(fh, **payload)
        fh.flush()
        os.fsync(fh.fileno())


def load_shard(path: Path, version: str, dim: int | None = None) -> ShardOutput | None:
    """A staged shard if it is there and every check passes (checksum, sizes, usable
    vectors), else None: it is then embedded again."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("vectors", "ids", "paths", "latlon", "key", "name")}
            text, digest = str(z["problems"]), str(z["digest"])
        if digest != _digest(version, arrays, text):
            return None
        v = arrays["vectors"]
        n = len(arrays["ids"])
        if v.dtype != np.float16 or v.ndim != 2 or len(v) != n or len(arrays["paths"]) != n:
            return None
        if dim is not None and v.shape[1] != dim:
            return None
        if arrays["latlon"].shape != (n, 2) or not _usable(v).all():
            return None
        return ShardOutput(
            name=str(arrays["name"]),
            key=str(arrays["key"]),
            ids=[str(i) for i in arrays["ids"]],
            paths=[str(p) for p in arrays["paths"]],
            latlon=arrays["latlon"],
            vectors=v,
            problems=[SourceProblem(**p) for p in json.loads(text)],
        )
    except Exception:  # missing, truncated or foreign: the shard is simply done again
        return None


# --------------------------------------------------------------------- the database


def write_from_shards(
    db: Database,
    shard_files: Sequence[Path],
    *,
    version: str,
    source: str,
) -> tuple[int, list[SourceProblem]]:
    """Add the staged shards to ``db`` (a new database, or an existing one being added
    to), in order, without saving it; return how many photos were added and the ids left
    out: already in ``db``, or in an earlier shard. One shard in memory at a time, except
    that an index that must be trained first gets its training vectors (the first
    shards) in one batch."""
    trained = db.is_compressed or db.index is None or db.index.is_trained
    need = 0 if trained else db._training_size()
    seen: set[str] = set()
    left_out: list[SourceProblem] = []
    held: list[ShardOutput] = []
    added = 0

    def add(parts: list[ShardOutput]) -> int:
        ids = [i for p in parts for i in p.ids]
        if not ids:
            return 0
        return db.add(
            np.concatenate([p.vectors for p in parts]).astype(np.float32),
            ids,
            np.concatenate([p.latlon for p in parts]),
            paths=[x for p in parts for x in p.paths],
            source=source,
        )

    for f in shard_files:
        out = load_shard(f, version)
        if out is None:
            raise InputError(f"{f}: a staged shard changed or vanished while in use; run again")
        keep = []
        for j, i in enumerate(out.ids):
            if i in seen:
                left_out.append(SourceProblem(out.name, i, "repeated key", "in an earlier shard"))
            elif i in db:
                left_out.append(SourceProblem(out.name, i, "already in database"))
            else:
                seen.add(i)
                keep.append(j)
        if len(keep) < len(out.ids):
            idx = np.asarray(keep, dtype=np.int64)
            out = ShardOutput(
                out.name,
                out.key,
                [out.ids[j] for j in keep],
                [out.paths[j] for j in keep],
                out.latlon[idx],
                out.vectors[idx],
            )
        held.append(out)
        if sum(len(p) for p in held) >= need:
            added += add(held)
            held, need = [], 0
    if held:
        total = sum(len(p) for p in held)
        if total and need and total < need:
            raise InputError(
                f"FAISS index {db.manifest.factory!r} must be trained on at least {need} "
                f"vectors, and there are {total} photos; use 'Flat' for small databases"
            )
        added += add(held)
    return added, left_out
