"""Evidence for a table of queries from a folder of their photos (what the CLI uses)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from geolocus.errors import InputError
from geolocus.ocr.backends import create_backend
from geolocus.ocr.cache import OCRCache
from geolocus.ocr.evidence import TextEvidence, text_evidence
from geolocus.ocr.places import PlaceMatcher

if TYPE_CHECKING:
    from geolocus.ocr.backends import TextBox

#: Where the CLI keeps OCR results unless told otherwise (git-ignored in the repository).
DEFAULT_CACHE = Path("cache/ocr")


def query_photos(ids: Sequence[str], images: str | os.PathLike[str]) -> list[Path]:
    """The photo of each query id: ``images/IMG_ID`` (an id is a file name or a path
    relative to ``images``). A clear error names the first one missing."""
    root = Path(images)
    if not root.is_dir():
        raise InputError(f"--images: not a folder: {root}")
    paths = [root / str(i) for i in ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(paths)} query photos are not in {root}, "
            f"first {missing[0].name!r} (photos must be named by IMG_ID)"
        )
    return paths


def photo_evidence(
    ids: Sequence[str],
    images: str | os.PathLike[str],
    cache: str | os.PathLike[str] = DEFAULT_CACHE,
    backend: str = "rapidocr",
    progress: bool = True,
    read_only: bool = False,
) -> list[TextEvidence | None]:
    """The text evidence of each query's photo, reading photos not yet in ``cache``.

    ``read_only``: never run OCR; photos not in the cache get ``None`` (unknown).
    """
    paths = query_photos(ids, images)
    if read_only:
        tag = create_backend(backend).tag
        ocr = OCRCache(cache, None)
        boxes: Sequence[list[TextBox] | None] = [ocr.lookup(p, tag) for p in paths]
    else:
        boxes = OCRCache(cache, create_backend(backend)).many(paths, progress=progress)

    matcher = PlaceMatcher.load()
    return [None if b is None else text_evidence(b, matcher) for b in boxes]
