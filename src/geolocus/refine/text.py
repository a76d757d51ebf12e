"""Per-candidate features from what a query photo's text says (see :mod:`geolocus.ocr`).

For each candidate position of a query, given the query's
:class:`~geolocus.ocr.TextEvidence`:

- ``txt_script``: the candidate's country writes a non-Latin script of the text;
- ``txt_letters``: its languages use the text's distinctive letters (ß, ñ, ø, ł...);
- ``txt_lang`` / ``txt_lang_en``: the text's identified language (other than
  English / English) is a main language of its country;
- ``txt_country``: its country is named in the text;
- ``txt_place_<s>km``: how many names in the text mean a place or region within
  ``s`` km of it (a name shared by several places counts each by its share of
  their population).

A query without text has all zeros; the listwise model only compares a query's
candidates with each other, so zeros leave its ranking to the neighbour votes.
The candidate's country is the country of its nearest GeoNames place
(:func:`geolocus.places.country_code_of`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geolocus.geo import distance_km
from geolocus.places import country_code_of

#: Distances (km) at which named places are counted around a candidate.
PLACE_SCALES_KM: tuple[float, ...] = (25.0, 200.0, 750.0)


def text_feature_names(place_scales_km: Sequence[float] = PLACE_SCALES_KM) -> list[str]:
    """Column names of :func:`text_features`, in order."""
    return [
        "txt_script",
        "txt_letters",
        "txt_lang",
        "txt_lang_en",
        "txt_country",
        *(f"txt_place_{s:g}km" for s in place_scales_km),
    ]


def text_features(
    candidates: np.ndarray,
    evidence: Sequence | None,
    place_scales_km: Sequence[float] = PLACE_SCALES_KM,
) -> np.ndarray:
    """``(N, C, E)`` features of each query's candidates ``(N, C, 2)`` from its evidence
    (``None`` entries, or ``evidence=None``, mean no text: zeros)."""
    n, c = candidates.shape[:2]
    out = np.zeros((n, c, len(text_feature_names(place_scales_km))))
    if evidence is None:
        return out
    if len(evidence) != n:
        raise ValueError(f"evidence for {len(evidence)} queries, candidates for {n}")
    rows = [i for i, ev in enumerate(evidence) if ev is not None and ev.has_text]
    if not rows:
        return out

    codes = np.asarray(country_code_of(candidates[rows, :, 0], candidates[rows, :, 1]))
    codes = codes.reshape(len(rows), c)
    for j, i in enumerate(rows):
        ev = evidence[i]
        cc = codes[j]
        if ev.script_countries:
            out[i, :, 0] = np.isin(cc, list(ev.script_countries))
        if ev.letter_countries:
            out[i, :, 1] = np.isin(cc, list(ev.letter_countries))
        if ev.language_countries:
            out[i, :, 2 if ev.language != "en" else 3] = np.isin(cc, list(ev.language_countries))
        if ev.named_countries:
            out[i, :, 4] = np.isin(cc, list(ev.named_countries))
        if ev.places:
            plat = np.array([p.lat for p in ev.places])
            plon = np.array([p.lon for p in ev.places])
            w = np.array([p.weight for p in ev.places])
            d = distance_km(candidates[i, :, None, :], np.stack([plat, plon], -1)[None, :, :])
            for k, s in enumerate(place_scales_km):
                out[i, :, 5 + k] = ((d <= s) * w).sum(axis=1)
    return out
