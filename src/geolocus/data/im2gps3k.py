"""The IM2GPS3k benchmark (Vo et al., ICCV 2017) and its photographers.

IM2GPS3k's file names end with the Flickr owner id (``..._1125_78841376@N00.jpg``).
One photographer often shot several photos at one place, so any split used for
training or cross-validation keeps each photographer on one side
(:func:`geolocus.eval.folds.grouped_folds` with ``group=photographer``).
"""

from __future__ import annotations

import os
from pathlib import Path

from geolocus.errors import InputError

#: Environment variable that points at the folder holding ``im2gps3k/``.
DATA_ENV = "GEOLOCUS_DATA"


def find_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The shared data folder: ``explicit``, else ``$GEOLOCUS_DATA``, else the first
    ``shared/data`` found beside the working directory or one of its parents."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        cand = d / "shared" / "data"
        if (cand / "im2gps3k").is_dir():
            return cand
    return None


def im2gps3k_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The ``im2gps3k`` folder (with ``images/`` and ``labels.csv``), or a clear error."""
    if explicit is not None and (Path(explicit) / "labels.csv").exists():
        return Path(explicit)
    base = find_data_dir(explicit)
    if base is None or not (base / "im2gps3k" / "labels.csv").exists():
        raise InputError(
            "IM2GPS3k not found: pass --data DIR (the folder with labels.csv and images/) "
            f"or set {DATA_ENV} to the folder that holds im2gps3k/"
        )
    return base / "im2gps3k"


def photographer(img_id: str) -> str:
    """Owner id of an IM2GPS3k/Flickr file name (the last ``_``-separated field, no extension);
    the whole stem when the name has no such field."""
    stem = Path(str(img_id)).stem
    return stem.rsplit("_", 1)[-1] if "_" in stem else stem


def flickr_id(img_id: str) -> int | None:
    """The Flickr photo id starting an IM2GPS3k file name (``1000269685_e60e…``), or None.

    Flickr numbers photos as they are uploaded, so within one photographer's photos the
    ids follow the order of upload: a stand-in for the capture order that the stripped
    EXIF no longer gives (photos uploaded one after the other were mostly taken on the
    same trip)."""
    head = Path(str(img_id)).name.split("_", 1)[0]
    return int(head) if head.isdigit() else None
