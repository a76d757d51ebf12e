"""OCR once per photo: results cached on disk by the file's content hash.

Reading a photo takes about a second on two cores, so every result is kept as
a small JSON file ``ROOT/<backend tag>/<hh>/<sha256>.json``, written atomically:
an interrupted extraction resumes where it stopped, and a photo renamed or
copied elsewhere is not read again. A photo that cannot be decoded is cached as
an error (and reported once), so it is not retried either.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from geolocus.data.images import load_image
from geolocus.errors import ImageError
from geolocus.files import atomic_write, sha256_file
from geolocus.ocr.backends import OCRBackend, TextBox


def file_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (the cache key)."""
    return sha256_file(path)


class OCRCache:
    """OCR results of ``backend`` under ``root``; computed on first request.

    ``backend`` may be ``None`` for a read-only view (``get`` then returns ``None``
    for photos not read yet).
    """

    def __init__(self, root: str | os.PathLike[str], backend: OCRBackend | None) -> None:
        self.root = Path(root)
        self.backend = backend

    def _file(self, digest: str, tag: str) -> Path:
        return self.root / tag / digest[:2] / f"{digest}.json"

    def lookup(self, path: str | os.PathLike[str], tag: str | None = None) -> list[TextBox] | None:
        """Cached result for ``path`` (``[]`` for an unreadable photo), or ``None``."""
        tag = tag or (self.backend.tag if self.backend else None)
        if tag is None:
            raise ValueError("lookup without a backend needs its tag")
        f = self._file(file_hash(path), tag)
        if not f.is_file():
            return None
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
            return [TextBox.from_json(b) for b in d["boxes"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a damaged entry is recomputed

    def get(self, path: str | os.PathLike[str]) -> list[TextBox]:
        """The text in the photo at ``path``: cached, else read now and cached."""
        if self.backend is None:
            raise ValueError("this OCRCache has no backend to read new photos")
        digest = file_hash(path)
        f = self._file(digest, self.backend.tag)
        if f.is_file():
            try:
                d = json.loads(f.read_text(encoding="utf-8"))
                return [TextBox.from_json(b) for b in d["boxes"]]
            except (OSError, ValueError, KeyError, TypeError):
                pass
        from time import perf_counter

        t0 = perf_counter()
        try:
            boxes = self.backend.read(load_image(path))
            error = None
        except ImageError as e:
            boxes, error = [], str(e)
        rec = {
            "backend": self.backend.tag,
            "file": Path(path).name,
            "seconds": round(perf_counter() - t0, 3),
            "error": error,
            "boxes": [b.to_json() for b in boxes],
        }
        with atomic_write(f, encoding="utf-8") as fh:
            json.dump(rec, fh, ensure_ascii=False)
        return boxes

    def many(
        self, paths: Sequence[str | os.PathLike[str]], progress: bool = True
    ) -> list[list[TextBox]]:
        """:meth:`get` for each path, in order, with a progress bar on stderr."""
        from tqdm import tqdm

        it: Iterable = paths
        if progress:
            it = tqdm(
                paths,
                desc=f"OCR ({self.backend.tag if self.backend else 'cache'})",
                unit="photo",
                mininterval=5,
            )
        return [self.get(p) for p in it]
