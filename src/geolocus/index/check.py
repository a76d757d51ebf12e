"""``index info --check``: is a database sound, all of it?

Opening a database checks what is cheap (the manifest, file sizes, counts);
this reads everything: the data files against their SHA-256, every vector
back from FAISS (none all zeros or not finite, unit length where the index
is exact), the ids (unique, not empty), the coordinates and the report. Two
concurrent builds once saved a database with rows of zeros that opened and
searched without complaint; this is the check that finds such damage.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from geolocus.errors import InputError
from geolocus.geo import validate_latlon
from geolocus.index.build import REPORT, read_report
from geolocus.index.database import Database, damaged
from geolocus.index.lock import busy_message, holder

#: FAISS factories whose stored vectors come back only approximately (no unit-norm check).
_LOSSY = re.compile(r"PQ|SQ|LSH|RQ|LSQ")


def _some(ids: np.ndarray, limit: int = 3) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def check_database(
    path: str | os.PathLike[str], say: Callable[[str], None] = print, chunk: int = 65536
) -> Database:
    """Verify the database at ``path``, reporting each check passed through ``say``.

    The first problem found is an :class:`InputError` ("database DIR is
    damaged: FILE …"); returns the open database when everything holds.
    """
    p = Path(path)
    who = holder(p)
    if who is not None:  # its saves are atomic, so what is read is still one generation
        say("note: " + busy_message(p, who).split(";")[0])
    db = Database.open(p, verify=True)
    man = db.manifest
    say(f"manifest.json: readable (format {man.format}, model {man.model}, {man.factory})")
    vname, mname = f"vectors-{man.generation}.faiss", f"meta-{man.generation}.parquet"
    for name in (vname, mname):
        rec = man.files.get(name)
        if rec:
            say(f"{name}: {rec['bytes']} bytes, SHA-256 as written")
        else:
            say(f"{name}: readable (no checksum recorded: saved by an older geolocus)")
    n = len(db)
    say(f"counts: {n} vectors of dimension {man.dim}, {len(db.meta)} metadata rows, as listed")
    ids = db.meta["id"].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise damaged(p, mname, f"repeats {len(dup)} ids: {_some(dup)}")
    empty = np.flatnonzero((ids.str.strip() == "").to_numpy())
    if empty.size:
        raise damaged(p, mname, f"has {empty.size} empty ids (rows {_some(empty)})")
    say(f"ids: {n} unique")
    try:
        validate_latlon(db.meta["lat"].to_numpy(float), db.meta["lon"].to_numpy(float), "rows")
    except InputError as e:
        raise damaged(p, mname, f"has invalid coordinates: {e}") from None
    say("coordinates: all finite and within [-90, 90] x [-180, 180]")
    _check_vectors(db, p, vname, chunk, say)
    _check_report(p, say)
    if (p / ".features").exists():
        say("note: .features holds an unfinished build or add: run the same command to resume")
    say(f"database {p} is sound")
    return db


def _check_vectors(db: Database, p: Path, vname: str, chunk: int, say: Callable) -> None:
    n, man = len(db), db.manifest
    exact = man.normalized and not _LOSSY.search(man.factory)
    zero: list[int] = []
    bad: list[int] = []
    off: list[int] = []
    for s in range(0, n, chunk):
        try:
            v = db.vectors(range(s, min(n, s + chunk)))
        except InputError as e:
            say(f"vectors: not checked: {e}")
            return
        finite = np.isfinite(v).all(axis=1)
        bad += (s + np.flatnonzero(~finite)).tolist()
        norms = np.linalg.norm(np.where(np.isfinite(v), v, 0.0), axis=1)
        zero += (s + np.flatnonzero(finite & (norms == 0))).tolist()
        if exact:
            off += (s + np.flatnonzero(finite & (norms > 0) & (np.abs(norms - 1) > 1e-3))).tolist()
    ids = db.ids
    if zero:
        raise damaged(p, vname, f"holds {len(zero)} all-zero vectors (ids {_some(ids[zero])})")
    if bad:
        raise damaged(p, vname, f"holds {len(bad)} non-finite vectors (ids {_some(ids[bad])})")
    if off:
        raise damaged(
            p, vname, f"holds {len(off)} vectors not of unit length (ids {_some(ids[off])})"
        )
    unit = ", all of unit length" if exact else ""
    say(f"vectors: {n} read back, none all zeros or non-finite{unit}")


def _check_report(p: Path, say: Callable) -> None:
    if not (p / REPORT).exists():
        return
    try:
        rows = read_report(p)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise damaged(p, REPORT, f"cannot be read ({e})") from None
    say(f"{REPORT}: readable ({len(rows)} photos left out)")
