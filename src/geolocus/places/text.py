"""Place labels and the TransGeoCLIP text view of a location.

TransGeoCLIP describes each database location in words, "A photo taken in
{city}, {region}, {country}.", and embeds that sentence with CLIP's text encoder.
Missing parts (a place without a region) are dropped with their comma, and a part
that repeats the one before it ("Singapore, Singapore", "Dubai, Dubai, United
Arab Emirates") is written once, so every sentence reads naturally.
"""

from __future__ import annotations

#: The TransGeoCLIP sentence; ``{place}`` is the "city, region, country" label.
TEMPLATE = "A photo taken in {place}."
#: The sentence for a location with no known place at all.
UNKNOWN = "A photo taken in an unknown place."


def join_parts(*parts: str | None) -> str:
    """ "City, Region, Country" from the parts that exist, without immediate repeats."""
    out: list[str] = []
    for p in parts:
        p = (p or "").strip()
        if p and (not out or p.casefold() != out[-1].casefold()):
            out.append(p)
    return ", ".join(out)


def sentence(label: str, template: str = TEMPLATE, unknown: str = UNKNOWN) -> str:
    """Fill ``template`` with ``label``; ``unknown`` when the label is empty."""
    return template.format(place=label) if label else unknown
