"""Where geotagged photos come from at scale: folders, WebDataset tar shards, tables.

A corpus of millions of photos cannot be listed, decoded or held in memory at
once, so every input is read as *shards*: a :class:`ShardSpec` names one unit of
work (a tar file, or a fixed-size slice of a folder listing or of a table) with
a stable key, and :func:`read_shard` streams its :class:`Record` s — ``(id,
image bytes or path, lat, lon)`` — one at a time. A shard spec is small and
picklable, so that a worker process or a Ray actor can read its shard itself.

What cannot be used is reported, never raised: each problem names the shard,
the key and why (:class:`SourceProblem`) — a corrupt tar member, a position that
is missing or invalid, a key seen twice, a shard with no positions at all.

WebDataset's convention: members are grouped by key, the member name up to the
first dot after the last slash (``a/0001.jpg`` and ``a/0001.json`` are key
``a/0001``); an image is ``KEY.jpg|jpeg|png|webp`` and ``KEY.json`` holds ``lat``
and ``lon`` (or ``latitude``/``longitude``). The tar is read in streaming mode
(``r|*``), so a shard is never held whole in memory, compressed or not.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geolocus.errors import InputError

#: Image members of a WebDataset sample (lower-case extension, no dot).
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
#: Column names tried, in order, when a table's position columns are not named.
LAT_NAMES = ("lat", "latitude", "LAT", "Latitude", "LATITUDE")
LON_NAMES = ("lon", "lng", "longitude", "LON", "Longitude", "LONGITUDE")
IMAGE_NAMES = ("image", "path", "image_path", "IMG_ID", "jpg", "file", "filename")


@dataclass(frozen=True)
class Record:
    """One photo to embed: its id, where its pixels are (bytes or a path), its position."""

    id: str
    image: bytes | str
    lat: float
    lon: float
    path: str  # where it came from, for reports and the database's path column


@dataclass(frozen=True)
class SourceProblem:
    """One thing left out of a shard, and why."""

    shard: str
    key: str
    problem: str  # "corrupt member" | "corrupt shard" | "no position" | "invalid position" | ...
    detail: str = ""
    path: str = ""  # the photo's file, where it has one (a folder's photo): reports name it


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work, self-contained and picklable.

    ``kind`` says how to read it: ``"tar"`` (``location`` is the tar file),
    ``"table"`` (rows ``start:stop`` of the table ``location``, columns in
    ``options``) or ``"items"`` (``items``: the records themselves, a slice of a
    folder listing). ``key`` changes whenever the shard's content may have (file
    size and modification time, the listing's hash), so a staged shard of an
    older version is never reused.
    """

    kind: str
    name: str
    key: str
    location: str = ""
    start: int = 0
    stop: int = 0
    items: tuple[Record, ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    size: int | None = None  # photos in the shard where known without reading it


@dataclass
class Source:
    """Shards of one input, with what was already found wrong while listing them."""

    shards: list[ShardSpec]
    kind: str  # the database's "source" column: "labels", "exif", "shards", "table"
    root: str
    problems: list[SourceProblem] = field(default_factory=list)
    #: The input's own hash where it has one (a folder's listing: ids, paths, positions),
    #: so that "up to date" does not depend on how the input is cut into shards.
    content_key: str | None = None

    @property
    def photos(self) -> int | None:
        """Photos in all shards, where every shard knows its size without being read."""
        sizes = [s.size for s in self.shards]
        return None if any(n is None for n in sizes) else sum(n or 0 for n in sizes)

    def key(self) -> str:
        """Hash of the input (``content_key``, else every shard's key): "is this database
        built from exactly this input?"."""
        if self.content_key is not None:
            return self.content_key
        h = hashlib.sha256(self.kind.encode())
        for s in self.shards:
            h.update(f"{s.name}\t{s.key}\n".encode())
        return h.hexdigest()


def _file_key(path: Path, extra: str = "") -> str:
    st = path.stat()
    return hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}|{extra}".encode()).hexdigest()


# ------------------------------------------------------------------------ folders


def items_source(
    records: Sequence[Record],
    kind: str,
    root: str,
    shard_size: int = 1000,
    problems: Sequence[SourceProblem] = (),
) -> Source:
    """A listing already in memory (a folder with labels or EXIF) cut into shards of
    ``shard_size`` photos, in the order given."""
    if shard_size < 1:
        raise InputError(f"the shard size must be at least 1, not {shard_size}")
    shards = []
    for s in range(0, len(records), shard_size):
        part = tuple(records[s : s + shard_size])
        h = hashlib.sha256()
        for r in part:
            h.update(f"{r.id}\t{r.image!s}\t{r.lat:.7f}\t{r.lon:.7f}\n".encode())
            if isinstance(r.image, str):
                with_stat = Path(r.image)
                try:
                    st = with_stat.stat()
                    h.update(f"{st.st_size}|{st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(b"missing\n")
        name = f"{kind}-{s // shard_size:06d}"
        shards.append(ShardSpec("items", name, h.hexdigest(), items=part, size=len(part)))
    return Source(shards, kind, root, list(problems))


# ---------------------------------------------------------------------- tar shards


def tar_source(pattern: str) -> Source:
    """The WebDataset shards matching ``pattern`` (a glob, e.g. ``data/shard-*.tar``), in
    name order. No match is an :class:`InputError`."""
    paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)))
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise InputError(f"no tar shards match {pattern!r}")
    names = [p.name for p in paths]
    dup = {n for n in names if names.count(n) > 1}
    shards = [
        ShardSpec(
            "tar",
            str(p) if p.name in dup else p.name,
            _file_key(p.resolve()),
            location=str(p.resolve()),
        )
        for p in paths
    ]
    root = os.path.commonpath([str(p.resolve().parent) for p in paths])
    return Source(shards, "shards", root)


