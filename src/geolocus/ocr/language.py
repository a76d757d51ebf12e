"""Language identification of OCR text (optional: the ``langid`` package).

``langid`` (Lui & Baldwin 2012; its naive-Bayes model over byte n-grams for 97
languages is embedded in the package, nothing is downloaded) is case-sensitive
and reads all-capital sign text poorly, so text is lower-cased first. Unpacking
its model takes seconds, so the unpacked arrays are cached in the user cache
folder on first use. Short or
garbled OCR lines are often misidentified: :func:`identify` returns the
language only above a probability threshold and for texts of a few letters.
"""

from __future__ import annotations

import functools
import importlib.util
from array import array
from pathlib import Path

import numpy as np

from geolocus.files import cache_dir, cached_arrays

#: Texts with fewer letters than this get no language.
MIN_LETTERS = 8


def available() -> bool:
    """Whether a language identifier is installed."""
    return importlib.util.find_spec("langid") is not None


def _cache_file() -> Path:
    from importlib.metadata import version

    return cache_dir() / f"langid-{version('langid')}-v1.npz"


def _decode_model() -> dict[str, np.ndarray]:
    """langid's embedded model as arrays (unpacking it takes ~10 s: done once, cached)."""
    import base64
    import bz2
    import pickle

    from langid.langid import model

    nb_ptc, nb_pc, nb_classes, nextmove, output = pickle.loads(
        bz2.decompress(base64.b64decode(model))
    )
    keys = sorted(output)
    return {
        "nb_ptc": np.asarray(nb_ptc, dtype=np.float64),
        "nb_pc": np.asarray(nb_pc, dtype=np.float64),
        "nb_classes": np.asarray(nb_classes, dtype=str),
        "nextmove": np.asarray(nextmove, dtype=np.int64),
        "out_keys": np.asarray(keys, dtype=np.int64),
        "out_off": np.cumsum([0] + [len(output[k]) for k in keys]).astype(np.int64),
        "out_val": np.asarray([v for k in keys for v in output[k]], dtype=np.int64),
    }


@functools.cache
def _identifier():
    from langid.langid import LanguageIdentifier

    arrays = cached_arrays(_cache_file(), _decode_model)
    pc = arrays["nb_pc"]
    ptc = arrays["nb_ptc"].reshape(-1, len(pc))
    nextmove = array("q", arrays["nextmove"].tobytes())
    off, val = arrays["out_off"], arrays["out_val"].tolist()
    output = {
        int(k): tuple(val[off[i] : off[i + 1]]) for i, k in enumerate(arrays["out_keys"].tolist())
    }
    classes = arrays["nb_classes"].tolist()
    return LanguageIdentifier(ptc, pc, ptc.shape[0], classes, nextmove, output, norm_probs=True)


def identify(text: str, min_prob: float = 0.9) -> tuple[str, float] | None:
    """``(ISO 639-1 code, probability)`` of ``text``'s language, or ``None`` when the
    identifier is absent, the text too short, or the guess below ``min_prob``."""
    if not available() or sum(ch.isalpha() for ch in text) < MIN_LETTERS:
        return None
    lang, prob = _identifier().classify(text.lower())
    return (str(lang), float(prob)) if prob >= min_prob else None
