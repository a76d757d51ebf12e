"""The CSV tables geolocus reads and writes.

Coordinates tables have columns ``IMG_ID,LAT,LON`` (names case-insensitive;
``latitude``/``longitude``/``lng`` are accepted too). Neighbour tables have
``IMG_ID`` then ``near_{i}_lat, near_{i}_lon`` and ``far_{i}_lat, far_{i}_lon``
(optionally ``near_{i}_score``), in rank order. Every problem with a file is
reported as an :class:`~geolocus.errors.InputError` naming the file.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from geolocus.data.neighbours import Neighbours
from geolocus.errors import InputError
from geolocus.files import atomic_write
from geolocus.geo import validate_latlon

_ALIASES = {
    "IMG_ID": ("img_id", "id", "image", "image_id", "photo", "file", "filename"),
    "LAT": ("lat", "latitude"),
    "LON": ("lon", "lng", "long", "longitude"),
}


def _read_csv(path: str | os.PathLike[str], what: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file not found: {p}")
    if p.is_dir():
        raise InputError(f"{what} path is a directory, not a CSV file: {p}")
    try:
        with warnings.catch_warnings():
            # a row longer than the header would silently lose data: make it an error
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(
                p, dtype=str, keep_default_na=False, skip_blank_lines=True, index_col=False
            )
    except pd.errors.ParserWarning:
        raise InputError(
            f"{what} file {p} is not a valid CSV: a row has more fields than the header"
        ) from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{what} file is empty: {p}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise InputError(f"{what} file {p} is not a valid CSV: {msg}") from None
    if len(df) == 0:  # every reader needs rows: refusing here beats an empty array later
        raise InputError(f"{what} file {p} has a header but no rows")
    return df


def _numeric(df: pd.DataFrame, col: str, path: Path, what: str) -> np.ndarray:
    vals = pd.to_numeric(df[col].str.strip(), errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(np.isnan(vals))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{what} file {path}: column {col} has {bad.size} non-numeric value(s), "
            f"first on line {i + 2}: {df[col].iloc[i]!r}"
        )
    return vals


def read_coords(
    path: str | os.PathLike[str], what: str = "coordinates", rank1: bool = False
) -> pd.DataFrame:
    """Read an ``IMG_ID,LAT,LON`` table; returns a DataFrame with exactly those columns.

    Extra columns are ignored. Duplicate ids, missing columns, non-numeric or
    out-of-range coordinates raise :class:`InputError`. ``rank1``: a table with a
    ``rank`` column (``geolocus predict --format csv``: one row per guess) is read as
    its rank-1 rows, so that each photo's best guess is what counts; rows without a
    rank (photos that could not be geolocated) are left out.
    """
    p = Path(path)
    df = _read_csv(p, what)
    lower = {c.strip().lower(): c for c in df.columns}
    if rank1 and "rank" in lower:
        df = df[df[lower["rank"]].str.strip() == "1"].reset_index(drop=True)
        if len(df) == 0:
            raise InputError(f"{what} file {p} has no row of rank 1")
    cols = {}
    for canon, aliases in _ALIASES.items():
        found = next((lower[a] for a in aliases if a in lower), None)
        if found is None:
            raise InputError(
                f"{what} file {p} has no {canon} column (columns: {', '.join(df.columns)})"
            )
        cols[canon] = found
    out = pd.DataFrame({"IMG_ID": df[cols["IMG_ID"]].str.strip()})
    if (out["IMG_ID"] == "").any():
        i = int(np.flatnonzero(out["IMG_ID"] == "")[0])
        raise InputError(f"{what} file {p}: empty IMG_ID on line {i + 2}")
    out["LAT"] = _numeric(df, cols["LAT"], p, what)
    out["LON"] = _numeric(df, cols["LON"], p, what)
    dup = out["IMG_ID"].duplicated()
    if dup.any():
        raise InputError(
            f"{what} file {p}: {int(dup.sum())} duplicate IMG_ID(s), first "
            f"{out['IMG_ID'][dup].iloc[0]!r}"
        )
    try:
        validate_latlon(out["LAT"].to_numpy(), out["LON"].to_numpy(), what=f"{what} in {p}")
    except InputError as e:
        raise InputError(str(e)) from None
    return out


def write_coords(
    path: str | os.PathLike[str],
    ids: list[str] | np.ndarray | pd.Series,
    latlon: np.ndarray,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Write an ``IMG_ID,LAT,LON`` table atomically (6 decimals ≈ 0.1 m)."""
    latlon = np.asarray(latlon, dtype=float).reshape(-1, 2)
    df = pd.DataFrame({"IMG_ID": list(ids), "LAT": latlon[:, 0], "LON": latlon[:, 1]})
    for k, v in (extra or {}).items():
        df[k] = v
    with atomic_write(path, newline="") as fh:
        df.to_csv(fh, index=False, float_format="%.6f")


_NEIGH_RE = re.compile(r"^(near|far)_(\d+)_(lat|lon|score)$", re.IGNORECASE)


def read_neighbours(path: str | os.PathLike[str]) -> Neighbours:
    """Read a neighbour table (the format of ``g3_neighbours.csv``) into
    :class:`~geolocus.data.Neighbours`."""
    p = Path(path)
    df = _read_csv(p, "neighbours")
    lower = {c.strip().lower(): c for c in df.columns}
    id_col = next((lower[a] for a in _ALIASES["IMG_ID"] if a in lower), None)
    if id_col is None:
        raise InputError(f"neighbours file {p} has no IMG_ID column")
    found: dict[str, dict[int, dict[str, str]]] = {"near": {}, "far": {}}
    for c in df.columns:
        m = _NEIGH_RE.match(c.strip())
        if m:
            kind, rank, field = m.group(1).lower(), int(m.group(2)), m.group(3).lower()
            found[kind].setdefault(rank, {})[field] = c
    if not found["near"]:
        raise InputError(f"neighbours file {p} has no near_<i>_lat/near_<i>_lon columns")

    def block(kind: str) -> tuple[np.ndarray, np.ndarray | None]:
        ranks = sorted(found[kind])
        if not ranks:
            return np.empty((len(df), 0, 2)), None
        if ranks != list(range(len(ranks))):
            raise InputError(f"neighbours file {p}: {kind} ranks are not 0..{len(ranks) - 1}")
        coords = np.empty((len(df), len(ranks), 2))
        scores = np.empty((len(df), len(ranks))) if "score" in found[kind][0] else None
        for r in ranks:
            f = found[kind][r]
            if "lat" not in f or "lon" not in f:
                raise InputError(f"neighbours file {p}: {kind}_{r} lacks a lat or lon column")
            coords[:, r, 0] = _numeric(df, f["lat"], p, "neighbours")
            coords[:, r, 1] = _numeric(df, f["lon"], p, "neighbours")
            if scores is not None:
                scores[:, r] = _numeric(df, f["score"], p, "neighbours")
        validate_latlon(coords[..., 0], coords[..., 1], what=f"{kind} neighbours in {p}")
        return coords, scores

    near, near_scores = block("near")
    far, far_scores = block("far")
    ids = df[id_col].str.strip().to_numpy(dtype=object)
    if pd.Series(ids).duplicated().any():
        raise InputError(f"neighbours file {p} has duplicate IMG_IDs")
    return Neighbours(ids=ids, near=near, far=far, near_scores=near_scores, far_scores=far_scores)
