"""From the text in a photo to where it points: scripts, letters, language, names.

:func:`text_evidence` turns the :class:`~geolocus.ocr.backends.TextBox` es read
in one photo into a :class:`TextEvidence`: the countries compatible with its
scripts, with its distinctive letters and with its language, the countries it
names, and the places it names (with positions). Each is ``None``/empty when
the text says nothing about it, so a photo without text carries no evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from geolocus.ocr import countries as ctry
from geolocus.ocr import language as lang
from geolocus.ocr.backends import TextBox
from geolocus.ocr.places import PlaceMatch, PlaceMatcher
from geolocus.ocr.scripts import scripts_in

#: Letters of a script needed before the script counts (one stray glyph is OCR noise).
MIN_SCRIPT_LETTERS = 2


@dataclass(frozen=True)
class TextEvidence:
    """What the text of one photo says about where it was taken."""

    lines: tuple[str, ...] = ()
    scripts: dict[str, int] = field(default_factory=dict)
    #: Countries where a non-Latin script of the text is written (None: no such script).
    script_countries: frozenset[str] | None = None
    #: Countries whose languages use the text's distinctive letters (ß, ñ, ø, ł, ...).
    letter_countries: frozenset[str] | None = None
    #: Identified language (ISO 639-1) and the countries where it is a main language.
    language: str | None = None
    language_countries: frozenset[str] | None = None
    #: Countries named in the text.
    named_countries: frozenset[str] = frozenset()
    #: Places and regions named in the text.
    places: tuple[PlaceMatch, ...] = ()

    @property
    def has_text(self) -> bool:
        return bool(self.lines)

    def summary(self) -> str:
        """One line for reports: scripts, language, names."""
        parts = []
        if self.scripts:
            parts.append("/".join(sorted(self.scripts)))
        if self.language:
            parts.append(f"lang={self.language}")
        names = sorted({p.name for p in self.places} | set(self.named_countries))
        if names:
            parts.append("names=" + ",".join(names[:5]))
        return "; ".join(parts) if parts else "no text"


NO_TEXT = TextEvidence()


def text_evidence(
    boxes: Sequence[TextBox],
    matcher: PlaceMatcher | None = None,
    use_language: bool = True,
) -> TextEvidence:
    """The evidence in one photo's OCR result (``matcher``: a shared :class:`PlaceMatcher`)."""
    lines = tuple(b.text.strip() for b in boxes if any(ch.isalpha() for ch in b.text))
    if not lines:
        return NO_TEXT
    text = " ".join(lines)
    counts = {s: c for s, c in scripts_in(text).items() if c >= MIN_SCRIPT_LETTERS}
    sc: set[str] = set()
    for s in counts:
        sc |= ctry.script_countries(s) or set()
    letters = ctry.distinctive_letters(text)
    lc = (
        frozenset().union(*(ctry.letter_countries(ch) or () for ch in letters)) if letters else None
    )
    guess = lang.identify(text) if use_language else None
    matcher = matcher or PlaceMatcher.load()
    matches = matcher.match(list(lines))
    named = frozenset(m.country_code for m in matches if m.kind == "country")
    return TextEvidence(
        lines=lines,
        scripts=counts,
        script_countries=frozenset(sc) if sc else None,
        letter_countries=lc or None,
        language=guess[0] if guess else None,
        language_countries=ctry.language_countries(guess[0]) if guess else None,
        named_countries=named,
        places=tuple(m for m in matches if m.kind != "country"),
    )
