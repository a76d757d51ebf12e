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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from geolocus.errors import InputError
from geolocus.geo import validate_latlon
from geolocus.index.build import OLD_STAGING, REPORT, read_report
from geolocus.index.database import Database, damaged, list_some
from geolocus.index.lock import busy_message, holder
from geolocus.index.shards import STAGING


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
        raise damaged(p, mname, f"repeats {len(dup)} ids: {list_some(dup)}")
    empty = np.flatnonzero((ids.str.strip() == "").to_numpy())
    if empty.size:
        raise damaged(p, mname, f"has {empty.size} empty ids (rows {list_some(empty)})")
    say(f"ids: {n} unique")
    try:
        validate_latlon(db.meta["lat"].to_numpy(float), db.meta["lon"].to_numpy(float), "rows")
    except InputError as e:
        raise damaged(p, mname, f"has invalid coordinates: {e}") from None
    say("coordinates: all finite and within [-90, 90] x [-180, 180]")
    say(db.check_vectors(chunk))
    _check_report(p, say)
    if (p / STAGING).exists():
        say(f"note: {STAGING} holds an unfinished build or add: run the same command to resume")
    if (p / OLD_STAGING).exists():
        say(f"note: {OLD_STAGING} is left by an older geolocus: the next build or add removes it")
    say(f"database {p} is sound")
    return db


def _check_report(p: Path, say: Callable) -> None:
    if not (p / REPORT).exists():
        return
    try:
        rows = read_report(p)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise damaged(p, REPORT, f"cannot be read ({e})") from None
    say(f"{REPORT}: readable ({len(rows)} photos left out)")
