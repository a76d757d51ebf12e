"""The retrieval database: embeddings of geotagged photos in FAISS, metadata in Parquet.

A small (format 1) database folder holds

- ``manifest.json``: format, model id and version, dimension, FAISS factory,
  count, creation and update times, and the generation of the files below;
- ``vectors-<gen>.faiss``: the FAISS index (inner product on L2-normalised
  vectors, i.e. cosine similarity; exact ``Flat`` by default);
- ``meta-<gen>.parquet``: one row per vector, in index order: ``id``, ``lat``,
  ``lon``, ``path``, ``source`` (``labels`` or ``exif``).

A large one (format 2: more than :data:`~geolocus.index.compressed.AUTO_THRESHOLD`
photos with ``factory="auto"``, the default, or any ``IVF…,PQ…`` factory) keeps
in ``vectors-<gen>.faiss`` an IVF index of PQ codes, memory-mapped at search
time, and its rows as memory-mapped columns (:mod:`geolocus.index.columns`):
float16 vectors that re-rank the index's best candidates exactly, coordinates
and ids; ``meta-<gen>.parquet`` then holds only ``path`` and ``source``, read
when asked for. The search settings chosen at build time, and the recall they
reached, are in the manifest's ``search``.

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
import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geolocus import __version__
from geolocus.data.neighbours import Neighbours
from geolocus.errors import InputError
from geolocus.files import atomic_path, atomic_write, sha256_file
from geolocus.geo import validate_latlon
from geolocus.index import compressed
from geolocus.index.columns import (
    PATTERNS,
    Columns,
    NpyWriter,
    Spool,
    clear_spools,
    decode_ids,
    release,
)
from geolocus.index.lists import LIST_PATTERNS, Lists, scan_search, write_lists
from geolocus.index.lock import database_lock

FORMAT_VERSION = 2
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
    #: how the index was chosen and is searched: ``choice`` ("auto" or "factory"),
    #: for compressed indexes ``nprobe``, ``rerank`` and the ``recall_at_20`` they reached
    search: dict[str, Any] = field(default_factory=dict)


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
          "format": int, "extra": dict, "files": dict, "search": dict}  # fmt: skip


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
        self,
        path: str | os.PathLike[str],
        manifest: Manifest,
        index: Any,
        meta: pd.DataFrame | None,
        columns: Columns | None = None,
    ) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.index = index
        self._meta = None if meta is None else meta.reset_index(drop=True)
        self._columns = columns
        self._spool: Spool | None = None
        self._id_set: set[str] | None = None
        self._ids: np.ndarray | None = None
        self._coords: np.ndarray | None = None

    # ---- creation and persistence -------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        dim: int,
        model: str,
        model_version: str = "",
        factory: str = "auto",
        normalized: bool = True,
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
        auto_threshold: int = compressed.AUTO_THRESHOLD,
        target_recall: float = compressed.TARGET_RECALL,
    ) -> Database:
        """A new, empty database (written by :meth:`save`).

        ``factory="auto"``: exact ``Flat`` up to ``auto_threshold`` photos, a
        compressed index above (chosen at save, when the count is known); any
        FAISS factory string otherwise. A compressed index is searched with the
        cheapest settings that reach recall@20 ≥ ``target_recall`` (tuned at save)."""

        p = Path(path)
        generation = 0
        if (p / MANIFEST).exists():
            if not overwrite:
                raise InputError(f"a database already exists at {p} (use add, or overwrite it)")
            with contextlib.suppress(InputError):  # the next save replaces that generation
                generation = read_manifest(p).generation
        faiss = _faiss()
        auto = factory == "auto"
        try:
            index = faiss.index_factory(
                int(dim), "Flat" if auto else factory, faiss.METRIC_INNER_PRODUCT
            )
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else "invalid"
            raise InputError(f"invalid FAISS factory string {factory!r}: {msg}") from None
        search: dict[str, Any] = {
            "choice": "auto" if auto else "factory",
            "target_recall_at_20": float(target_recall),
        }
        if auto:
            search["threshold"] = int(auto_threshold)
        man = Manifest(
            model=model,
            dim=int(dim),
            model_version=model_version,
            factory="Flat" if auto else factory,
            normalized=normalized,
            generation=generation,
            format=2 if compressed.is_compressed(factory) else 1,
            geolocus_version=__version__,
            extra=dict(extra or {}),
            search=search,
        )
        return cls(p, man, index, _empty_meta())

    @property
    def is_compressed(self) -> bool:
        """Codes in the index, exact float16 vectors beside it for re-ranking (format 2)."""
        return self.manifest.format >= 2

    @classmethod
    def exists(cls, path: str | os.PathLike[str]) -> bool:
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool | None = None) -> Database:
        """Load a database folder, checking that its parts are intact and agree.

        ``verify`` hashes the data files against the manifest's SHA-256 (default:
        when they are at most :data:`VERIFY_BYTES` together; sizes are always checked).
        A save by another process while this one reads is waited out by reading again.
        A compressed database is memory-mapped: opening it reads almost nothing.
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
        files = cls._files(p, man.generation, man.format >= 2)
        lists = cls._list_files(p, man.generation)
        if man.format >= 2 and all(f.name in man.files for f in lists):
            files += lists
        for f in files:
            if not f.exists():
                raise damaged(p, f.name, f"is missing (the manifest names generation "
                              f"{man.generation})")  # fmt: skip
        _check_files(p, man, files, verify)
        vpath, mepath = files[0], files[1]
        try:
            index = compressed.read_index(str(vpath), mmap=man.format >= 2)
        except (RuntimeError, MemoryError) as e:
            raise damaged(p, vpath.name, f"cannot be read by FAISS ({_last_line(e)})") from None
        if man.format >= 2:
            return cls._load_columns(p, man, index, files)
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

    @classmethod
    def _load_columns(cls, p: Path, man: Manifest, index: Any, files: tuple[Path, ...]) -> Database:
        arrays = {}
        for kind, f in zip(("exact", "coords", "ids"), files[2:5], strict=True):
            try:
                arrays[kind] = np.load(f, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise damaged(p, f.name, f"cannot be read ({_last_line(e)})") from None
        cols = Columns(**arrays)
        want = {"exact": (man.count, man.dim), "coords": (man.count, 2), "ids": (man.count,)}
        for (kind, shape), f in zip(want.items(), files[2:5], strict=True):
            if getattr(cols, kind).shape != shape:
                raise damaged(
                    p, f.name, f"disagrees with the rest (inconsistent): shape "
                    f"{getattr(cols, kind).shape}, manifest says {shape}",
                )  # fmt: skip
        if index.ntotal != man.count or index.d != man.dim:
            raise damaged(
                p,
                files[0].name,
                f"disagrees with the rest (inconsistent): {index.ntotal} vectors of dimension "
                f"{index.d}, manifest says {man.count} of dimension {man.dim}",
            )
        if len(files) > 5:
            try:
                cols.lists = Lists.open(*files[5:8])
            except (ValueError, OSError, EOFError) as e:
                raise damaged(p, files[5].name, f"cannot be read ({_last_line(e)})") from None
            why = cols.lists.agrees_with(index, man.count, man.dim)
            if why:
                raise damaged(p, files[5].name, f"disagrees with the rest (inconsistent): {why}")
        return cls(p, man, index, None, cols)

    @staticmethod
    def _files(p: Path, gen: int, columns: bool = False) -> tuple[Path, ...]:
        base = (p / f"vectors-{gen}.faiss", p / f"meta-{gen}.parquet")
        if not columns:
            return base
        return base + tuple(p / PATTERNS[k].format(gen=gen) for k in ("exact", "coords", "ids"))

    @staticmethod
    def _list_files(p: Path, gen: int) -> tuple[Path, Path, Path]:
        """The list-ordered vectors, their rows and the list offsets of a generation."""
        a, b, c = (p / LIST_PATTERNS[k].format(gen=gen) for k in ("lists", "listrows", "listoff"))
        return a, b, c

    def save(
        self,
        wait: bool = False,
        progress: bool = False,
        encoder: compressed.PartEncoder | None = None,
    ) -> None:
        """Write a new generation of the files, then switch the manifest to it atomically.

        Holds the database's lock (``wait``: for another writer to finish), and
        refuses to overwrite a generation some other process saved after this
        database was opened or created (its additions would be lost). A failure
        (a full disk) leaves the previous generation as it was. ``progress``: bars on
        stderr for the long steps of a compressed save (minutes at millions of rows).
        A new compressed index is encoded in parts (:func:`compressed.encode_in_parts`):
        a save interrupted there resumes at its last part; ``encoder`` spreads the
        parts over workers (Ray), else they are encoded here.
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
                if self.is_compressed:
                    self._write_compressed(progress, encoder)
                else:
                    self._write()
            except OSError as e:
                where = f"{e.filename}: " if e.filename else ""
                raise InputError(
                    f"cannot write the database {self.path}: {where}{e.strerror or e}"
                ) from None

    def retune(
        self, target: float | None = None, wait: bool = False, progress: bool = False
    ) -> dict[str, Any]:
        """Choose a compressed database's search settings again on its saved vectors, for
        recall@20 ``target`` (default: the one recorded), without rebuilding: to trade
        speed for recall, or after the settings tried have changed. Returns the new
        ``search`` of the manifest, which is switched atomically under the lock."""
        if not self.is_compressed or self._columns is None or self.index is None:
            raise InputError(
                f"the database at {self.path} searches exactly ({self.manifest.factory}): "
                "it has no search settings to tune"
            )
        self._require_saved("tune it")
        t = float(
            target
            if target is not None
            else self.manifest.search.get("target_recall_at_20", compressed.TARGET_RECALL)
        )
        if not 0.0 < t <= 1.0:
            raise InputError(f"a target recall is between 0 and 1, not {t}")
        with database_lock(self.path, wait=wait):
            on_disk = read_manifest(self.path).generation
            if on_disk != self.manifest.generation:
                raise InputError(
                    f"the database at {self.path} was changed by another process since it was "
                    "opened: open it again and tune it then"
                )
            exact, files = self._columns.exact, dict(self.manifest.files)
            if self._columns.lists is None:  # saved before list order existed: write it
                paths = self._list_files(self.path, self.manifest.generation)
                try:
                    with (
                        atomic_path(paths[0]) as tv,
                        atomic_path(paths[1]) as tr,
                        atomic_path(paths[2]) as to,
                    ):
                        self._write_lists(self.index, exact, (tv, tr, to), progress)
                        files.update(
                            {p.name: _record(t) for p, t in zip(paths, (tv, tr, to), strict=True)}
                        )
                except OSError as e:  # a full disk: the database stays as it was
                    raise InputError(
                        f"cannot write the database {self.path}: {e.strerror or e}"
                    ) from None
                self._columns.lists = Lists.open(*paths)
            near, far = _tune(self.index, exact, self._columns.lists, t, progress)
            search = dict(self.manifest.search)
            search.update(near.as_dict())
            search.update(far.as_dict("far_"))
            self._commit(self.manifest.generation, self.manifest.count, files, search=search)
        return search

    @staticmethod
    def _write_lists(
        index: Any, exact: np.ndarray, tmps: tuple[Path, Path, Path], progress: bool
    ) -> Lists:
        """The vectors in list order (:mod:`geolocus.index.lists`) written to ``tmps``
        (the caller's atomic paths), opened."""
        with _bar(len(exact), "ordering vectors by list", progress) as bar:
            write_lists(index, exact, tmps, bar.update)
        return Lists.open(*tmps)

    def _write(self) -> None:
        faiss = _faiss()
        new = self.manifest.generation + 1
        vpath, mepath = self._files(self.path, new)
        files = {}
        with atomic_path(vpath) as tmp:
            faiss.write_index(self.index, str(tmp))
            files[vpath.name] = _record(tmp)
        with atomic_path(mepath) as tmp:
            self.meta.to_parquet(tmp, index=False)
            files[mepath.name] = _record(tmp)
        self._commit(new, int(self.index.ntotal), files)

    def _commit(self, new: int, count: int, files: dict[str, Any], **changes: Any) -> None:
        """Switch the manifest to generation ``new``, then delete every other one."""
        man = replace(
            self.manifest, generation=new, count=count, updated=_now(), files=files, **changes
        )
        with atomic_write(self.path / MANIFEST) as fh:
            json.dump(asdict(man), fh, indent=2)
            fh.write("\n")
        self.manifest = man
        for pattern in ("vectors-*.faiss", "meta-*.parquet", "exact-*.npy", "coords-*.npy",
                        "ids-*.npy", "lists-*.npy", "listrows-*.npy", "listoff-*.npy"):  # fmt: skip
            for f in self.path.glob(pattern):
                if f.name not in files:  # older generations, and any left by a crashed save
                    f.unlink(missing_ok=True)
        clear_spools(self.path)
        shutil.rmtree(self.path / PARTS_DIR, ignore_errors=True)

    def _write_compressed(
        self, progress: bool = False, encoder: compressed.PartEncoder | None = None
    ) -> None:
        """Columns of the saved rows and the spooled ones, streamed into the new
        generation's files; the index trained (when new) on a sample of them and
        filled a chunk at a time; search settings tuned; then the manifest."""
        new, dim = self.manifest.generation + 1, self.manifest.dim
        vpath, mepath, epath, cpath, ipath = self._files(self.path, new, True)
        lpaths = self._list_files(self.path, new)
        spool, base = self._spool, self._columns
        n_base = len(base) if base is not None else 0
        n = n_base + (spool.count if spool is not None else 0)
        if n == 0:
            raise InputError(f"the database at {self.path} is empty: nothing to save")
        width = max(base.ids.dtype.itemsize if base is not None else 1,
                    spool.id_width() if spool is not None else 1)  # fmt: skip
        files: dict[str, Any] = {}
        with (
            atomic_path(epath) as te,
            atomic_path(cpath) as tc,
            atomic_path(ipath) as ti,
            atomic_path(lpaths[0]) as tl,
            atomic_path(lpaths[1]) as tr,
            atomic_path(lpaths[2]) as to,
        ):
            with open(te, "wb") as fe, open(tc, "wb") as fc, open(ti, "wb") as fi:
                digest = hashlib.blake2b(digest_size=16)
                ex = NpyWriter(fe, np.float16, (n, dim), hasher=digest)
                co = NpyWriter(fc, np.float64, (n, 2))
                ids = NpyWriter(fi, f"S{width}", (n,))
                with _bar(n, "writing columns", progress) as bar:
                    if base is not None:
                        for r in compressed.chunks(n_base):
                            ex.write(base.exact[r.start : r.stop])
                            co.write(base.coords[r.start : r.stop])
                            ids.write(base.ids[r.start : r.stop])
                            release(base.exact)
                            bar.update(len(r))
                    for part, arr in spool.iter_parts() if spool is not None else ():
                        ex.write(arr["vectors"])
                        co.write(arr["coords"])
                        ids.write(arr["ids"])
                        release(arr["vectors"])
                        bar.update(part.count)
                for w in (ex, co, ids):
                    w.close()
            exact = np.load(te, mmap_mode="r")
            index, trained = self._filled_index(exact, n_base, progress, te, digest, encoder)
            lists = self._write_lists(index, exact, (tl, tr, to), progress)
            target = self.manifest.search.get("target_recall_at_20", compressed.TARGET_RECALL)
            tuning, far = _tune(index, exact, lists, float(target), progress)
            with atomic_path(vpath) as tv:
                _faiss().write_index(index, str(tv))
                files[vpath.name] = _record(tv)
            with atomic_path(mepath) as tm:
                self._write_meta(tm, spool)
                files[mepath.name] = _record(tm)
            done = ((epath, te), (cpath, tc), (ipath, ti), *zip(lpaths, (tl, tr, to), strict=True))
            for path, tmp in done:
                files[path.name] = _record(tmp)
        search = dict(self.manifest.search)
        search.update(tuning.as_dict())
        search.update(far.as_dict("far_"))
        if trained:
            search["trained_at_count"] = n
        self._commit(new, n, files, search=search, factory=self.manifest.factory, format=2)
        self._spool = None
        self.index = index
        self._columns = Columns(
            np.load(epath, mmap_mode="r"),
            np.load(cpath, mmap_mode="r"),
            np.load(ipath, mmap_mode="r"),
            Lists.open(*lpaths),
        )
        self._meta, self._ids, self._coords = None, None, None
        grown = n / max(1, int(search.get("trained_at_count", n)))
        if grown > RETRAIN_GROWTH:
            warnings.warn(
                f"{self.path} has grown {grown:.1f}x since its quantisers were trained: "
                "retraining would pay (rebuild it with --overwrite)",
                stacklevel=2,
            )

    def _filled_index(
        self,
        exact: np.ndarray,
        n_base: int,
        progress: bool,
        exact_file: Path,
        digest: Any,
        encoder: compressed.PartEncoder | None,
    ) -> tuple[Any, bool]:
        """The index over all rows of ``exact``: the existing one with the new rows
        encoded by its quantisers, or (none trained yet) a new one trained here and
        encoded in parts under ``.index-parts/<key>``, the key naming the vectors
        (``digest`` of their bytes) and the factory, so a resumed save reuses its
        training and finished parts and never another save's."""
        n = len(exact)
        if self.index is not None and self.index.is_trained and self.index.ntotal == n_base:
            index = self.index
            try:
                with _bar(n - n_base, "encoding", progress) as bar:
                    compressed.add_rows(index, exact, n_base, on_rows=bar.update)
            except RuntimeError:  # memory-mapped read-only lists: load them, then add
                index = _faiss().read_index(
                    str(self._files(self.path, self.manifest.generation)[0])
                )
                with _bar(n - n_base, "encoding", progress) as bar:
                    compressed.add_rows(index, exact, n_base, on_rows=bar.update)
            return index, False
        factory = self.manifest.factory
        if self.manifest.search.get("choice") == "auto":
            factory = compressed.auto_factory(n, self.manifest.dim)
        key = hashlib.blake2b(
            f"parts2|{factory}|{n}|{self.manifest.dim}|{digest.hexdigest()}".encode(),
            digest_size=10,
        ).hexdigest()
        parts = self.path / PARTS_DIR / key
        for old in (self.path / PARTS_DIR).glob("*"):
            if old != parts:  # another save's work, on other vectors: never of use
                shutil.rmtree(old, ignore_errors=True)
        if (parts / "trained.faiss").is_file():
            trained = _faiss().read_index(str(parts / "trained.faiss"))
        else:
            with _bar(1, f"training {factory}", progress) as bar:
                trained = compressed.train(factory, self.manifest.dim, exact)
                bar.update(1)
        with _bar(n, "encoding", progress) as bar:
            index = compressed.encode_in_parts(
                trained, exact_file, parts, encoder=encoder, on_rows=bar.update
            )
        self.index = None
        self.manifest.factory = factory
        return index, True

    def _write_meta(self, tmp: Path, spool: Spool | None) -> None:
        """``path`` and ``source`` of every row, streamed batch by batch."""
        schema = pa.schema([("path", pa.string()), ("source", pa.string())])
        with pq.ParquetWriter(tmp, schema) as w:
            if self._columns is not None:
                old = self._files(self.path, self.manifest.generation)[1]
                for batch in pq.ParquetFile(old).iter_batches(columns=["path", "source"]):
                    w.write_batch(batch)
            for _, arr in spool.iter_parts() if spool is not None else ():
                w.write_table(
                    pa.table(
                        {"path": arr["paths"].tolist(), "source": arr["sources"].tolist()},
                        schema=schema,
                    )
                )

    # ---- contents -------------------------------------------------------------------
    def __len__(self) -> int:
        n = len(self._columns) if self._columns is not None else 0
        if not self.is_compressed and self.index is not None:
            n = int(self.index.ntotal)
        return n + (self._spool.count if self._spool is not None else 0)

    @property
    def meta(self) -> pd.DataFrame:
        """One row per photo (``id``, ``lat``, ``lon``, ``path``, ``source``); for a
        compressed database read when first asked for (not needed to search)."""
        if self._meta is None:
            self._require_saved("read its table")
            cols = self._columns
            if cols is None:
                return _empty_meta()
            table = pd.read_parquet(self._files(self.path, self.manifest.generation)[1])
            self._meta = pd.DataFrame(
                {
                    "id": decode_ids(cols.ids),
                    "lat": np.asarray(cols.coords[:, 0]),
                    "lon": np.asarray(cols.coords[:, 1]),
                    "path": table["path"].to_numpy(),
                    "source": table["source"].to_numpy(),
                }
            )
        return self._meta

    @meta.setter
    def meta(self, value: pd.DataFrame) -> None:
        self._meta = value

    def source_counts(self) -> dict[str, int]:
        """How many photos have their position from each source (``labels``, ``exif``),
        reading only that column of a compressed database."""
        if len(self) == 0:
            return {}
        if self._meta is None and self._columns is not None:
            f = self._files(self.path, self.manifest.generation)[1]
            col = pq.read_table(f, columns=["source"]).column("source").to_pandas()
            return {str(k): int(v) for k, v in col.value_counts().items()}
        return {str(k): int(v) for k, v in self.meta["source"].value_counts().items()}

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._require_saved("list its ids")
            if self._columns is not None:
                self._ids = decode_ids(self._columns.ids)
            else:
                self._ids = np.asarray(self.meta["id"].to_numpy(dtype=object))
        return self._ids

    @property
    def coords(self) -> np.ndarray:
        """``(n, 2)`` latitude and longitude of every photo, in index order."""
        if self._coords is None:
            self._require_saved("list its positions")
            if self._columns is not None:
                self._coords = self._columns.coords
            else:
                self._coords = np.asarray(self.meta[["lat", "lon"]].to_numpy(dtype=float))
        return self._coords

    def _ids_at(self, rows: np.ndarray) -> np.ndarray:
        """Ids of ``rows`` (any shape), without decoding the whole id column."""
        if self._columns is not None and self._ids is None:
            return decode_ids(self._columns.ids[rows])
        return np.asarray(self.ids[rows])

    def _require_saved(self, what: str) -> None:
        if self._spool is not None and self._spool.count:
            raise InputError(
                f"save the database at {self.path} before you {what}: {self._spool.count} "
                "photos were added to its compressed index since"
            )

    def __contains__(self, image_id: str) -> bool:
        if self._id_set is None:
            self._id_set = set(self.ids) if len(self) else set()
        return image_id in self._id_set

    def vectors(self, rows: np.ndarray | range | None = None) -> np.ndarray:
        """The stored (normalised) vectors of ``rows`` (default: all), read back from FAISS:
        exact for Flat and HNSW, approximate for compressed indexes (PQ, SQ; a database
        that re-ranks gives its float16 vectors); an index that cannot give them back is
        an :class:`InputError` that says so."""
        if self._columns is not None:
            self._require_saved("read its vectors")
            n = len(self._columns)
            idx = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
            if isinstance(rows, range):
                return np.asarray(self._columns.exact[rows.start : rows.stop], dtype=np.float32)
            return compressed.gather(self._columns.exact, idx)
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
        exact = man.normalized and (self.is_compressed or not _LOSSY.search(man.factory))
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
        files = self._files(self.path, man.generation, self.is_compressed)
        vname = files[2].name if self.is_compressed else files[0].name
        for rows, what in ((zero, "all-zero"), (bad, "non-finite"), (off, "not of unit length")):
            if rows:
                kind = f"{what} vectors" if what != "not of unit length" else f"vectors {what}"
                raise damaged(
                    self.path,
                    vname,
                    f"holds {len(rows)} {kind} (ids {list_some(self._ids_at(np.asarray(rows)))})",
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
        """Append photos; ids already in the database are skipped. Returns how many were added.

        A compressed database (or an ``auto`` one grown past its threshold) spools
        them to disk until :meth:`save`, which encodes them; so a large build adds
        chunk by chunk in bounded memory."""
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
        sid = ids.astype(str)  # type: ignore[union-attr]  # made an array above
        threshold = self.manifest.search.get("threshold")
        if (not self.is_compressed and self.manifest.search.get("choice") == "auto"
                and isinstance(threshold, int) and len(self) + len(x) > threshold):  # fmt: skip
            self._to_compressed()
        if self.is_compressed:
            if self._spool is None:
                self._spool = Spool(self.path)
            self._spool.append(x, sid, ll, pth.astype(str), np.full(len(x), source))
        else:
            self._add_in_memory(x, sid, ll, pth, source)
        if self._id_set is not None:
            self._id_set.update(sid.tolist())
        return len(x)

    def _add_in_memory(
        self, x: np.ndarray, ids: np.ndarray, ll: np.ndarray, pth: np.ndarray, source: str
    ) -> None:
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
            {"id": ids, "lat": ll[:, 0], "lon": ll[:, 1], "path": pth.astype(str), "source": source}
        )
        self.meta = rows if self.meta.empty else pd.concat([self.meta, rows], ignore_index=True)
        self._ids, self._coords = None, None

    def _to_compressed(self) -> None:
        """An ``auto`` database past its threshold: its rows move to the spool, and the
        save trains a compressed index for them all."""
        spool = Spool(self.path)
        n = int(self.index.ntotal)
        meta = self.meta
        for r in compressed.chunks(n):
            m = meta.iloc[r.start : r.stop]
            spool.append(
                self.index.reconstruct_n(r.start, len(r)),
                m["id"].to_numpy(dtype=str),
                m[["lat", "lon"]].to_numpy(dtype=float),
                m["path"].to_numpy(dtype=str),
                m["source"].to_numpy(dtype=str),
            )
        self._spool, self.index, self._meta = spool, None, None
        self._ids, self._coords = None, None
        self.manifest.format = 2

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
        far_nprobe: int | None = None,
    ) -> Neighbours:
        """Near neighbours (highest cosine similarity) and far ones (the negated query).

        ``exclude_self`` drops, for each query, the database photo with the
        query's own id — for leave-one-out use of a database on its own photos.
        ``nprobe`` (IVF indexes: lists visited) and ``ef_search`` (HNSW indexes:
        candidate-list size) trade speed for recall; exact indexes ignore neither.
        ``far_nprobe``: lists visited for the far neighbours (default: ``nprobe``).
        A compressed database uses the settings tuned at build time unless given.
        """
        if len(self) == 0:
            raise InputError(f"the database at {self.path} is empty")
        self._require_saved("search it")
        q = self._prepare(queries)
        n = len(q)
        qids = np.asarray(
            [str(i) for i in range(n)] if query_ids is None else query_ids, dtype=object
        )
        self._set_search_params(nprobe, ef_search)
        coords = self.coords
        near_s, near_i = self._knn(q, k, qids if exclude_self else None, nprobe, "")
        out: dict[str, Any] = {
            "near": np.asarray(coords[near_i]),
            "near_scores": near_s,
            "near_ids": self._ids_at(near_i),
        }
        if k_far > 0:
            if far_nprobe is not None:
                self._set_search_params(far_nprobe, None)
                nprobe = far_nprobe
            far_s, far_i = self._knn(-q, k_far, qids if exclude_self else None, nprobe, "far_")
            out.update(
                far=np.asarray(coords[far_i]), far_scores=-far_s, far_ids=self._ids_at(far_i)
            )
        else:
            out.update(far=np.zeros((n, 0, 2)), far_scores=None, far_ids=None)
        return Neighbours(ids=qids, **out)

    def _set_search_params(self, nprobe: int | None, ef_search: int | None) -> None:
        if self.is_compressed:
            if ef_search is not None:
                raise InputError(
                    f"efSearch applies to HNSW indexes; this database uses "
                    f"{self.manifest.factory!r}"
                )
            return
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

    def _raw_search(
        self, q: np.ndarray, k: int, nprobe: int | None, side: str = ""
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product; a compressed index re-ranks with the settings tuned
        for this ``side`` (``""`` near, ``"far_"`` far; older manifests: the near ones)."""
        if self._columns is None:
            scores, rows = self.index.search(q, k)
            return scores, rows
        s = self.manifest.search
        npb = int(nprobe if nprobe is not None else s.get(f"{side}nprobe", s.get("nprobe", 32)))
        rerank = int(s.get(f"{side}rerank", s.get("rerank", 200)))
        if rerank == compressed.SCAN and self._columns.lists is not None:
            return scan_search(self.index, self._columns.lists, q, k, npb)
        return compressed.reranked_search(self.index, self._columns.exact, q, k, npb, rerank)

    def _knn(
        self,
        q: np.ndarray,
        k: int,
        exclude: np.ndarray | None,
        nprobe: int | None = None,
        side: str = "",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by inner product; with ``exclude``, drop each query's own id.

        Rows the index cannot fill (k larger than the database) repeat the last
        valid neighbour, so downstream arrays keep a fixed shape.
        """
        k_eff = min(k + (1 if exclude is not None else 0), len(self))
        scores, rows = self._raw_search(q, k_eff, nprobe, side)
        if exclude is not None:
            keep = self._ids_at(np.clip(rows, 0, None)) != exclude[:, None]
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


#: Where a save encodes a new compressed index in parts (removed once it is saved).
PARTS_DIR = ".index-parts"

#: ``index add`` warns when a compressed database has grown this much since training.
RETRAIN_GROWTH = 4.0


def _tune(
    index: Any, exact: np.ndarray, lists: Lists | None, target: float, progress: bool
) -> tuple[compressed.Tuning, compressed.Tuning]:
    """Search settings for the near and the far neighbours, the far ones within a share
    of the near ones' time (:data:`compressed.FAR_BUDGET`)."""
    with _bar(2, "tuning search (near, far)", progress) as bar:
        near = compressed.tune(index, exact, target=target, lists=lists)
        bar.update(1)
        budget = max(compressed.FAR_BUDGET * near.ms_per_query, compressed.FAR_MIN_BUDGET_MS)
        far = compressed.tune(index, exact, target=target, far=True, lists=lists,
                              budget_ms=budget)  # fmt: skip
        bar.update(1)
    return near, far


def _bar(total: int, desc: str, enabled: bool) -> Any:
    """A progress bar on stderr for one step of a save (a no-op one when not ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row" if total > 2 else "step", disable=not enabled)


def _record(path: Path) -> dict[str, Any]:
    """A data file's size and SHA-256, as the manifest records them."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _empty_meta() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.Series(dtype=str),
            "lat": pd.Series(dtype=float),
            "lon": pd.Series(dtype=float),
            "path": pd.Series(dtype=str),
            "source": pd.Series(dtype=str),
        }
    )


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
