"""The retrieval database: embeddings of geotagged photos in FAISS, metadata in Parquet.

A database folder holds

- ``manifest.json``: format, model id and version, dimension, FAISS factory,
  count, creation and update times, and the generation of the files below;
- ``vectors-<gen>.faiss``: the FAISS index (inner product on L2-normalised
  vectors, i.e. cosine similarity; exact ``Flat`` by default);
- ``meta-<gen>.parquet``: one row per vector, in index order: ``id``, ``lat``,
  ``lon``, ``path``, ``source`` (``labels`` or ``exif``).

Saving writes a new generation of both data files, then replaces the manifest
atomically, then deletes the old generation: a reader, or a save interrupted at
any point, always sees one complete, consistent database. The manifest records
each data file's size and SHA-256, so a truncated or altered file is named as
damaged on open instead of being half-read; and a save holds the database's
lock (:mod:`geolocus.index.lock`), so two writers never interleave.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geolocus import __version__
from geolocus.data.neighbours import Neighbours
from geolocus.errors import InputError
from geolocus.files import atomic_path, atomic_write, sha256_file
from geolocus.geo import validate_latlon
from geolocus.index.lock import database_lock

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: On open, data files up to this many bytes (together) are checked against their SHA-256;
#: larger ones only against their size (``index info --check`` always hashes them).
VERIFY_BYTES = 256 << 20


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass
class Manifest:
    """What a database was built with; checked on open so vectors are never mixed."""

    model: str
    dim: int
    model_version: str = ""
    factory: str = "Flat"
    metric: str = "inner_product"
    normalized: bool = True
    count: int = 0
    generation: int = 0
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    format: int = FORMAT_VERSION
    geolocus_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: data file name -> {"bytes": n, "sha256": hex}
    files: dict[str, Any] = field(default_factory=dict)


def damaged(path: str | os.PathLike[str], file: str, why: str) -> InputError:
    """The one error for a database whose files cannot be trusted."""
    return InputError(f"database {path} is damaged: {file} {why}")


def list_some(ids: np.ndarray, limit: int = 3) -> str:
    """``a, b, c and 4 more``: the first few of a list, for a one-line message."""
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


#: FAISS factories whose stored vectors come back only approximately (no unit-norm check).
_LOSSY = re.compile(r"PQ|SQ|LSH|RQ|LSQ")


def _last_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__


_TYPES = {"model": str, "dim": int, "count": int, "generation": int, "factory": str,
          "format": int, "extra": dict, "files": dict}  # fmt: skip


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """The manifest of the database at ``path``; garbage there is "damaged", not a traceback."""
    p = Path(path)
    mpath = p / MANIFEST
    if not mpath.exists():
        raise InputError(f"no geolocus database at {p} (missing {MANIFEST})")
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"cannot read {mpath}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(p, MANIFEST, f"is not valid JSON ({e})") from None
    known = {f.name for f in fields(Manifest)}
    if not isinstance(raw, dict) or not {"model", "dim"} <= raw.keys() <= known:
        raise damaged(p, MANIFEST, "is not a geolocus database manifest")
    man = Manifest(**raw)
    for name, typ in _TYPES.items():
        value = getattr(man, name)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise damaged(p, MANIFEST, f"has a {name!r} of the wrong type ({value!r})")
    if man.dim <= 0 or man.count < 0 or man.generation < 0:
        raise damaged(p, MANIFEST, "has a negative count, dimension or generation")
    if man.format > FORMAT_VERSION:
        raise InputError(
            f"database {p} has format {man.format}; this geolocus reads up to {FORMAT_VERSION}"
        )
    return man


def _check_files(p: Path, man: Manifest, files: tuple[Path, ...], verify: bool | None) -> None:
    """Compare data files with the sizes and SHA-256 the manifest records (when it does)."""
    sizes = {f: f.stat().st_size for f in files}
    for f, size in sizes.items():
        rec = man.files.get(f.name)
        if isinstance(rec, dict) and rec.get("bytes") != size:
            raise damaged(p, f.name, f"has {size} bytes where {rec.get('bytes')} were written")
    if verify is None:
        verify = sum(sizes.values()) <= VERIFY_BYTES
    if not verify:
        return
    for f in files:
        rec = man.files.get(f.name)
        if isinstance(rec, dict) and rec.get("sha256") != sha256_file(f):
            raise damaged(p, f.name, "does not match its checksum: its bytes were altered")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a core dependency of the index
        raise InputError("the retrieval database needs faiss: pip install faiss-cpu") from None
    return faiss


class Database:
    """Geotagged embeddings with ``add`` and ``search`` (near and far neighbours)."""

    def __init__(
        self, path: str | os.PathLike[str], manifest: Manifest, index: Any, meta: pd.DataFrame
    ) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.index = index
        self.meta = meta.reset_index(drop=True)
        self._id_set: set[str] | None = None

    # ---- creation and persistence -------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        dim: int,
        model: str,
        model_version: str = "",
        factory: str = "Flat",
        normalized: bool = True,
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> Database:
        """A new, empty database (written by :meth:`save`)."""

        p = Path(path)
        generation = 0
        if (p / MANIFEST).exists():
            if not overwrite:
                raise InputError(f"a database already exists at {p} (use add, or overwrite it)")
            with contextlib.suppress(InputError):  # the next save replaces that generation
                generation = read_manifest(p).generation
        faiss = _faiss()
        try:
            index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else "invalid"
            raise InputError(f"invalid FAISS factory string {factory!r}: {msg}") from None
        man = Manifest(
            model=model,
            dim=int(dim),
            model_version=model_version,
            factory=factory,
            normalized=normalized,
            generation=generation,
            geolocus_version=__version__,
            extra=dict(extra or {}),
        )
        meta = pd.DataFrame(
            {
                "id": pd.Series(dtype=str),
                "lat": pd.Series(dtype=float),
                "lon": pd.Series(dtype=float),
                "path": pd.Series(dtype=str),
                "source": pd.Series(dtype=str),
            }
        )
        return cls(p, man, index, meta)

    @classmethod
    def exists(cls, path: str | os.PathLike[str]) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool | None = None) -> Database:
        """Load a database folder, checking that its parts are intact and agree.

        ``verify`` hashes the data files against the manifest's SHA-256 (default:
        when they are at most :data:`VERIFY_BYTES` together; sizes are always checked).
        A save by another process while this one reads is waited out by reading again.
        """
        p = Path(path)
        for attempt in range(3):
            man = read_manifest(p)
            try:
                return cls._load(p, man, verify)
            except (InputError, OSError) as e:
                err = e
            with contextlib.suppress(InputError):
                if attempt < 2 and read_manifest(p).generation != man.generation:
                    continue  # another process saved meanwhile: read the new generation
            break
        if isinstance(err, OSError):
            raise InputError(f"cannot read the database {p}: {err.strerror or err}") from None
        raise err

    @classmethod
    def _load(cls, p: Path, man: Manifest, verify: bool | None) -> Database:
        vpath, mepath = cls._files(p, man.generation)
        for f in (vpath, mepath):
            if not f.exists():
                raise damaged(p, f.name, f"is missing (the manifest names generation "
                              f"{man.generation})")  # fmt: skip
        _check_files(p, man, (vpath, mepath), verify)
        faiss = _faiss()
        try:
            index = faiss.read_index(str(vpath))
        except (RuntimeError, MemoryError) as e:
            raise damaged(p, vpath.name, f"cannot be read by FAISS ({_last_line(e)})") from None
        try:
            meta = pd.read_parquet(mepath)
        except Exception as e:  # pyarrow raises several types for a broken file
            raise damaged(p, mepath.name, f"cannot be read ({_last_line(e)})") from None
        missing = {"id", "lat", "lon"} - set(meta.columns)
        if missing:
            raise damaged(p, mepath.name, f"has no column {', '.join(sorted(missing))}")
        if index.ntotal != len(meta) or len(meta) != man.count or index.d != man.dim:
            raise damaged(
                p,
                vpath.name,
                f"disagrees with the rest (inconsistent): {index.ntotal} vectors of dimension "
                f"{index.d}, {len(meta)} metadata rows, manifest says {man.count} of dimension "
                f"{man.dim}",
            )
        return cls(p, man, index, meta)

    @staticmethod
    def _files(p: Path, gen: int) -> tuple[Path, Path]:
        return p / f"vectors-{gen}.faiss", p / f"meta-{gen}.parquet"

    def save(self, wait: bool = False) -> None:
        """Write a new generation of the files, then switch the manifest to it atomically.

        Holds the database's lock (``wait``: for another writer to finish), and
        refuses to overwrite a generation some other process saved after this
        database was opened or created (its additions would be lost).
        """
        with database_lock(self.path, wait=wait):
            on_disk = None
            with contextlib.suppress(InputError):
                on_disk = read_manifest(self.path).generation if self.exists(self.path) else None
            if on_disk is not None and on_disk != self.manifest.generation:
                raise InputError(
                    f"the database at {self.path} was changed by another process since it was "
                    "opened: open it again and redo this change"
                )
            try:
                self._write()
            except OSError as e:
                where = f"{e.filename}: " if e.filename else ""
                raise InputError(
                    f"cannot write the database {self.path}: {where}{e.strerror or e}"
                ) from None

    def _write(self) -> None:
        faiss = _faiss()
        new = self.manifest.generation + 1
        vpath, mepath = self._files(self.path, new)
        files = {}
        with atomic_path(vpath) as tmp:
            faiss.write_index(self.index, str(tmp))
            files[vpath.name] = {"bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
        with atomic_path(mepath) as tmp:
            self.meta.to_parquet(tmp, index=False)
            files[mepath.name] = {"bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
        man = replace(
            self.manifest, generation=new, count=int(self.index.ntotal), updated=_now(), files=files
        )
        with atomic_write(self.path / MANIFEST) as fh:
            json.dump(asdict(man), fh, indent=2)
            fh.write("\n")
        self.manifest = man
        for f in (*self.path.glob("vectors-*.faiss"), *self.path.glob("meta-*.parquet")):
            if f.name not in files:  # older generations, and any left by a crashed save
                f.unlink(missing_ok=True)

    # ---- contents -------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(self.meta["id"].to_numpy(dtype=object))

    @property
    def coords(self) -> np.ndarray:
        """``(n, 2)`` latitude and longitude of every photo, in index order."""
        return np.asarray(self.meta[["lat", "lon"]].to_numpy(dtype=float))

    def __contains__(self, image_id: str) -> bool:
        if self._id_set is None:
            self._id_set = set(self.meta["id"])
        return image_id in self._id_set

    def vectors(self, rows: np.ndarray | range | None = None) -> np.ndarray:
        """The stored (normalised) vectors of ``rows`` (default: all), read back from FAISS:
        exact for Flat and HNSW, approximate for compressed indexes (PQ, SQ); an index
        that cannot give them back is an :class:`InputError` that says so."""
        faiss = _faiss()
        n = len(self)
        rows = range(n) if rows is None else rows
        if not isinstance(rows, range):
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            if rows.size and np.array_equal(rows, np.arange(rows[0], rows[0] + rows.size)):
                rows = range(int(rows[0]), int(rows[0]) + rows.size)
        with contextlib.suppress(RuntimeError):
            faiss.extract_index_ivf(self.index).make_direct_map()
        try:
            if isinstance(rows, range):
                return np.asarray(self.index.reconstruct_n(rows.start, len(rows)), np.float32)
            if rows.size == 0:
                return np.zeros((0, self.manifest.dim), np.float32)
            return np.stack([self.index.reconstruct(int(r)) for r in rows]).astype(np.float32)
        except RuntimeError as e:
            raise InputError(
                f"the FAISS index {self.manifest.factory!r} of {self.path} cannot return its "
                f"vectors ({_last_line(e)})"
            ) from None

    def check_vectors(self, chunk: int = 65536) -> str:
        """Read every vector back, ``chunk`` rows at a time: any all-zero or non-finite
        row (or, where the index is exact, one not of unit length) makes the database
        damaged (an :class:`InputError` naming a few ids). Returns what was checked, in
        one line; an index that cannot give its vectors back is said not checked."""
        n, man = len(self), self.manifest
        exact = man.normalized and not _LOSSY.search(man.factory)
        zero: list[int] = []
        bad: list[int] = []
        off: list[int] = []
        for s in range(0, n, chunk):
            try:
                v = self.vectors(range(s, min(n, s + chunk)))
            except InputError as e:
                return f"vectors: not checked: {e}"
            finite = np.isfinite(v).all(axis=1)
            bad += (s + np.flatnonzero(~finite)).tolist()
            norms = np.linalg.norm(np.where(np.isfinite(v), v, 0.0), axis=1)
            zero += (s + np.flatnonzero(finite & (norms == 0))).tolist()
            if exact:
                far = finite & (norms > 0) & (np.abs(norms - 1) > 1e-3)
                off += (s + np.flatnonzero(far)).tolist()
        vname, ids = self._files(self.path, man.generation)[0].name, self.ids
        for rows, what in ((zero, "all-zero"), (bad, "non-finite"), (off, "not of unit length")):
            if rows:
                kind = f"{what} vectors" if what != "not of unit length" else f"vectors {what}"
                raise damaged(
                    self.path, vname, f"holds {len(rows)} {kind} (ids {list_some(ids[rows])})"
                )
        unit = ", all of unit length" if exact else ""
        return f"vectors: {n} read back, none all zeros or non-finite{unit}"

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.manifest.dim:
            raise InputError(
                f"vectors must have shape (n, {self.manifest.dim}) for this database, got {x.shape}"
            )
        if not np.isfinite(x).all():
            raise InputError("vectors contain NaN or infinity")
        if self.manifest.normalized:
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.maximum(norms, 1e-12)
        return x

    def add(
        self,
        vectors: np.ndarray,
        ids: list[str] | np.ndarray,
        latlon: np.ndarray,
        paths: list[str] | None = None,
        source: str = "labels",
    ) -> int:
        """Append photos; ids already in the database are skipped. Returns how many were added."""
        x = self._prepare(vectors)
        ids = np.asarray(ids, dtype=object).reshape(-1)
        ll = np.asarray(latlon, dtype=float).reshape(-1, 2)
        if not (len(ids) == len(x) == len(ll)):
            raise InputError(
                f"add: {len(x)} vectors, {len(ids)} ids and {len(ll)} coordinates differ"
            )
        validate_latlon(ll[:, 0], ll[:, 1], what="database coordinates")
        if len(set(ids)) != len(ids):
            raise InputError("add: duplicate ids in one batch")
        keep = np.array([i not in self for i in ids], dtype=bool)
        if not keep.any():
            return 0
        x, ids, ll = x[keep], ids[keep], ll[keep]
        pth = np.asarray(paths, dtype=object)[keep] if paths is not None else np.full(len(ids), "")
        if not self.index.is_trained:
            n_needed = self._training_size()
            if len(x) < n_needed:
                raise InputError(
                    f"FAISS index {self.manifest.factory!r} must be trained on at least "
                    f"{n_needed} vectors, got {len(x)}; use 'Flat' for small databases"
                )
            self.index.train(x)
        self.index.add(x)
        rows = pd.DataFrame(
            {
                "id": ids.astype(str),  # type: ignore[union-attr]  # made an array above
                "lat": ll[:, 0],
                "lon": ll[:, 1],
                "path": pth.astype(str),
                "source": source,
            }
        )
        self.meta = rows if self.meta.empty else pd.concat([self.meta, rows], ignore_index=True)
        self._id_set = None
        return len(rows)

    def _training_size(self) -> int:
        """A lower bound on training vectors for the index's coarse quantiser (IVF lists)."""
        faiss = _faiss()
        try:
            ivf = faiss.extract_index_ivf(self.index)
            return int(ivf.nlist)
        except RuntimeError:
            return 1

    # ---- search ---------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int = 20,
        k_far: int = 0,
        query_ids: list[str] | np.ndarray | None = None,
        exclude_self: bool = False,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> Neighbours:
        """Near neighbours (highest cosine similarity) and far ones (the negated query).

        ``exclude_self`` drops, for each query, the database photo with the
        query's own id — for leave-one-out use of a database on its own photos.
        ``nprobe`` (IVF indexes: lists visited) and ``ef_search`` (HNSW indexes:
        candidate-list size) trade speed for recall; exact indexes ignore neither.
        """
        if len(self) == 0:
            raise InputError(f"the database at {self.path} is empty")
        q = self._prepare(queries)
        n = len(q)
        qids = np.asarray(
            [str(i) for i in range(n)] if query_ids is None else query_ids, dtype=object
        )
        self._set_search_params(nprobe, ef_search)
        coords, db_ids = self.coords, self.ids
        near_s, near_i = self._knn(q, k, qids if exclude_self else None)
        out = {
            "near": coords[near_i],
            "near_scores": near_s,
            "near_ids": db_ids[near_i],
        }
        if k_far > 0:
            far_s, far_i = self._knn(-q, k_far, qids if exclude_self else None)
            out.update(far=coords[far_i], far_scores=-far_s, far_ids=db_ids[far_i])
        else:
            out.update(far=np.zeros((n, 0, 2)), far_scores=None, far_ids=None)
        return Neighbours(ids=qids, **out)

    def _set_search_params(self, nprobe: int | None, ef_search: int | None) -> None:
        faiss = _faiss()
        for name, value, kind in (("nprobe", nprobe, "IVF"), ("efSearch", ef_search, "HNSW")):
            if value is None:
                continue
            try:
                faiss.ParameterSpace().set_index_parameter(self.index, name, int(value))
            except RuntimeError:
                raise InputError(
                    f"{name} applies to {kind} indexes; this database uses "
                    f"{self.manifest.factory!r}"
                ) from None

    def _knn(
        self, q: np.ndarray, k: int, exclude: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by inner product; with ``exclude``, drop each query's own id.

        Rows the index cannot fill (k larger than the database) repeat the last
        valid neighbour, so downstream arrays keep a fixed shape.
        """
        k_eff = min(k + (1 if exclude is not None else 0), len(self))
        scores, rows = self.index.search(q, k_eff)
        if exclude is not None:
            db_ids = self.ids
            keep = db_ids[np.clip(rows, 0, None)] != exclude[:, None]
            keep &= rows >= 0
            order = np.argsort(~keep, axis=1, kind="stable")
            rows = np.take_along_axis(rows, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
            valid = np.take_along_axis(keep, order, axis=1)
        else:
            valid = rows >= 0
        rows, scores, valid = rows[:, :k], scores[:, :k], valid[:, :k]
        if rows.shape[1] < k or not valid.all():
            rows, scores = _pad(rows, scores, valid, k)
        return scores.astype(float), rows


def _pad(
    rows: np.ndarray, scores: np.ndarray, valid: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fill invalid or missing slots with each row's last valid neighbour."""
    n = rows.shape[0]
    out_r = np.empty((n, k), dtype=rows.dtype)
    out_s = np.empty((n, k), dtype=scores.dtype)
    for i in range(n):
        r, s = rows[i][valid[i]], scores[i][valid[i]]
        if len(r) == 0:
            raise InputError("the database has no neighbour to return for a query")
        reps = k - len(r)
        out_r[i] = np.concatenate([r, np.repeat(r[-1:], reps)])[:k]
        out_s[i] = np.concatenate([s, np.repeat(s[-1:], reps)])[:k]
    return out_r, out_s
