"""Building a retrieval database from a folder of geotagged photos, resumably.

:func:`gather_inputs` pairs every photo of a folder with its position (from a
``IMG_ID,LAT,LON`` table whose ids are file names relative to the folder, or
from each photo's own EXIF GPS) and lists what cannot be used: photos without
a label, labels without a photo, unreadable files. :func:`build_database`
and :func:`add_to_database` embed the usable ones and store them.

The expensive part, the backbone's forward pass, goes through
:func:`geolocus.encoders.features.extract_features` into ``DB/.features/``:
resumable chunk by chunk, so an interrupted build picks up where it stopped
when run again. The FAISS index is made from the finished features in one
go and saved with :meth:`Database.save` (generational, atomic); the feature
folder is removed afterwards, and also when a run fails on its input (nothing
there is worth resuming), but not when it is interrupted (Ctrl-C, a kill, a
crash): the same command then resumes. Every problem goes to ``DB/report.csv``
(``stage,id,path,problem,detail``) and is never fatal unless nothing is left.
A build or add holds the database's lock (:mod:`geolocus.index.lock`) until
its database is saved (the CLI takes it before loading the model): one writer
at a time.

At scale, :func:`build_from_source` takes a sharded source instead
(:mod:`geolocus.data.sources`: tar shards, a table, or a folder's inputs cut by
:func:`inputs_source`), embeds it with an executor (:mod:`geolocus.index.executors`)
shard by shard into ``DB/.staging`` and writes the database from there
(:mod:`geolocus.index.shards`); same up-to-date, overwrite, report and lock rules.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geolocus.data.images import list_images, read_exif_gps
from geolocus.data.sources import Record, ShardSpec, Source, SourceProblem, items_source
from geolocus.data.tables import read_coords
from geolocus.encoders.features import extract_features, read_failed
from geolocus.errors import GeolocusError, ImageError, InputError
from geolocus.files import atomic_write
from geolocus.index.database import Database, read_manifest
from geolocus.index.executors import Executor, LocalExecutor, Progress
from geolocus.index.lock import database_lock
from geolocus.index.shards import (
    STAGING,
    ShardOutput,
    load_shard,
    save_shard,
    shard_file,
    write_from_shards,
)
from geolocus.models.embedder import create_embedder

if TYPE_CHECKING:
    from geolocus.models.embedder import Embedder

REPORT = "report.csv"
FEATURES = ".features"
REPORT_FIELDS = ("stage", "id", "path", "problem", "detail")


@dataclass
class Problem:
    """One photo (or label) left out, and why."""

    id: str
    path: str
    problem: (
        str  # "unreadable" | "no label" | "no EXIF GPS" | "missing file" | "already in database"
    )
    detail: str = ""


@dataclass
class Inputs:
    """Photos with positions, ready to embed, and the ones left out."""

    ids: list[str]
    paths: list[str]
    latlon: np.ndarray
    source: str  # "labels" | "exif"
    problems: list[Problem] = field(default_factory=list)
    root: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def key(self) -> str:
        """Hash of the inputs (ids, paths, positions) for "is this database up to date?"."""
        h = hashlib.sha256(self.source.encode())
        for i, p, (la, lo) in zip(self.ids, self.paths, self.latlon, strict=True):
            h.update(f"{i}\t{p}\t{la:.7f}\t{lo:.7f}\n".encode())
        return h.hexdigest()


@dataclass
class BuildResult:
    """What a build or add did."""

    database: Database
    added: int
    problems: list[Problem]
    up_to_date: bool = False
    seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        db = self.database
        if self.up_to_date:
            return f"{db.path}: up to date ({len(db)} photos, model {db.manifest.model})"
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.problem] = counts.get(p.problem, 0) + 1
        left = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        s = f"{db.path}: added {self.added} photos ({len(db)} in all) in {self.seconds:.1f} s"
        if self.added == 0:
            s = f"{db.path}: nothing new to add ({len(db)} photos in all)"
        if left:
            s += f"; left out: {left} (see {db.path / REPORT})"
        return s


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def gather_inputs(
    images: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    exif: bool = False,
    progress: bool = True,
) -> Inputs:
    """The photos under ``images`` with their positions (``labels`` CSV or ``exif``).

    Ids are file paths relative to ``images`` (``a/b.jpg``). A bad labels file
    is an :class:`InputError`; photos that cannot be labelled are listed in
    ``problems``. Files named in the labels but not picked up by extension are
    included, so that a non-image named there is reported as unreadable.
    """
    if (labels is None) == (not exif):
        raise InputError("give exactly one source of positions: --labels CSV or --exif")
    root = Path(images).expanduser().resolve()
    found = {_rel(p, root): p for p in list_images(root)}
    problems: list[Problem] = []
    ids: list[str] = []
    coords: list[tuple[float, float]] = []
    if labels is not None:
        tab = read_coords(labels, "labels")
        pos = {
            str(i).strip().removeprefix("./"): (float(a), float(b))
            for i, a, b in tab[["IMG_ID", "LAT", "LON"]].itertuples(index=False)
        }
        for rid in pos:
            if rid not in found:
                f = root / rid
                if f.is_file():
                    found[rid] = f
                else:
                    problems.append(Problem(rid, str(f), "missing file", "named in the labels"))
        for rid in sorted(found):
            if rid in pos:
                ids.append(rid)
                coords.append(pos[rid])
            else:
                problems.append(Problem(rid, str(found[rid]), "no label", f"no row in {labels}"))
        source = "labels"
    else:
        from tqdm.auto import tqdm

        for rid in tqdm(sorted(found), desc="reading EXIF GPS", unit="img", disable=not progress):
            try:
                gps = read_exif_gps(found[rid])
            except ImageError as e:
                problems.append(Problem(rid, str(found[rid]), "unreadable", str(e)))
                continue
            if gps is None:
                problems.append(Problem(rid, str(found[rid]), "no EXIF GPS", ""))
                continue
            ids.append(rid)
            coords.append(gps)
        source = "exif"
    if not found:
        raise InputError(f"no photos found in {root}")
    return Inputs(
        ids=ids,
        paths=[str(found[i]) for i in ids],
        latlon=np.asarray(coords, dtype=float).reshape(-1, 2),
        source=source,
        problems=problems,
        root=str(root),
    )


def write_report(db_path: Path, stage: str, problems: list[Problem], replace_stage: bool) -> None:
    """Write ``report.csv``: earlier stages' rows kept (or this stage's replaced), then ours
    (a photo reported again for the same problem keeps one row)."""
    path = Path(db_path) / REPORT
    rows: list[dict[str, str]] = []
    with contextlib.suppress(OSError, csv.Error):
        rows = [r for r in read_report(db_path) if not (replace_stage and r["stage"] == stage)]
    rows += [
        {"stage": stage, "id": p.id, "path": p.path, "problem": p.problem, "detail": p.detail}
        for p in problems
    ]
    # a re-run reports the same photos again: one row each, the latest
    latest = {(r["stage"], r["id"], r["path"], r["problem"]): r for r in rows}
    rows = list(latest.values())
    with atomic_write(path, newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=REPORT_FIELDS)
        w.writeheader()
        w.writerows(rows)


def read_report(db_path: str | os.PathLike[str]) -> list[dict[str, str]]:
    path = Path(db_path) / REPORT
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def embed_store(embedder: Embedder, store: Any, batch_size: int = 4096) -> np.ndarray:
    """Retrieval vectors of every row of a feature store, in chunks (float32)."""
    n = len(store)
    out = np.empty((n, embedder.dim), dtype=np.float32)
    for s in range(0, n, batch_size):
        emb = np.asarray(store.embeddings[s : s + batch_size], dtype=np.float32)
        tok = None
        if store.tokens is not None and embedder.tokens:
            tok = np.asarray(store.tokens[s : s + batch_size], dtype=np.float32)
        out[s : s + len(emb)] = embedder.embed_features(emb, tok)
    return out


def _features(
    embedder: Embedder,
    inputs: Inputs,
    folder: Path,
    batch_size: int,
    loader_threads: int,
    progress: bool,
    chunk_size: int = 512,
) -> tuple[Any, list[Problem]]:
    """Backbone features of the inputs (resumable), and the photos that could not be read."""

    store = extract_features(
        embedder.encoder,
        inputs.paths,
        folder,
        ids=inputs.ids,
        batch_size=batch_size,
        tokens=embedder.tokens,
        token_grid=embedder.token_grid,
        loader_threads=loader_threads,
        chunk_size=chunk_size,
        progress=progress,
        note_failed=False,  # listed in the database's report.csv instead
    )
    bad = [Problem(f["id"], f["path"], "unreadable", f["error"]) for f in store.failed]
    return store, bad


def _failed(folder: Path) -> list[Problem]:
    """The unreadable photos an extraction listed, even when it ended in an error."""

    return [Problem(r["id"], r["path"], "unreadable", r["error"]) for r in read_failed(folder)]


def _store_rows(inputs: Inputs, store: Any) -> tuple[np.ndarray, list[str]]:
    pos = {i: r for r, i in enumerate(inputs.ids)}
    rows = np.array([pos[i] for i in store.ids], dtype=np.int64)
    return rows, [inputs.paths[r] for r in rows]


@contextlib.contextmanager
def _staging(folder: Path) -> Iterator[Path]:
    """The resumable feature folder of one build or add.

    Kept when the run is interrupted (Ctrl-C, a kill, a crash), so that the same
    command resumes there; removed when the run fails on its input (a
    :class:`GeolocusError`: nothing there is worth resuming).
    """
    try:
        yield folder
    except GeolocusError:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()  # FEATURES, if nothing else is staged there
        raise


def build_database(
    path: str | os.PathLike[str],
    inputs: Inputs,
    embedder: Embedder,
    *,
    factory: str = "auto",
    batch_size: int = 32,
    loader_threads: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    chunk_size: int = 512,
    wait: bool = False,
) -> BuildResult:
    """Embed ``inputs`` and write a new database at ``path`` (see the module docstring).

    Progress is saved every ``chunk_size`` photos. Run again after an
    interruption, it resumes there; run again on a finished
    database built from the same inputs and model, it does nothing. A database
    built from anything else (or a damaged one) is kept unless ``overwrite``.
    The database's lock is held throughout: another writer makes this fail at
    once (:class:`DatabaseBusyError`), or, with ``wait``, waits for it.
    """
    t0 = time.perf_counter()
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file, not a database folder")
    key = hashlib.sha256(
        f"{inputs.key()}|{embedder.name}|{embedder.version}|{factory}".encode()
    ).hexdigest()
    # an empty, unsaved database: its factory is validated before anything is written
    db = Database.create(
        path,
        dim=embedder.dim,
        model=embedder.name,
        model_version=embedder.version,
        factory=factory,
        overwrite=True,
        extra={"build_key": key, "embedder": embedder.describe(), "images": inputs.root},
    )
    if not db.index.is_trained and 0 < len(inputs) < db._training_size():
        raise InputError(
            f"FAISS index {factory!r} must be trained on at least {db._training_size()} "
            f"vectors, and there are {len(inputs)} photos; use 'Flat' for small databases"
        )
    with database_lock(path, wait=wait):
        old: Database | None = None
        if Database.exists(path):
            try:
                old = Database.open(path)
                if old.manifest.extra.get("build_key") == key:
                    old.check_vectors()  # rows of zeros are never "up to date"
                    return BuildResult(old, 0, [], up_to_date=True)
            except InputError as e:
                if not overwrite:
                    raise InputError(f"{e}; rebuild it with --overwrite") from None
                old = None
            if old is not None and not overwrite:
                raise InputError(
                    f"a database built from other photos or another model exists at {path}: "
                    "add photos with 'geolocus index add', or rebuild it with --overwrite"
                )
            with contextlib.suppress(InputError):  # a save replaces the generation there
                db.manifest.generation = read_manifest(path).generation
        if len(inputs) == 0:
            write_report(path, "build", inputs.problems, replace_stage=True)
            raise InputError(
                f"none of the photos has a position ({len(inputs.problems)} left out, "
                f"see {path / REPORT})"
            )
        folder = path / FEATURES / "build"
        with _staging(folder):
            try:
                store, bad = _features(
                    embedder, inputs, folder, batch_size, loader_threads, progress, chunk_size
                )
            except InputError:  # nothing readable: report why, photo by photo
                write_report(path, "build", inputs.problems + _failed(folder), replace_stage=True)
                raise
            problems = inputs.problems + bad
            rows, paths = _store_rows(inputs, store)
            vectors = embed_store(embedder, store)
            if Database.exists(path):  # replaced (other inputs, or damaged): its rows go too
                (path / REPORT).unlink(missing_ok=True)  # the old database's rows (add stages)
                shutil.rmtree(path / "refiners", ignore_errors=True)
            db.add(vectors, store.ids, inputs.latlon[rows], paths=paths, source=inputs.source)
            db.save()
            write_report(path, "build", problems, replace_stage=True)
            timing = dict(store.meta.get("timing", {}))
        shutil.rmtree(path / FEATURES, ignore_errors=True)
    return BuildResult(db, len(db), problems, seconds=time.perf_counter() - t0, timing=timing)


def check_embedder(db: Database, embedder: Embedder) -> None:
    """Refuse an embedder other than the one the database was built with."""
    man = db.manifest
    if embedder.name != man.model:
        raise InputError(
            f"the database at {db.path} was built with model {man.model!r}, not "
            f"{embedder.name!r}: use the same model or build another database"
        )
    if man.model_version and embedder.version != man.model_version:
        raise InputError(
            f"the database at {db.path} was built with another version of {man.model!r} "
            f"(weights or preprocessing differ: {man.model_version} here vs "
            f"{embedder.version}): rebuild the database"
        )
    if embedder.dim != man.dim:
        raise InputError(f"model {embedder.name!r} gives {embedder.dim}-d vectors, not {man.dim}")


def embedder_for(db: Database, model: str | None = None, **options: Any) -> Embedder:
    """The embedder a database was built with (``model``, if given, must be that one)."""

    man = db.manifest
    if model is not None and str(model) != man.model:
        p = Path(str(model)).expanduser()
        same_file = p.is_file() and str(p.resolve()) == man.model
        if not same_file:
            raise InputError(
                f"the database at {db.path} was built with model {man.model!r}, not "
                f"{model!r}: predict with the database's model or build another database"
            )
    emb = create_embedder(man.model, **options)
    check_embedder(db, emb)
    return emb


def add_to_database(
    path: str | os.PathLike[str] | Database,
    inputs: Inputs,
    embedder: Embedder | None = None,
    *,
    batch_size: int = 32,
    loader_threads: int = 1,
    progress: bool = True,
    wait: bool = False,
) -> BuildResult:
    """Append ``inputs`` to an existing database, with the model it was built with.

    Photos whose id is already in the database are left out (reported), so
    running the same ``add`` twice, or again after an interruption, is safe: a
    second run adds nothing and says so. The database's lock is held as in
    :func:`build_database`; a :class:`Database` passed in that another process
    saved since is read again.
    """
    t0 = time.perf_counter()
    where = path.path if isinstance(path, Database) else Path(path)
    read_manifest(where)  # no database there: say so before creating anything
    with database_lock(where, wait=wait):
        db = path if isinstance(path, Database) else None
        if db is None or read_manifest(where).generation != db.manifest.generation:
            db = Database.open(where)
        embedder = embedder if embedder is not None else embedder_for(db)
        check_embedder(db, embedder)
        known = [i for i in inputs.ids if i in db]
        problems = list(inputs.problems)
        problems += [
            Problem(i, p, "already in database", "")
            for i, p in zip(inputs.ids, inputs.paths, strict=True)
            if i in db
        ]
        if known:
            keep = np.array([i not in db for i in inputs.ids], dtype=bool)
            inputs = Inputs(
                ids=[i for i, k in zip(inputs.ids, keep, strict=True) if k],
                paths=[p for p, k in zip(inputs.paths, keep, strict=True) if k],
                latlon=inputs.latlon[keep],
                source=inputs.source,
                problems=inputs.problems,
                root=inputs.root,
            )
        added = 0
        timing: dict[str, float] = {}
        if len(inputs):
            folder = db.path / FEATURES / "add"
            with _staging(folder):
                try:
                    store, bad = _features(
                        embedder, inputs, folder, batch_size, loader_threads, progress
                    )
                except InputError:
                    bad = _failed(folder)
                    write_report(db.path, "add", problems + bad, replace_stage=False)
                    if not known or len(bad) < len(inputs):
                        raise
                    store = None  # a re-run: what could be read is in the database already
                problems += bad
                if store is not None:
                    rows, paths = _store_rows(inputs, store)
                    vectors = embed_store(embedder, store)
                    added = db.add(
                        vectors, store.ids, inputs.latlon[rows], paths=paths, source=inputs.source
                    )
                    db.save()
                    timing = dict(store.meta.get("timing", {}))
            shutil.rmtree(db.path / FEATURES, ignore_errors=True)
        write_report(db.path, "add", problems, replace_stage=False)
    return BuildResult(db, added, problems, seconds=time.perf_counter() - t0, timing=timing)


def database_vectors(db: Database, rows: np.ndarray | None = None) -> np.ndarray:
    """The stored vectors of ``rows`` (all by default): see :meth:`Database.vectors`."""
    return db.vectors(rows)


def print_problems(problems: list[Problem], limit: int = 10, file: Any = None) -> None:
    """The first few problems, one line each, on stderr."""
    file = file or sys.stderr
    for p in problems[:limit]:
        detail = f": {p.detail}" if p.detail else ""
        print(f"skipped {p.id} ({p.problem}){detail}", file=file)
    if len(problems) > limit:
        print(f"... and {len(problems) - limit} more", file=file)


# ----------------------------------------------------------- sources at scale (shards)


def inputs_source(inputs: Inputs, shard_size: int = 1000) -> Source:
    """A folder's inputs (labels or EXIF) as a source cut into shards of ``shard_size``
    photos, in id order; what gathering left out stays reported."""
    records = [
        Record(i, p, float(la), float(lo), p)
        for i, p, (la, lo) in zip(inputs.ids, inputs.paths, inputs.latlon, strict=True)
    ]
    problems = [SourceProblem("", p.id, p.problem, p.detail) for p in inputs.problems]
    src = items_source(records, inputs.source, inputs.root, shard_size, problems)
    return src


def _as_problem(p: SourceProblem) -> Problem:
    return Problem(p.key, p.shard, p.problem, p.detail)


def build_from_source(
    path: str | os.PathLike[str],
    source: Source,
    embedder: Embedder,
    executor: Executor | None = None,
    *,
    factory: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    wait: bool = False,
) -> BuildResult:
    """Embed a sharded ``source`` with ``executor`` (default: this process) and write a
    new database at ``path``.

    Each finished shard is staged in ``DB/.staging`` (:mod:`geolocus.index.shards`):
    run again after an interruption, only the shards not staged are embedded. As
    :func:`build_database`: the same input and model again does nothing; another
    database there is kept unless ``overwrite``; the lock is held throughout.
    Problems (``report.csv``) name the shard in the path column and the key as id.
    """
    t0 = time.perf_counter()
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file, not a database folder")
    executor = executor if executor is not None else LocalExecutor(embedder)
    key = hashlib.sha256(
        f"{source.key()}|{embedder.name}|{embedder.version}|{factory}".encode()
    ).hexdigest()
    create: dict[str, Any] = {
        "dim": embedder.dim,
        "model": embedder.name,
        "model_version": embedder.version,
        "factory": factory,
        "extra": {"build_key": key, "embedder": embedder.describe(), "images": source.root},
    }
    probe = Database.create(path, overwrite=True, **create)  # the factory is checked first
    total = source.photos
    if not probe.index.is_trained and total is not None and 0 < total < probe._training_size():
        raise InputError(
            f"FAISS index {factory!r} must be trained on at least {probe._training_size()} "
            f"vectors, and there are {total} photos; use 'Flat' for small databases"
        )
    with database_lock(path, wait=wait):
        if Database.exists(path):
            old: Database | None = None
            try:
                old = Database.open(path)
                if old.manifest.extra.get("build_key") == key:
                    old.check_vectors()
                    return BuildResult(old, 0, [], up_to_date=True)
            except InputError as e:
                if not overwrite:
                    raise InputError(f"{e}; rebuild it with --overwrite") from None
                old = None
            if old is not None and not overwrite:
                raise InputError(
                    f"a database built from other photos or another model exists at {path}: "
                    "add photos with 'geolocus index add', or rebuild it with --overwrite"
                )
        if not source.shards:
            write_report(path, "build", [_as_problem(p) for p in source.problems], True)
            raise InputError(
                f"none of the photos has a position ({len(source.problems)} left out, "
                f"see {path / REPORT})"
            )
        staging = path / STAGING
        files = [shard_file(staging, s, embedder.version) for s in source.shards]
        staged = {
            s.name: out
            for s, f in zip(source.shards, files, strict=True)
            if (out := load_shard(f, embedder.version, embedder.dim)) is not None
        }
        todo = [s for s in source.shards if s.name not in staged]
        bar = Progress(len(source.shards), total, done=len(staged), enabled=progress)
        bar.skip(sum(s.size or 0 for s in source.shards if s.name in staged))
        where = dict(zip((s.name for s in source.shards), files, strict=True))
        problems = [_as_problem(p) for p in source.problems]

        def on_done(spec: ShardSpec, out: ShardOutput) -> None:
            save_shard(where[spec.name], out, embedder.version)

        try:
            executor.run(todo, on_done, bar)
        finally:
            bar.close()
        outputs = [load_shard(f, embedder.version, embedder.dim) for f in files]
        if any(o is None for o in outputs):
            raise InputError(f"{staging}: a staged shard changed or vanished; run again")
        for o in outputs:
            assert o is not None
            problems += [_as_problem(p) for p in o.problems]
        if not any(len(o) for o in outputs if o is not None):
            write_report(path, "build", problems, replace_stage=True)
            shutil.rmtree(staging, ignore_errors=True)
            raise InputError(
                f"none of the photos could be used ({len(problems)} left out, see {path / REPORT})"
            )
        if Database.exists(path):  # replaced (other inputs, or damaged): its rows go too
            (path / REPORT).unlink(missing_ok=True)
            shutil.rmtree(path / "refiners", ignore_errors=True)
        db, repeated = write_from_shards(
            path,
            files,
            version=embedder.version,
            create=create,
            source=source.kind,
            progress=progress,
            encoder=executor.encoder(),
        )
        problems += [_as_problem(p) for p in repeated]
        write_report(path, "build", problems, replace_stage=True)
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(db, len(db), problems, seconds=time.perf_counter() - t0)
