"""Which writing system a text is in, from Unicode code-point ranges (no model).

The script of a sign narrows where a photo was taken more than almost anything
else in it: Hangul is Korea, Kana is Japan, Greek is Greece or Cyprus, Thai is
Thailand. Ranges follow the Unicode blocks of each script (Unicode 15, main and
extension blocks of the scripts listed); digits, punctuation and symbols belong
to no script. Han ideographs are shared by Chinese and Japanese: a text with
both Han and Kana is Japanese, so :func:`scripts_in` reports both and the
country table decides.
"""

from __future__ import annotations

import bisect
from collections import Counter

#: (first, last, script) code-point ranges, inclusive.
_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x005A, "Latin"),
    (0x0061, 0x007A, "Latin"),
    (0x00C0, 0x00D6, "Latin"),
    (0x00D8, 0x00F6, "Latin"),
    (0x00F8, 0x024F, "Latin"),
    (0x0250, 0x02AF, "Latin"),  # IPA extensions
    (0x0370, 0x03FF, "Greek"),
    (0x0400, 0x052F, "Cyrillic"),
    (0x0530, 0x058F, "Armenian"),
    (0x0590, 0x05FF, "Hebrew"),
    (0x0600, 0x06FF, "Arabic"),
    (0x0700, 0x074F, "Syriac"),
    (0x0750, 0x077F, "Arabic"),
    (0x0780, 0x07BF, "Thaana"),
    (0x08A0, 0x08FF, "Arabic"),
    (0x0900, 0x097F, "Devanagari"),
    (0x0980, 0x09FF, "Bengali"),
    (0x0A00, 0x0A7F, "Gurmukhi"),
    (0x0A80, 0x0AFF, "Gujarati"),
    (0x0B00, 0x0B7F, "Oriya"),
    (0x0B80, 0x0BFF, "Tamil"),
    (0x0C00, 0x0C7F, "Telugu"),
    (0x0C80, 0x0CFF, "Kannada"),
    (0x0D00, 0x0D7F, "Malayalam"),
    (0x0D80, 0x0DFF, "Sinhala"),
    (0x0E00, 0x0E7F, "Thai"),
    (0x0E80, 0x0EFF, "Lao"),
    (0x0F00, 0x0FFF, "Tibetan"),
    (0x1000, 0x109F, "Myanmar"),
    (0x10A0, 0x10FF, "Georgian"),
    (0x1100, 0x11FF, "Hangul"),
    (0x1200, 0x139F, "Ethiopic"),
    (0x1780, 0x17FF, "Khmer"),
    (0x1800, 0x18AF, "Mongolian"),
    (0x1C80, 0x1C8F, "Cyrillic"),
    (0x1E00, 0x1EFF, "Latin"),  # Latin extended additional (Vietnamese)
    (0x1F00, 0x1FFF, "Greek"),
    (0x2D00, 0x2D2F, "Georgian"),
    (0x2DE0, 0x2DFF, "Cyrillic"),
    (0x2E80, 0x2FDF, "Han"),  # CJK radicals
    (0x3005, 0x3007, "Han"),
    (0x3041, 0x309F, "Kana"),  # Hiragana
    (0x30A0, 0x30FF, "Kana"),  # Katakana
    (0x3130, 0x318F, "Hangul"),
    (0x31F0, 0x31FF, "Kana"),
    (0x3400, 0x4DBF, "Han"),
    (0x4E00, 0x9FFF, "Han"),
    (0xA640, 0xA69F, "Cyrillic"),
    (0xA960, 0xA97F, "Hangul"),
    (0xA720, 0xA7FF, "Latin"),
    (0xAC00, 0xD7AF, "Hangul"),
    (0xD7B0, 0xD7FF, "Hangul"),
    (0xF900, 0xFAFF, "Han"),
    (0xFB1D, 0xFB4F, "Hebrew"),
    (0xFB50, 0xFDFF, "Arabic"),
    (0xFE70, 0xFEFF, "Arabic"),
    (0xFF21, 0xFF3A, "Latin"),  # full-width Latin
    (0xFF41, 0xFF5A, "Latin"),
    (0xFF66, 0xFF9F, "Kana"),  # half-width Katakana
    (0x20000, 0x3134F, "Han"),
)
_STARTS = [r[0] for r in _RANGES]

#: Every script name :func:`char_script` can return.
SCRIPTS: tuple[str, ...] = tuple(sorted({r[2] for r in _RANGES}))


def char_script(ch: str) -> str | None:
    """The script of one character, or ``None`` (digits, punctuation, symbols, unknown)."""
    cp = ord(ch)
    i = bisect.bisect_right(_STARTS, cp) - 1
    if i >= 0 and _RANGES[i][0] <= cp <= _RANGES[i][1]:
        return _RANGES[i][2]
    return None


def scripts_in(text: str) -> Counter[str]:
    """How many letters of each script ``text`` has."""
    return Counter(s for s in map(char_script, text) if s is not None)


def script_of(text: str) -> str | None:
    """The dominant script of ``text`` (most letters; Kana wins over Han when both are
    present, since Japanese mixes them), or ``None`` when it has no letters."""
    counts = scripts_in(text)
    if not counts:
        return None
    if counts.get("Kana") and counts.get("Han"):
        return "Kana"
    return max(sorted(counts), key=lambda s: counts[s])
