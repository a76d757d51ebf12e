"""OCR backends: a photo in, the lines of text found in it out.

Two offline engines behind one small interface (:class:`OCRBackend`):

- ``rapidocr`` (default): PaddleOCR's PP-OCRv6 *small* detector and multilingual
  recogniser (Latin-script languages, Chinese, Japanese) run by ONNX Runtime, from
  the ``rapidocr`` wheel, which ships the three ONNX models. They are loaded from the
  installed package by explicit path, so nothing is ever downloaded.
- ``tesseract``: the ``tesseract`` command (Debian ``tesseract-ocr`` plus
  ``tesseract-ocr-<lang>`` packages) with every installed language; optional.

``create_backend(name)`` builds one; ``available_backends()`` lists the installed ones.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from geolocus.errors import InputError, ModelUnavailableError
from geolocus.registry import Registry


@dataclass(frozen=True)
class TextBox:
    """One line (or word) of text found in a photo.

    ``box`` is its outline as corner points ``((x, y), ...)`` in pixels of the image
    given to the backend; ``score`` the engine's confidence in ``text`` (0 to 1).
    """

    text: str
    score: float
    box: tuple[tuple[float, float], ...] = ()

    def to_json(self) -> dict:
        return {"text": self.text, "score": round(float(self.score), 5), "box": self.box}

    @classmethod
    def from_json(cls, d: dict) -> TextBox:
        box = tuple((float(x), float(y)) for x, y in d.get("box", ()))
        return cls(text=str(d["text"]), score=float(d["score"]), box=box)


class OCRBackend:
    """Base class: ``read(image)`` returns the :class:`TextBox` es found, best first."""

    #: Registry name (``create_backend(name)``).
    name: ClassVar[str] = ""

    @property
    def tag(self) -> str:
        """Names the engine, its models and settings: cached results are keyed by it."""
        raise NotImplementedError

    def read(self, image: Image.Image) -> list[TextBox]:
        raise NotImplementedError


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise InputError(f"expected an 8-bit RGB image, got array {arr.shape} {arr.dtype}")
    return arr


class RapidOCRBackend(OCRBackend):
    """PP-OCRv6 small (detection + multilingual recognition) via ``rapidocr`` and ONNX Runtime.

    ``min_score`` drops lines the recogniser is unsure of; ``threads`` bounds ONNX
    Runtime's intra-op threads (the machine is shared).
    """

    name = "rapidocr"
    _MODELS: ClassVar[dict[str, str]] = {
        "Det": "PP-OCRv6_det_small.onnx",
        "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
        "Rec": "PP-OCRv6_rec_small.onnx",
    }

    def __init__(self, min_score: float = 0.5, threads: int = 2) -> None:
        spec = importlib.util.find_spec("rapidocr")
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailableError(
                "OCR backend 'rapidocr' is not installed: pip install 'geolocus[ocr]'"
            )
        models = Path(next(iter(spec.submodule_search_locations)), "models")
        paths = {k: models / f for k, f in self._MODELS.items()}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise ModelUnavailableError(
                f"rapidocr is installed without its models ({missing[0]}); "
                "install the rapidocr version pinned by geolocus[ocr]"
            )
        from rapidocr import RapidOCR

        params: dict = {
            "Global.log_level": "error",
            "Global.text_score": float(min_score),
            "EngineConfig.onnxruntime.intra_op_num_threads": int(threads),
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        params.update({f"{k}.model_path": str(p) for k, p in paths.items()})
        self._engine = RapidOCR(params=params)
        self.min_score = float(min_score)
        from importlib.metadata import version

        self._tag = f"rapidocr-{version('rapidocr')}-ppocrv6s-s{self.min_score:g}"

    @property
    def tag(self) -> str:
        return self._tag

    def read(self, image: Image.Image | np.ndarray) -> list[TextBox]:
        bgr = np.ascontiguousarray(_rgb_array(image)[..., ::-1])  # rapidocr takes arrays as BGR
        res: Any = self._engine(bgr)  # rapidocr's output (its type is a union of stages)
        if res.txts is None or res.boxes is None:
            return []
        out = [
            TextBox(
                text=str(t),
                score=float(s),
                box=tuple((round(float(x), 1), round(float(y), 1)) for x, y in np.asarray(b)),
            )
            for t, s, b in zip(res.txts, res.scores, res.boxes, strict=True)
            if str(t).strip()
        ]
        return sorted(out, key=lambda b: -b.score)


@functools.lru_cache(maxsize=1)
def tesseract_languages() -> tuple[str, ...]:
    """Languages of the installed ``tesseract`` (empty when it is not installed)."""
    exe = shutil.which("tesseract")
    if exe is None:
        return ()
    try:
        out = subprocess.run(
            [exe, "--list-langs"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(sorted(ln.strip() for ln in out.splitlines()[1:] if ln.strip() not in ("", "osd")))


class TesseractBackend(OCRBackend):
    """The ``tesseract`` command with its installed languages (Debian ``tesseract-ocr-*``).

    Words are grouped into lines as tesseract lays them out; a line's score is its
    words' mean confidence.
    """

    name = "tesseract"

    def __init__(self, languages: tuple[str, ...] | None = None, min_score: float = 0.5) -> None:
        have = tesseract_languages()
        if not have:
            raise ModelUnavailableError(
                "OCR backend 'tesseract' needs the tesseract command and a language: "
                "apt-get install tesseract-ocr"
            )
        langs = tuple(languages) if languages else have
        unknown = sorted(set(langs) - set(have))
        if unknown:
            raise ModelUnavailableError(
                f"tesseract has no language {unknown[0]!r}: apt-get install tesseract-ocr-<lang>"
            )
        self.languages = langs
        self.min_score = float(min_score)

    @property
    def tag(self) -> str:
        return f"tesseract-{'+'.join(self.languages)}-s{self.min_score:g}"

    def read(self, image: Image.Image | np.ndarray) -> list[TextBox]:
        import io

        buf = io.BytesIO()
        Image.fromarray(_rgb_array(image)).save(buf, format="PNG")
        cmd = ["tesseract", "stdin", "stdout", "-l", "+".join(self.languages), "tsv"]
        try:
            proc = subprocess.run(cmd, input=buf.getvalue(), capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            raise ModelUnavailableError(f"tesseract failed: {e}") from None
        lines: dict[tuple, list] = {}
        for row in proc.stdout.decode("utf-8", "replace").splitlines()[1:]:
            f = row.split("\t")
            if len(f) < 12 or not f[11].strip() or float(f[10]) < 0:
                continue
            x, y, w, h = (float(v) for v in f[6:10])
            lines.setdefault(tuple(f[1:5]), []).append((f[11], float(f[10]) / 100.0, x, y, w, h))
        out = []
        for words in lines.values():
            score = float(np.mean([w[1] for w in words]))
            if score < self.min_score:
                continue
            x0 = min(w[2] for w in words)
            y0 = min(w[3] for w in words)
            x1 = max(w[2] + w[4] for w in words)
            y1 = max(w[3] + w[5] for w in words)
            box = ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
            out.append(TextBox(" ".join(w[0] for w in words), score, box))
        return sorted(out, key=lambda b: -b.score)


#: The OCR engines by name (:func:`available_backends`: those installed here).
OCR_BACKENDS: Registry[OCRBackend] = Registry("OCR backend")
OCR_BACKENDS.register(RapidOCRBackend.name, RapidOCRBackend)
OCR_BACKENDS.register(TesseractBackend.name, TesseractBackend)


def register_backend(cls: type[OCRBackend]) -> type[OCRBackend]:
    """Add a backend class under its ``name`` (usable as a decorator)."""
    OCR_BACKENDS.register(cls.name, cls)
    return cls


def list_backends() -> list[str]:
    """Names of every registered backend, installed or not."""
    return OCR_BACKENDS.names()


def available_backends() -> list[str]:
    """Names of the backends that are installed here (default first)."""
    out = []
    if importlib.util.find_spec("rapidocr") is not None:
        out.append("rapidocr")
    if tesseract_languages():
        out.append("tesseract")
    return out


def create_backend(name: str = "rapidocr", **kwargs) -> OCRBackend:
    """A backend by name (``rapidocr``, ``tesseract`` or a registered one); a clear error
    if it is missing."""
    return OCR_BACKENDS.create(name, **kwargs)
