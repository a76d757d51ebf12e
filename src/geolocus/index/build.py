"""Building and extending a retrieval database, shard by shard, resumably.

Every input is a sharded :class:`geolocus.data.sources.Source`: WebDataset tar
shards, a table, or a folder. For a folder, :func:`gather_inputs` pairs every
photo with its position (from a ``IMG_ID,LAT,LON`` table whose ids are file
names relative to the folder, or from each photo's own EXIF GPS) and lists what
cannot be used (photos without a label, labels without a photo, unreadable
files); :func:`inputs_source` cuts the usable ones into shards.

:func:`build_database` and :func:`add_to_database` embed the shards with an
executor (:mod:`geolocus.index.executors`: this process, a local pool, or Ray)
into ``DB/.staging``, one checksummed file per finished shard
(:mod:`geolocus.index.shards`), then write the database from there
(:meth:`Database.save`: generational, atomic) and remove the staging area. Run
again after an interruption (Ctrl-C, a kill, a crash), the same command embeds
only the shards not staged; a run that fails on its input (nothing usable)
removes the staging area, as nothing there is worth resuming. Every problem
goes to ``DB/report.csv`` (``stage,id,path,problem,detail``) and is never fatal
unless nothing is left. A build or add holds the database's lock
(:mod:`geolocus.index.lock`) until its database is saved (the CLI takes it
before loading the model): one writer at a time.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geolocus.data.images import list_images, read_exif_gps
from geolocus.data.sources import Record, ShardSpec, Source, SourceProblem, items_source
from geolocus.data.tables import read_coords
from geolocus.errors import ImageError, InputError
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
#: The staging area of geolocus versions that built from a feature store: removed on sight.
OLD_STAGING = ".features"
#: Photos per shard of a folder or table (a small folder gets smaller shards).
SHARD_SIZE = 1000
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


# ------------------------------------------------------------------ sources, shards


def shard_size_for(photos: int) -> int:
    """Photos per shard of a folder: :data:`SHARD_SIZE`, or fewer for a small folder so
    that it still makes about eight shards (an interruption loses little, and ``--workers``
    has shards to share), in multiples of 32 (whole forward batches)."""
    per = -(-max(photos, 1) // 8)
    return max(32, min(SHARD_SIZE, -(-per // 32) * 32))


def inputs_source(inputs: Inputs, shard_size: int | None = None) -> Source:
    """A folder's inputs (labels or EXIF) cut into shards of ``shard_size`` photos (default
    :func:`shard_size_for`), in id order; what gathering left out stays reported. The
    input's key is the listing's, so "up to date" does not depend on the shard size."""
    records = [
        Record(i, p, float(la), float(lo), p)
        for i, p, (la, lo) in zip(inputs.ids, inputs.paths, inputs.latlon, strict=True)
    ]
    problems = [SourceProblem("", p.id, p.problem, p.detail, p.path) for p in inputs.problems]
    size = shard_size if shard_size is not None else shard_size_for(len(records))
    src = items_source(records, inputs.source, inputs.root, size, problems)
    src.content_key = inputs.key()
    return src


def _as_problem(p: SourceProblem) -> Problem:
    return Problem(p.key, p.path or p.shard, p.problem, p.detail)


def _drop_old_staging(path: Path) -> None:
    """An older geolocus staged a build's features in ``DB/.features``: not resumable by
    this version, so it goes (with one line saying so)."""
    old = path / OLD_STAGING
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
        print(
            f"geolocus: warning: removed {old}, the unfinished work of an older geolocus "
            "(this version stages in .staging)",
            file=sys.stderr,
        )


@dataclass
class _Embedded:
    """The staged shards of one build or add, in the source's order: their files, the
    photos they hold and their problems (the vectors stay on disk until written)."""

    files: list[Path]
    usable: int
    problems: list[Problem]
    timing: dict[str, float]


def _embed(
    path: Path, source: Source, embedder: Embedder, executor: Executor, progress: bool
) -> _Embedded:
    """Embed the shards of ``source`` not staged yet under ``path`` (each staged as it
    finishes), then read every staged shard back."""
    staging = path / STAGING
    files = [shard_file(staging, s, embedder.version) for s in source.shards]
    where = dict(zip((s.name for s in source.shards), files, strict=True))
    version, dim = embedder.version, embedder.dim
    staged = {n for n, f in where.items() if load_shard(f, version, dim) is not None}
    todo = [s for s in source.shards if s.name not in staged]
    bar = Progress(len(source.shards), source.photos, done=len(staged), enabled=progress)
    bar.skip(sum(s.size or 0 for s in source.shards if s.name in staged))
    timing = {"embed_s": 0.0, "forward_s": 0.0}

    def on_done(spec: ShardSpec, out: ShardOutput) -> None:
        save_shard(where[spec.name], out, embedder.version)
        timing["embed_s"] += out.seconds
        timing["forward_s"] += out.forward_s

    try:
        executor.run(todo, on_done, bar)
    finally:
        bar.close()
    usable, problems = 0, []
    for f in files:  # one shard in memory at a time
        out = load_shard(f, version, dim)
        if out is None:
            raise InputError(f"{staging}: a staged shard changed or vanished; run again")
        usable += len(out)
        problems += [_as_problem(p) for p in out.problems]
    return _Embedded(files, usable, problems, timing)


def _nothing_usable(path: Path, stage: str, problems: list[Problem], replace: bool) -> InputError:
    """Report why nothing could be used; the staging area goes (nothing to resume)."""
    write_report(path, stage, problems, replace_stage=replace)
    shutil.rmtree(path / STAGING, ignore_errors=True)
    return InputError(
        f"none of the photos could be used ({len(problems)} left out, see {path / REPORT})"
    )


def build_database(
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
    """Embed a sharded ``source`` (a folder: :func:`inputs_source`) with ``executor``
    (default: this process) and write a new database at ``path``.

    Run again after an interruption, only the shards not staged are embedded; run
    again on a finished database built from the same input and model, it does
    nothing. A database built from anything else (or a damaged one) is kept unless
    ``overwrite``. The database's lock is held throughout: another writer makes
    this fail at once (:class:`DatabaseBusyError`), or, with ``wait``, waits for it.
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
        _drop_old_staging(path)
        if Database.exists(path):
            old: Database | None = None
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
        problems = [_as_problem(p) for p in source.problems]
        if not source.shards:
            write_report(path, "build", problems, replace_stage=True)
            raise InputError(
                f"none of the photos has a position ({len(problems)} left out, see {path / REPORT})"
            )
        done = _embed(path, source, embedder, executor, progress)
        problems += done.problems
        if not done.usable:
            raise _nothing_usable(path, "build", problems, replace=True)
        db = Database.create(path, overwrite=True, **create)
        try:
            _, left_out = write_from_shards(
                db, done.files, version=embedder.version, source=source.kind
            )
        except InputError:  # e.g. too few vectors to train the index: not worth resuming
            shutil.rmtree(path / STAGING, ignore_errors=True)
            raise
        problems += [_as_problem(p) for p in left_out]
        if Database.exists(path):  # replaced (other inputs, or damaged): its rows go too
            (path / REPORT).unlink(missing_ok=True)  # the old database's rows (add stages)
            shutil.rmtree(path / "refiners", ignore_errors=True)
        db.save(progress=progress, encoder=executor.encoder())
        write_report(path, "build", problems, replace_stage=True)
        shutil.rmtree(path / STAGING, ignore_errors=True)
    seconds = time.perf_counter() - t0
    return BuildResult(db, len(db), problems, seconds=seconds, timing=done.timing)


