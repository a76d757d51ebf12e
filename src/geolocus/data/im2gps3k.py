"""The IM2GPS3k benchmark (Vo et al., ICCV 2017) and its photographer-grouped folds.

IM2GPS3k's file names end with the Flickr owner id (``..._1125_78841376@N00.jpg``).
One photographer often shot several photos at one place, so any split used for
training or cross-validation keeps each photographer on one side.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

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


def grouped_folds(ids: list[str] | np.ndarray, k: int = 3, salt: str = "geolocus") -> np.ndarray:
    """Fold number in ``[0, k)`` for each id, keeping each photographer in one fold.

    IM2GPS3k has only ~200 photographers for ~3000 photos, some with hundreds,
    so folds are balanced greedily: photographers from the largest down (ties
    broken by a salted hash, so the split is deterministic and does not depend
    on the order of ``ids``) each go to the fold with the fewest photos so far.
    """
    if k < 2:
        raise ValueError("k must be at least 2")
    owners = np.array([photographer(i) for i in ids], dtype=object)
    uniq, counts = np.unique(owners, return_counts=True)

    def tiebreak(owner: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{salt}:{owner}".encode()).digest()[:8], "big")

    order = sorted(range(len(uniq)), key=lambda j: (-counts[j], tiebreak(str(uniq[j]))))
    sizes = np.zeros(k, dtype=int)
    assign: dict[str, int] = {}
    for j in order:
        f = int(np.argmin(sizes))
        assign[str(uniq[j])] = f
        sizes[f] += counts[j]
    return np.array([assign[str(o)] for o in owners], dtype=int)