def _sample_key(name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: (key, extension) at the first dot of the base."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :].lower()


def _position(meta: Any) -> tuple[float, float] | str:
    """(lat, lon) from a sample's JSON, or why not ("no position" / "invalid position: ...")."""
    if not isinstance(meta, dict):
        return "no position: the JSON is not an object"
    lat = meta.get("lat", meta.get("latitude"))
    lon = meta.get("lon", meta.get("longitude", meta.get("lng")))
    if lat is None or lon is None:
        return "no position"
    return _valid(lat, lon)


def _valid(lat: Any, lon: Any) -> tuple[float, float] | str:
    try:
        la, lo = float(lat), float(lon)
    except (TypeError, ValueError):
        return f"invalid position: {lat!r}, {lon!r}"
    if not (math.isfinite(la) and math.isfinite(lo) and abs(la) <= 90 and abs(lo) <= 180):
        return f"invalid position: {la}, {lo}"
    return la, lo


def _read_tar(spec: ShardSpec, report: Callable[[SourceProblem], None]) -> Iterator[Record]:
    seen: set[str] = set()
    repeated: set[str] = set()
    counts = {"samples": 0, "positioned": 0}
    unpositioned: list[SourceProblem] = []
    group: dict[str, bytes] = {}
    key: str | None = None

    def finish(k: str, members: dict[str, bytes]) -> Record | None:
        if k in seen:
            if k not in repeated:
                repeated.add(k)
                report(SourceProblem(spec.name, k, "repeated key", "kept the first"))
            return None
        seen.add(k)
        counts["samples"] += 1
        ext = next((e for e in TAR_IMAGE_EXTENSIONS if e in members), None)
        if "json" not in members:
            unpositioned.append(SourceProblem(spec.name, k, "no position", "no .json member"))
            if ext is None:
                unpositioned.pop()
                report(SourceProblem(spec.name, k, "no image", f"members: {sorted(members)}"))
            return None
        try:
            meta = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            report(SourceProblem(spec.name, k, "corrupt member", f"{k}.json: {e}"))
            return None
        pos = _position(meta)
        if isinstance(pos, str):
            problem, _, detail = pos.partition(": ")
            report(SourceProblem(spec.name, k, problem, detail))
            return None
        counts["positioned"] += 1
        if ext is None:
            report(SourceProblem(spec.name, k, "no image", f"members: {sorted(members)}"))
            return None
        return Record(k, members[ext], pos[0], pos[1], f"{spec.name}:{k}.{ext}")

    try:
        with tarfile.open(spec.location, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _sample_key(member.name)
                if k != key:
                    if key is not None:
                        rec = finish(key, group)
                        if rec is not None:
                            yield rec
                    key, group = k, {}
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is truncated")
                if ext in group:  # KEY.jpg twice in one sample: the key is repeated
                    if k not in repeated:
                        repeated.add(k)
                        report(SourceProblem(spec.name, k, "repeated key", "kept the first"))
                    continue
                group[ext] = data
            if key is not None:
                rec = finish(key, group)
                key = None
                if rec is not None:
                    yield rec
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # truncated, not a tar
        where = key or ""
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        report(SourceProblem(spec.name, where, "corrupt shard", f"read stopped: {msg}"))
    if counts["samples"] and not counts["positioned"]:
        report(
            SourceProblem(
                spec.name, "", "shard without positions", f"{counts['samples']} samples, no .json"
            )
        )
    else:
        for p in unpositioned:
            report(p)


# ------------------------------------------------------------------------- tables


def _pick(columns: Sequence[str], given: str | None, names: Sequence[str], what: str) -> str:
    if given is not None:
        if given not in columns:
            raise InputError(f"the table has no column {given!r} (columns: {', '.join(columns)})")
        return given
    for n in names:
        if n in columns:
            return n
    raise InputError(
        f"the table has no {what} column (tried {', '.join(names)}; name it with --{what}-column)"
    )


def _table_columns_and_rows(path: Path) -> tuple[list[str], int]:
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:
            raise InputError(f"{path}: not a readable Parquet file ({e})") from None
        return list(pf.schema_arrow.names), int(pf.metadata.num_rows)
    import pandas as pd

    try:
        cols = list(pd.read_csv(path, nrows=0).columns)
        n = sum(len(c) for c in pd.read_csv(path, usecols=[cols[0]], chunksize=65536))
    except (ValueError, IndexError, OSError) as e:
        raise InputError(f"{path}: not a readable CSV table ({e})") from None
    return cols, n


def table_source(
    table: str | os.PathLike[str],
    shard_size: int = 1000,
    image_column: str | None = None,
    lat_column: str | None = None,
    lon_column: str | None = None,
    id_column: str | None = None,
) -> Source:
    """A Parquet or CSV table of photos (a column of paths, relative to the table's folder,
    or of image bytes) and positions, cut into shards of ``shard_size`` rows."""
    path = Path(table).expanduser()
    if not path.is_file():
        raise InputError(f"table not found: {path}")
    if shard_size < 1:
        raise InputError(f"the shard size must be at least 1, not {shard_size}")
    cols, n = _table_columns_and_rows(path)
    opts = {
        "image": _pick(cols, image_column, IMAGE_NAMES, "image"),
        "lat": _pick(cols, lat_column, LAT_NAMES, "lat"),
        "lon": _pick(cols, lon_column, LON_NAMES, "lon"),
    }
    if id_column is not None:
        opts["id"] = _pick(cols, id_column, (), "id")
    key = _file_key(path.resolve(), json.dumps(opts, sort_keys=True))
    shards = [
        ShardSpec(
            "table",
            f"{path.stem}-{s // shard_size:06d}",
            f"{key}|{s}|{min(n, s + shard_size)}",
            location=str(path.resolve()),
            start=s,
            stop=min(n, s + shard_size),
            options=tuple(sorted(opts.items())),
            size=min(n, s + shard_size) - s,
        )
        for s in range(0, n, shard_size)
    ]
    if not shards:
        raise InputError(f"the table {path} has no rows")
    return Source(shards, "table", str(path.resolve().parent))


def _table_rows(spec: ShardSpec, columns: list[str]) -> Iterator[dict[str, Any]]:
    """Rows ``start:stop`` of the table, streamed (Parquet: only the row groups that hold
    them, in batches; CSV: that slice)."""
    path = Path(spec.location)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        groups, first, row = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            m = pf.metadata.row_group(g).num_rows
            if row + m > spec.start and row < spec.stop:
                groups.append(g)
                first = row if first is None else first
            row += m
        at = first or 0
        for batch in pf.iter_batches(batch_size=256, row_groups=groups, columns=columns):
            for r in batch.to_pylist():
                if spec.start <= at < spec.stop:
                    yield r
                at += 1
                if at >= spec.stop:
                    return
        return
    import pandas as pd

    frame = pd.read_csv(
        path,
        usecols=columns,
        skiprows=range(1, spec.start + 1),
        nrows=spec.stop - spec.start,
        dtype={c: str for c in columns},
        keep_default_na=False,
    )
    yield from frame.to_dict("records")


def _read_table(spec: ShardSpec, report: Callable[[SourceProblem], None]) -> Iterator[Record]:
    opts = dict(spec.options)
    columns = list(dict.fromkeys(opts.values()))
    base = Path(spec.location).parent
    seen: set[str] = set()
    try:
        for i, row in enumerate(_table_rows(spec, columns), start=spec.start):
            img = row[opts["image"]]
            if isinstance(img, bytes | bytearray | memoryview):
                image: bytes | str = bytes(img)
                rid = str(row[opts["id"]]) if "id" in opts else f"row-{i}"
                where = f"{Path(spec.location).name}:row {i}"
            elif isinstance(img, str) and img.strip():
                p = Path(img.strip()).expanduser()
                image = str(p if p.is_absolute() else base / p)
                rid = str(row[opts["id"]]) if "id" in opts else img.strip().removeprefix("./")
                where = image
            else:
                report(SourceProblem(spec.name, f"row-{i}", "no image", "empty image cell"))
                continue
            if rid in seen:
                report(SourceProblem(spec.name, rid, "repeated key", "kept the first"))
                continue
            seen.add(rid)
            pos = _valid(row[opts["lat"]], row[opts["lon"]])
            if isinstance(pos, str):
                problem, _, detail = pos.partition(": ")
                report(SourceProblem(spec.name, rid, problem, detail))
                continue
            yield Record(rid, image, pos[0], pos[1], where)
    except (OSError, ValueError, KeyError) as e:  # the file changed or is damaged
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        report(SourceProblem(spec.name, "", "corrupt shard", f"read stopped: {msg}"))


# --------------------------------------------------------------------------- all


def read_shard(spec: ShardSpec, report: Callable[[SourceProblem], None]) -> Iterator[Record]:
    """Stream the records of one shard; every problem goes to ``report`` (never raised)."""
    if spec.kind == "tar":
        yield from _read_tar(spec, report)
    elif spec.kind == "table":
        yield from _read_table(spec, report)
    elif spec.kind == "items":
        yield from spec.items
    else:
        raise ValueError(f"unknown shard kind {spec.kind!r}")