def _without_known(source: Source, db: Database) -> tuple[Source, list[Problem]]:
    """A folder's source without the photos ``db`` holds already (reported), so that an add
    run again never embeds them; other sources are filtered as their shards are read."""
    if not source.shards or any(s.kind != "items" for s in source.shards):
        return source, []
    records = [r for s in source.shards for r in s.items]
    known = [Problem(r.id, r.path, "already in database") for r in records if r.id in db]
    if not known:
        return source, []
    size = max(len(s.items) for s in source.shards)
    rest = items_source(
        [r for r in records if r.id not in db], source.kind, source.root, size, source.problems
    )
    return rest, known


def add_to_database(
    path: str | os.PathLike[str] | Database,
    source: Source,
    embedder: Embedder | None = None,
    executor: Executor | None = None,
    *,
    progress: bool = True,
    wait: bool = False,
) -> BuildResult:
    """Append a sharded ``source`` to an existing database, with the model it was built
    with (a compressed one encodes with its existing quantisers).

    Photos whose id is already in the database are left out (reported), so running
    the same ``add`` twice is safe: a second run adds nothing and says so; after an
    interruption it embeds only the shards not staged. The database's lock is held as
    in :func:`build_database`; a :class:`Database` passed in that another process saved
    since is read again.
    """
    t0 = time.perf_counter()
    where = path.path if isinstance(path, Database) else Path(path)
    read_manifest(where)  # no database there: say so before creating anything
    with database_lock(where, wait=wait):
        _drop_old_staging(where)
        db = path if isinstance(path, Database) else None
        if db is None or read_manifest(where).generation != db.manifest.generation:
            db = Database.open(where)
        embedder = embedder if embedder is not None else embedder_for(db)
        check_embedder(db, embedder)
        executor = executor if executor is not None else LocalExecutor(embedder)
        source, known = _without_known(source, db)
        problems = [_as_problem(p) for p in source.problems] + known
        added = 0
        timing: dict[str, float] = {}
        if source.shards:
            done = _embed(db.path, source, embedder, executor, progress)
            timing = done.timing
            problems += done.problems
            if not done.usable and not known:
                raise _nothing_usable(db.path, "add", problems, replace=False)
            added, left_out = write_from_shards(
                db, done.files, version=embedder.version, source=source.kind
            )
            problems += [_as_problem(p) for p in left_out]
            if added:
                db.save(progress=progress, encoder=executor.encoder())
            shutil.rmtree(db.path / STAGING, ignore_errors=True)
        write_report(db.path, "add", problems, replace_stage=False)
    seconds = time.perf_counter() - t0
    return BuildResult(db, added, problems, seconds=seconds, timing=timing)
