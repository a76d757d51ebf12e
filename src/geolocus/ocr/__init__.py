"""OCR: the text in a photo as evidence of where it was taken.

Signs, shop names and placards give away a script (Hangul, Greek, Cyrillic...),
a language and sometimes a place name — what multimodal models read in a photo
and a table of retrieved neighbours cannot know. Quick use::

    from geolocus.ocr import read_text, text_evidence, script_of
    boxes = read_text("photo.jpg")            # [TextBox(text, score, box), ...]
    ev = text_evidence(boxes)                 # scripts, language, named places -> countries
    script_of("Москва")                       # 'Cyrillic'

``OCRCache`` reads each photo once and keeps the result by file hash; the
``best`` refiner turns evidence into candidate features
(:mod:`geolocus.refine.text`). See docs/ocr.md.
"""

from __future__ import annotations

import os

from PIL import Image

from geolocus.ocr.backends import (
    OCR_BACKENDS,
    OCRBackend,
    TextBox,
    available_backends,
    create_backend,
    list_backends,
    register_backend,
)
from geolocus.ocr.cache import OCRCache, file_hash
from geolocus.ocr.evidence import NO_TEXT, TextEvidence, text_evidence
from geolocus.ocr.places import PlaceMatch, PlaceMatcher
from geolocus.ocr.scripts import script_of, scripts_in


def read_text(
    image: str | os.PathLike[str] | Image.Image, backend: OCRBackend | str | None = None
) -> list[TextBox]:
    """The text lines in a photo (a path or a PIL image), best first.

    ``backend``: an :class:`OCRBackend`, a backend name, or ``None`` for the default
    (``rapidocr``). Not cached: use :class:`OCRCache` for collections of photos.
    """
    if not isinstance(backend, OCRBackend):
        backend = _default_backend(backend or "rapidocr")
    if not isinstance(image, Image.Image):
        from geolocus.data.images import load_image

        image = load_image(image)
    return backend.read(image)


_BACKENDS: dict[str, OCRBackend] = {}


def _default_backend(name: str) -> OCRBackend:
    if name not in _BACKENDS:
        _BACKENDS[name] = create_backend(name)
    return _BACKENDS[name]


__all__ = [
    "NO_TEXT",
    "OCR_BACKENDS",
    "OCRBackend",
    "OCRCache",
    "PlaceMatch",
    "PlaceMatcher",
    "TextBox",
    "TextEvidence",
    "available_backends",
    "create_backend",
    "file_hash",
    "list_backends",
    "read_text",
    "register_backend",
    "script_of",
    "scripts_in",
    "text_evidence",
]
